"""The critic arm in the trainer (`algo=critic`, spo.train.critic) on the tiny random model:
the head learns on the policy's features, a run trains end to end with its metrics, the
head's state is checkpointed, and bad critic config is one line. (That the advantage uses V
read before the update is pinned in test_wiring; exact resume in test_trainer.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_async_trainer
import test_trainer
import torch

import spo.train.trainer as trainer_module
from spo.cli import main
from spo.train import checkpoint as ckpt
from spo.train.config import load_config
from spo.train.trainer import Trainer

task_files = test_trainer.task_files  # the fixture, shared
tiny_overrides = test_trainer.tiny_overrides
params_of = test_trainer.params_of

CRITIC_KEYS = ("critic/loss", "critic/fit_loss", "critic/value_mean", "time/critic")


def critic_cfg(tiny_model_dir, task_files, run_dir, **extra):
    return load_config(
        None, tiny_overrides(tiny_model_dir, task_files, run_dir, algo="critic", **extra)
    )


def test_head_learns_a_constant_and_a_per_prompt_target_on_policy_features(
    tiny_model_dir, task_files, tmp_path
):
    trainer = Trainer(
        critic_cfg(tiny_model_dir, task_files, tmp_path / "run", **{"critic.lr": 0.1})
    )
    trainer.close()
    critic = trainer.critic
    n = len(trainer.train_examples)
    ids = np.arange(n)
    # a constant: every prompt succeeds 30% of the time
    for _ in range(60):
        critic.read(ids)
        critic.fit(torch.full((n,), 0.3))
    np.testing.assert_allclose(critic.values(ids).numpy(), 0.3, atol=0.03)
    # a per-prompt target: the first half of the prompts always succeed, the rest never
    # (an arbitrary split: V must tell the prompts apart by their features)
    target = torch.from_numpy((ids < n // 2).astype(np.float32))
    hidden = critic.hidden(ids)  # the policy does not change here: features read once
    for _ in range(500):
        critic.head.fit(hidden, target)
    v = critic.values(ids).numpy()
    assert v[: n // 2].min() > 0.7 and v[n // 2 :].max() < 0.3, v
    critic.read(ids)
    stats = critic.fit(target)
    assert stats["critic/loss"] < 0.05 and stats["critic/fit_loss"] < 0.05, stats


def test_critic_trains_end_to_end_with_its_metrics_and_checkpoint(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    cfg = critic_cfg(tiny_model_dir, task_files, tmp_path / "run")
    trainer = Trainer(cfg)
    before = params_of(trainer.model)
    theta0 = trainer.critic.state_dict()["theta"].copy()
    # The step metrics (adv/variance, and the var/* keys computed from the record's
    # baseline) must see the V the advantage used.
    read, records_seen = [], []
    critic_read, metrics_of = trainer.critic.read, trainer_module.step_metrics
    monkeypatch.setattr(
        trainer.critic, "read", lambda ids: read.append(critic_read(ids)) or read[-1]
    )
    monkeypatch.setattr(
        trainer_module,
        "step_metrics",
        lambda rec, *a, **kw: records_seen.append(rec) or metrics_of(rec, *a, **kw),
    )
    try:
        assert trainer.sampler.mode == "uniform"  # the row's sampler
        last = trainer.run()
    finally:
        trainer.close()
    assert trainer.step == 3 and trainer.samples_seen == 24
    after = params_of(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    assert not np.array_equal(theta0, trainer.critic.state_dict()["theta"]), "head did not fit"
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        for key in CRITIC_KEYS:
            assert key in r, key
    assert np.isfinite(last["train/loss"]) and np.isfinite(last["critic/loss"])
    for value_B, rec, r in zip(read, records_seen, records, strict=True):
        assert torch.equal(rec.baseline_B, value_B)
        residual_B = (rec.reward_B - value_B).double()
        assert r["adv/variance"] == pytest.approx(float(residual_B.var(unbiased=False)), rel=1e-5)
        assert r["critic/loss"] == pytest.approx(float(residual_B.pow(2).mean()), rel=1e-5)
        assert r["critic/value_mean"] == pytest.approx(float(value_B.mean()), rel=1e-6)
    state = ckpt.read_state(ckpt.list_checkpoints(tmp_path / "run/checkpoints")[-1])
    for key, value in trainer.critic.state_dict().items():
        assert np.array_equal(np.asarray(state["critic"][key]), np.asarray(value)), key


def test_critic_trains_with_async_rollouts(tiny_model_dir, task_files, tmp_path):
    """With the in-flight pool the batch is whatever finished first; the critic reads V for
    exactly those samples and fits once per step."""
    cfg = critic_cfg(
        tiny_model_dir, task_files, tmp_path / "run", steps=3, **test_async_trainer.ASYNC
    )
    trainer = Trainer(cfg)
    try:
        last = trainer.run()
    finally:
        trainer.close()
    assert trainer.samples_seen == 3 * cfg.samples_per_step
    assert trainer.critic.head.batches == 3
    assert trainer.critic.head.state_dict()["adam_step"] == 3 * cfg.critic.updates_per_step
    assert np.isfinite(last["critic/loss"]) and np.isfinite(last["train/loss"])


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"critic.lr": 0}, "critic.lr must be > 0, got 0"),
        ({"critic.updates_per_step": 0}, "critic.updates_per_step must be > 0, got 0"),
        ({"critic.init_value": 1.5}, "critic.init_value must be in [0, 1], got 1.5"),
        ({"critic.size": 3}, "critic.size"),
    ],
)
def test_bad_critic_config_is_one_line(tiny_model_dir, task_files, tmp_path, capsys, extra, needle):
    args = tiny_overrides(tiny_model_dir, task_files, tmp_path / "run", algo="critic", **extra)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spo: error:") and needle in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_resuming_a_run_without_a_critic_as_critic_fails_clearly(
    tiny_model_dir, task_files, tmp_path, capsys
):
    args = tiny_overrides(tiny_model_dir, task_files, tmp_path / "run", steps=1)
    assert main(["train", *args]) == 0
    code = main(["train", *args, "resume=true", "steps=2", "algo=critic"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not match this run" in err and "critic" in err, err
    assert "\n" not in err
