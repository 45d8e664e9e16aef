"""Two CPU processes (torchrun, gloo): one global draw, one global normalisation, and
identical SPOState copies on both ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from spo.algo import SPOState

SCRIPT = Path(__file__).with_name("two_process_trl.py")
ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_share_one_global_batch(tiny_model_dir, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "rank"
    run = subprocess.run(
        [torchrun, "--nproc_per_node", "2", str(SCRIPT), str(tiny_model_dir), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert ranks[0]["alpha"] == ranks[1]["alpha"] and ranks[0]["rng"] == ranks[1]["rng"]
    ref = SPOState(16, seed=3)
    for g0, g1 in zip(ranks[0]["generations"], ranks[1]["generations"], strict=True):
        assert g0["keys"] == g1["keys"] and g0["rewards"] == g1["rewards"]
        keys = ref.select(8)  # 2 processes x 4: one global draw
        assert keys == g0["keys"]
        rewards = torch.tensor(g0["rewards"])
        expected = ref.advantages(rewards, keys).float()
        got = torch.tensor(g0["local_advantages"] + g1["local_advantages"])  # rank slices
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        ref.observe(keys, rewards, step=g0["step"] + 1, rho=0.9)
    assert ref.tracker.alpha.tolist() == ranks[0]["alpha"]
