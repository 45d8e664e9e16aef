"""The ρ estimators of the trainer (spo.train.forgetting): one object per tracker.rho, only
the active one checkpointed, and checkpoints of the old layout (both "drift" and "replay"
whatever the mode) still resume exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_trainer

from spo.algo import DriftTracker, SPOState
from spo.train import checkpoint as ckpt
from spo.train.config import load_config
from spo.train.forgetting import ConstantRho, DriftRho, ReplayRho, make_estimator
from spo.train.replay import ReplayStore
from spo.train.trainer import Trainer

task_files = test_trainer.task_files  # the fixture, shared
tiny_overrides = test_trainer.tiny_overrides
NOISY = ("time/", "throughput/", "wall_seconds")
ESTIMATOR = {"constant": ConstantRho, "drift": DriftRho, "replay": ReplayRho}


def _run(tiny_model_dir, task_files, run_dir, rho: str, steps: int, resume=False) -> Trainer:
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_model_dir,
            task_files,
            run_dir,
            steps=steps,
            resume=resume,
            checkpoint_every=2,
            **{"tracker.rho": rho},
        ),
    )
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer


def _metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(NOISY)} for r in rows]


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], dict):  # the replay state nests the drift clock's
            _assert_same(a[key], b[key])
        else:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


@pytest.mark.parametrize("rho", ["constant", "drift", "replay"])
def test_only_the_active_estimator_is_built_and_checkpointed(
    tiny_model_dir, task_files, tmp_path, rho
):
    trainer = _run(tiny_model_dir, task_files, tmp_path / "run", rho, steps=2)
    assert type(trainer.rho) is ESTIMATOR[rho]
    state = ckpt.read_state(ckpt.list_checkpoints(trainer.ckpt_root)[-1])
    assert {"drift", "replay"} & set(state) == ({rho} if rho != "constant" else set())
    if rho != "constant":
        _assert_same(state[rho], trainer.rho.state_dict())
    if rho == "replay":
        assert len(trainer.rho.store) > 0  # the responses of the trained prompts


@pytest.mark.parametrize("rho", ["drift", "replay"])
def test_checkpoint_of_the_old_layout_resumes_exactly(
    tiny_model_dir, task_files, tmp_path, monkeypatch, rho
):
    """The code before the estimator objects wrote the drift clock and the replay store
    whatever the mode (the unused one fresh: a replay run never advances the clock, a drift
    run never fills the store). Such a checkpoint resumes to the straight run's state."""
    straight = _run(tiny_model_dir, task_files, tmp_path / "straight", rho, steps=4)

    n = 24  # task.train_size of tiny_overrides
    old_layout = {"drift": DriftTracker(n).state_dict(), "replay": ReplayStore().state_dict()}
    state_of = Trainer._state

    def old_state(self):
        state = state_of(self)
        assert set(old_layout) & set(state) == {rho}  # what the current code writes
        return {**old_layout, **state}  # + the inactive one, as the old code wrote it

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_state", old_state)
        _run(tiny_model_dir, task_files, tmp_path / "old", rho, steps=2)
    written = ckpt.read_state(ckpt.list_checkpoints(tmp_path / "old" / "checkpoints")[-1])
    assert {"drift", "replay"} <= set(written)

    resumed = _run(tiny_model_dir, task_files, tmp_path / "old", rho, steps=4, resume=True)
    assert _metrics(tmp_path / "old") == _metrics(tmp_path / "straight")
    _assert_same(resumed.tracker.state_dict(), straight.tracker.state_dict())
    _assert_same(resumed.rho.state_dict(), straight.rho.state_dict())


def test_estimators_round_trip_their_state_and_reject_an_unknown_mode():
    spo = SPOState(4)
    drift = make_estimator(
        "drift", spo=spo, scorer=None, prompt_tokens=[], pad_id=0, rho_constant=0.9, drift_sample=2
    )
    spo.advance(0.25)
    spo.observe([1, 2], [1.0, 0.0], step=1)
    saved = drift.state_dict()
    other_spo = SPOState(4)
    DriftRho(other_spo, None, 2).load_state_dict(saved)
    _assert_same(other_spo.drift.state_dict(), saved)
    assert other_spo.drift.seen().tolist() == [False, True, True, False]

    replay = ReplayRho(SPOState(2), None, [[1], [2]], pad_id=0)
    replay.store.put(1, np.array([5, 6]), np.array([-0.5, -0.25]))
    copy = ReplayRho(SPOState(2), None, [[1], [2]], pad_id=0)
    copy.load_state_dict(replay.state_dict())
    _assert_same(copy.state_dict(), replay.state_dict())

    constant = ConstantRho(0.9)
    assert constant.key is None and constant.state_dict() == {}
    assert constant.step([0, 1], None, None, None) == ({"rho": 0.9}, {})
    with pytest.raises(ValueError, match=r"tracker\.rho must be constant, drift or replay"):
        make_estimator(
            "nope",
            spo=spo,
            scorer=None,
            prompt_tokens=[],
            pad_id=0,
            rho_constant=0.9,
            drift_sample=2,
        )


def test_replay_store_loads_the_old_key_name():
    """Checkpoints written before the rename store the prompt indices under "prompt"."""
    store = ReplayStore()
    store.put(3, np.array([5, 6, 7]), np.array([-0.5, -0.25, -1.0]))
    store.put(1, np.array([9]), np.array([-2.0]))
    new = store.state_dict()
    assert "prompt_idx" in new and "prompt" not in new
    old = {("prompt" if k == "prompt_idx" else k): v for k, v in new.items()}
    loaded = ReplayStore()
    loaded.load_state_dict(old)
    _assert_same(loaded.state_dict(), new)
    assert 3 in loaded and 1 in loaded and 2 not in loaded
