"""A short kill -9 soak (the full one is bench/kill9_soak.py, its result committed in
bench/results/kill9_soak.json): SIGKILL twice per rollout mode at chosen moments, resume,
and the final weights, trainer state, metrics and samples equal an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_short_kill9_soak(tmp_path):
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "bench/kill9_soak.py"), "--kills", "2", "--steps", "6"]
    cmd += ["--checkpoint-every", "2", "--eval-every", "3", "--seed", "3", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    result = json.loads(out.read_text())
    for mode, res in result["results"].items():
        assert res["n_killed"] >= 1, (mode, res["kills"])
        diff = {k: v for k, v in res["differences"].items() if k != "compared"}
        assert res["equal"], (mode, diff)
    assert result["all_equal"]
