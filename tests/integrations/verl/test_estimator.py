"""`single_stream_spo` through verl's own compute_advantage on a real DataProto equals
SPOState.advantages (spo-spec.md §4), broadcast over response tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verl", reason="needs pip install 'spo-rl[verl]' (make test-verl)")

from verl.protocol import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

from spo.algo import SPOState
from spo.integrations.verl import ESTIMATOR_NAME
from spo.integrations.verl.estimator import MissingBaselinesError

KEYS = ["q7", "q3", "q9", "q1", "q5", "q3"]  # q3 twice: n > 1 responses of one prompt


def _tracked_state(reward_range=(0.0, 1.0)) -> SPOState:
    state = SPOState(reward_range=reward_range)
    lo, hi = reward_range
    history = [(["q7", "q3", "q9"], [1.0, 0.0, 1.0]), (["q7", "q1", "q5"], [1.0, 1.0, 0.0])]
    for step, (keys, unit) in enumerate(history):
        state.observe(keys, [lo + (hi - lo) * u for u in unit], step=step, rho=0.9)
    return state


def _batch(reward_B, baseline_B, lengths, uids) -> DataProto:
    B, T = len(reward_B), 5
    mask = torch.zeros(B, T, dtype=torch.int64)
    scores = torch.zeros(B, T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        if n:
            scores[i, n - 1] = reward_B[i]  # outcome reward on the last response token
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": scores,
            "response_mask": mask,
            "reward_baselines": torch.as_tensor(baseline_B, dtype=torch.float32),
        },
        non_tensors={"uid": np.array(uids, dtype=object)},
    )
    return data


def _verl_advantage(data: DataProto, via_v1: bool = False) -> DataProto:
    config = AlgoConfig(adv_estimator=ESTIMATOR_NAME)
    if via_v1:
        keys = [f"{u}_0_{i}" for i, u in enumerate(data.non_tensor_batch["uid"])]
        return compute_advantage_for_multi_trajectories(
            data, batch_keys=keys, adv_estimator=ESTIMATOR_NAME, config=config
        )
    return compute_advantage(data, adv_estimator=ESTIMATOR_NAME, config=config)


@pytest.mark.parametrize("via_v1", [False, True], ids=["compute_advantage", "v1_multi_traj"])
def test_verl_compute_advantage_equals_spostate(via_v1):
    state = _tracked_state()
    rewards = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    lengths = [3, 5, 1, 4, 2, 5]
    data = _batch(rewards, state.baseline(KEYS), lengths, [f"u{i}" for i in range(6)])
    out = _verl_advantage(data, via_v1)
    want_B = state.advantages(rewards, KEYS).float()
    mask = out.batch["response_mask"].bool()
    adv = out.batch["advantages"]
    for i, n in enumerate(lengths):
        assert torch.allclose(adv[i, :n], want_B[i].expand(n), atol=1e-6), i  # every token
        assert torch.all(adv[i, n:] == 0)
    assert torch.equal(out.batch["returns"], adv)
    assert adv[mask].abs().sum() > 0  # not trivially zero


def test_padding_rows_change_nothing():
    """verl pads batches with response-less rows; they get 0 and stay out of mean/std."""
    state = _tracked_state()
    rewards = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    base = state.baseline(KEYS)
    plain = _verl_advantage(_batch(rewards, base, [2, 3, 4, 5, 1, 2], list("abcdef")))
    padded = _verl_advantage(
        _batch([*rewards, 0.0, 0.0], np.r_[base, 0, 0], [2, 3, 4, 5, 1, 2, 0, 0], list("abcdefpp"))
    )
    assert torch.allclose(padded.batch["advantages"][:6], plain.batch["advantages"], atol=1e-7)
    assert torch.all(padded.batch["advantages"][6:] == 0)


def test_other_reward_range_matches_in_unit_scale():
    """Baselines in reward units (lo + (hi − lo)·v̂): same advantages up to the 1e-8 guard."""
    state = _tracked_state(reward_range=(-1.0, 1.0))
    rewards = [1.0, -1.0, 1.0, -1.0, -1.0, 1.0]
    lo, hi = state.reward_range
    base = lo + (hi - lo) * state.baseline(KEYS)
    out = _verl_advantage(_batch(rewards, base, [5] * 6, list("abcdef")))
    assert torch.allclose(
        out.batch["advantages"][:, 0], state.advantages(rewards, KEYS).float(), atol=1e-6
    )


def test_without_baselines_one_clear_error():
    data = _batch([1.0, 0.0], [0.5, 0.5], [2, 2], ["a", "b"])
    data.batch.pop("reward_baselines")
    with pytest.raises(MissingBaselinesError, match=r"trainer\.v1\.trainer_mode=single_stream_spo"):
        _verl_advantage(data)


def test_batch_of_one_real_row_gives_zero_not_nan():
    out = _verl_advantage(_batch([1.0, 0.0], [0.3, 0.0], [3, 0], ["a", "pad"]))
    assert torch.all(out.batch["advantages"] == 0)
