"""cluster=ray: two Ray rollout actors reproduce the single-process run bit for bit, and
its held-out evaluation (per-call sampling settings sent to the actors).

The local run generates the same two shards in turn (`cluster.rollout_workers=2`), so the
only difference is where the shards run. Ray starts a local 2-CPU cluster here.
"""

from __future__ import annotations

import pytest
import torch
from test_trainer import task_files, tiny_overrides  # noqa: F401

from spo.train.config import load_config
from spo.train.trainer import Trainer

ray = pytest.importorskip("ray")


def _run(cfg):
    trainer = Trainer(cfg)
    completions, prompts, rewards = [], [], []
    generate = trainer.engine.generate

    def recorded(prompt_tokens, *, seed, sampling=None):
        out = generate(prompt_tokens, seed=seed, sampling=sampling)
        completions.append(out.completion_ids)
        return out

    trainer.engine.generate = recorded
    try:
        for _ in range(cfg.steps):
            metrics = trainer.train_step()
            prompts.append(trainer.last_prompt_idx.tolist())
            rewards.append(metrics["reward/mean"])
        evaluated = trainer.evaluate(k=2)  # greedy + 2 samples per prompt, on the actors
    finally:
        trainer.close()
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return completions, prompts, rewards, trainer.tracker.state_dict(), weights, evaluated


@pytest.mark.slow
def test_ray_rollout_actors_equal_single_process(tiny_model_dir, task_files, tmp_path):  # noqa: F811
    from spo.rollout.ray_engine import worker_runtime_env

    common = {"steps": 2, "cluster.rollout_workers": 2, "threads": 1, "samples_per_step": 8}
    local = load_config(None, tiny_overrides(tiny_model_dir, task_files, tmp_path / "a", **common))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=worker_runtime_env())
    try:
        distributed = load_config(
            None,
            [*tiny_overrides(tiny_model_dir, task_files, tmp_path / "b", **common), "cluster=ray"],
        )
        assert distributed.cluster.mode == "ray"
        got = _run(distributed)
    finally:
        ray.shutdown()
    want = _run(local)
    assert got[0] == want[0]  # completions of every step
    assert got[1] == want[1]  # prompt ids of every step
    assert got[2] == want[2]  # rewards
    for key, value in want[3].items():
        assert torch.equal(torch.as_tensor(got[3][key]), torch.as_tensor(value)), key
    assert got[4].keys() == want[4].keys()
    for key in want[4]:
        assert torch.equal(got[4][key], want[4][key]), key
    assert any(len(c) for step in want[0] for c in step)
    assert got[5] == want[5]  # held-out metrics; their completions are in got[0] too
    assert len(want[0]) == 2 + 2  # two training steps, then eval's sampled and greedy calls
