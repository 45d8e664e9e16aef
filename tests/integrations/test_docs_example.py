"""docs/integrations.md's TRL example runs (tiny model, two steps), so it cannot rot."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest.importorskip("trl")

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def trl_example() -> str:
    section = DOC.read_text().split("\n## TRL\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


def replace_once(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, f"the docs example no longer contains {old!r}"
    return code.replace(old, new)


def test_trl_example_runs(tiny_model_dir, tmp_path, monkeypatch):
    code = trl_example()
    for old, new in (
        ('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(str(tiny_model_dir))),
        ('output_dir="smollm2-spo"', f"output_dir={str(tmp_path / 'out')!r}"),
        ("max_steps=50", "max_steps=2, use_cpu=True, report_to='none', save_strategy='no'"),
        ("max_completion_length=32", "max_completion_length=8"),
    ):
        code = replace_once(code, old, new)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)
    trainer = scope["trainer"]
    assert trainer.state.global_step == 2
    assert trainer.spo_state.tracker.num_updates == 2
    assert len(trainer.spo_last_keys) == 16
    assert not os.path.exists(tmp_path / "smollm2-spo")
