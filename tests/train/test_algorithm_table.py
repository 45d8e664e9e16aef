"""`ALGORITHMS` is the single source of truth (issue 14): an algorithm added as one table
row plus one advantage in the registry is accepted by the config, trains with the tiny
model through the table's settings, and is what the study code asks about."""

from __future__ import annotations

import numpy as np
import pytest
import test_trainer
import torch

from spo.algo import ADVANTAGES, grpo_advantage
from spo.algo.algorithms import ALGORITHMS, Algorithm
from spo.study.summary import grouped, variance_key
from spo.train.config import ConfigError, help_text, load_config
from spo.train.trainer import Trainer

task_files = test_trainer.task_files  # the fixture, shared
tiny_overrides = test_trainer.tiny_overrides


@pytest.fixture()
def half_grpo(monkeypatch):
    """A throw-away algorithm: GRPO's advantage halved, groups of responses, uniform draws;
    registered for this test only. Returns the list of calls its advantage received."""
    calls: list[dict] = []

    def half(reward_B, *, baseline_B=None, group_id_B=None):
        adv_B = 0.5 * grpo_advantage(reward_B, group_id_B)
        calls.append({"reward_B": reward_B.clone(), "group_id_B": group_id_B, "adv_B": adv_B})
        return adv_B

    monkeypatch.setitem(ADVANTAGES, "half_grpo", half)
    monkeypatch.setitem(
        ALGORITHMS, "half_grpo", Algorithm(advantage="half_grpo", grouped=True, sampler="uniform")
    )
    return calls


def test_a_new_row_and_registry_entry_is_a_new_algorithm(
    half_grpo, tiny_model_dir, task_files, tmp_path, monkeypatch
):
    cfg = load_config(
        None, tiny_overrides(tiny_model_dir, task_files, tmp_path / "run", algo="half_grpo")
    )
    trainer = Trainer(cfg)
    updates: list[torch.Tensor] = []
    update = trainer.updater.update

    def spy(batch, adv_B, *args, **kw):
        updates.append(adv_B.clone())
        return update(batch, adv_B, *args, **kw)

    monkeypatch.setattr(trainer.updater, "update", spy)
    try:
        assert trainer.sampler.mode == "uniform"  # the row's sampler
        metrics = [trainer.train_step() for _ in range(2)]
    finally:
        trainer.close()
    assert len(half_grpo) == 2
    for call, adv_B in zip(half_grpo, updates, strict=True):
        # grouped: samples_per_step / group_size prompts, each group_size times in a row
        group = cfg.group_size
        want = torch.from_numpy(np.repeat(np.arange(cfg.samples_per_step // group), group))
        assert torch.equal(call["group_id_B"], want)
        assert torch.equal(adv_B, call["adv_B"])  # the update trains on the new advantage
        torch.testing.assert_close(
            adv_B, 0.5 * grpo_advantage(call["reward_B"], call["group_id_B"]), rtol=0, atol=0
        )
    assert all("adv/degenerate_fraction" in m for m in metrics)  # grouped metrics
    assert all(np.isfinite(m["train/loss"]) for m in metrics)
    # the study code asks the table, not the name
    assert grouped({"algo": "half_grpo"})
    assert variance_key({"algo": "half_grpo"}) == "adv/variance_nondegenerate"
    assert "{spo|grpo|rloo|dr_grpo|critic|half_grpo}" in help_text()


def test_config_validates_algo_against_the_table(half_grpo, tiny_model_dir, task_files, tmp_path):
    args = tiny_overrides(tiny_model_dir, task_files, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"algo='nope' is not valid; choose one of .*half_grpo"):
        load_config(None, [*args, "algo=nope"])
    # the table's `grouped` drives the group-size checks of a new algorithm too
    with pytest.raises(ConfigError, match="not divisible by group_size=3"):
        load_config(None, [*args, "algo=half_grpo", "group_size=3"])
    with pytest.raises(ConfigError, match="group_size must be >= 2 for algo=half_grpo"):
        load_config(None, [*args, "algo=half_grpo", "group_size=1", "samples_per_step=8"])
    load_config(None, [*args, "algo=spo", "group_size=3"])  # single stream: no group checks


def test_baseline_none_follows_the_table(tiny_model_dir, task_files, tmp_path, monkeypatch):
    """baseline=none swaps in the row's `without_baseline` advantage; a row without one
    (group algorithms) ignores the option."""
    used: list[str] = []
    for name in ("none", "grpo"):
        fn = ADVANTAGES[name]
        monkeypatch.setitem(
            ADVANTAGES, name, lambda *a, _fn=fn, _n=name, **kw: used.append(_n) or _fn(*a, **kw)
        )
    for algo in ("spo", "grpo"):
        cfg = load_config(
            None,
            tiny_overrides(tiny_model_dir, task_files, tmp_path / algo, algo=algo, baseline="none"),
        )
        trainer = Trainer(cfg)
        try:
            trainer.train_step()
        finally:
            trainer.close()
    assert used == ["none", "grpo"]


def test_algorithm_rows_are_checked():
    with pytest.raises(ValueError, match="sampler must be priority or uniform"):
        Algorithm(advantage="spo", grouped=False, sampler="greedy")
    with pytest.raises(ValueError, match="without_baseline needs tracker_baseline"):
        Algorithm(advantage="grpo", grouped=True, sampler="uniform", without_baseline="none")
    with pytest.raises(ValueError, match="unknown algorithm 'nope'; valid: critic, dr_grpo, grpo"):
        ALGORITHMS["nope"]
