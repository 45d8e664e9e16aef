"""Forgetting factor: ρ = clip(2^(−D/D_half)), replay divergence, cumulative drift."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spo.algo import DriftTracker, policy_drift, replay_divergence, rho_from_divergence


def test_rho_from_divergence_by_hand():
    # d = 0 → 2^0 = 1 → clipped to ρ_max = 0.96 (first visit)
    assert rho_from_divergence(0.0) == 0.96
    # d = 0.006 → 2^(−0.006/0.06) = 2^(−0.1) = 0.933033… (inside the clip range)
    assert rho_from_divergence(0.006) == pytest.approx(0.933033, abs=1e-6)
    # D_half scales D: d = 0.012 with d_half = 0.12 is the same point of the curve
    assert rho_from_divergence(0.012, d_half=0.12) == pytest.approx(0.933033, abs=1e-6)
    # d = 0.06 → 2^(−1) = 0.5 → clipped to ρ_min = 0.875
    assert rho_from_divergence(0.06) == 0.875
    # d = 0.003 → 2^(−0.05) = 0.96594 > ρ_max → 0.96
    assert rho_from_divergence(0.003) == 0.96


def test_rho_from_divergence_vector_and_options():
    d = np.array([0.0, 0.006, 1.0, 0.03])
    rho = rho_from_divergence(d, d_half=0.03, rho_min=0.5, rho_max=0.99)
    # 2^0 → 0.99; 2^(−0.2) = 0.870551; 2^(−33.3) → 0.5; 2^(−1) = 0.5
    np.testing.assert_allclose(rho, [0.99, 2**-0.2, 0.5, 0.5])
    assert isinstance(rho_from_divergence(0.01), float)
    assert rho_from_divergence(torch.tensor([0.0])).shape == (1,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d": -0.1}, r"d must be in \[0, inf\]; got -0.1"),
        ({"d": np.nan}, "d must be in"),
        ({"d": 0.1, "d_half": 0.0}, "d_half"),
        ({"d": 0.1, "rho_min": 0.0}, "rho_min"),
        ({"d": 0.1, "rho_min": 0.9, "rho_max": 0.8}, "rho_max"),
    ],
)
def test_rho_from_divergence_invalid(kwargs, match):
    kwargs = dict(kwargs)  # the parametrize dict is shared across reruns; never mutate it
    d = kwargs.pop("d")
    with pytest.raises(ValueError, match=match):
        rho_from_divergence(d, **kwargs)


def test_replay_divergence_by_hand_with_garbage_padding():
    logp = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, -0.5, -0.5], [0.0, 0.0, 0.0]])
    stored = torch.tensor([[-1.5, -1.0, -float("inf")], [-0.5, -0.7, -0.1], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    d = replay_divergence(logp, stored, mask)
    # row 0: (|−1+1.5| + |−2+1|)/2 = (0.5 + 1)/2 = 0.75
    # row 1: (0 + 0.2 + 0.4)/3 = 0.2;   row 2: no tokens → 0
    torch.testing.assert_close(d, torch.tensor([0.75, 0.2, 0.0]))


def test_policy_drift_is_batch_token_mean():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.3, 0.0, 0.0]])
    old = torch.tensor([[-1.5, -1.0, 5.0], [-0.1, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # (0.5 + 1.0 + 0.2)/3 tokens = 0.566…
    assert float(policy_drift(logp, old, mask)) == pytest.approx(1.7 / 3)
    assert float(policy_drift(logp, old, torch.zeros_like(mask))) == 0.0


def test_logp_shape_mismatch_raises():
    with pytest.raises(ValueError, match="mask_BT must have the shape"):
        replay_divergence(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="torch tensors"):
        policy_drift(np.zeros((2, 3)), torch.zeros(2, 3), torch.ones(2, 3))


def test_drift_tracker_by_hand():
    dt = DriftTracker(3)
    np.testing.assert_array_equal(dt.divergence([0, 1, 2]), [0.0, 0.0, 0.0])  # never seen
    dt.advance(0.01)
    dt.mark([0])  # S_last(0) = 0.01
    dt.advance(0.02)
    dt.advance(0.03)  # S = 0.06
    dt.mark([1])  # S_last(1) = 0.06
    dt.advance(0.005)  # S = 0.065
    d = dt.divergence([0, 1, 2])
    # prompt 0: 0.065 − 0.01 = 0.055; prompt 1: 0.065 − 0.06 = 0.005; prompt 2: never → 0
    np.testing.assert_allclose(d, [0.055, 0.005, 0.0], atol=1e-8)
    rho = rho_from_divergence(d)
    # 2^(−0.055/0.06) = 0.5297 → 0.875; 2^(−0.005/0.06) = 0.9439; never seen → ρ_max
    np.testing.assert_allclose(rho, [0.875, 2 ** (-0.005 / 0.06), 0.96], atol=1e-6)
    dt.mark([0, 0, 2])  # duplicates fine
    np.testing.assert_array_equal(dt.divergence([0, 2]), [0.0, 0.0])
    np.testing.assert_array_equal(dt.seen(), [True, True, True])


def test_drift_precision_after_many_steps():
    dt = DriftTracker(1)
    for _ in range(20_000):
        dt.advance(0.025)  # S = 500
    dt.mark([0])
    dt.advance(0.03)
    # |error| <= ulp_f32(500) = 2^(8−23) ≈ 6.1e-5
    assert dt.divergence([0])[0] == pytest.approx(0.03, abs=6.2e-5)


def test_drift_grow_and_state_round_trip():
    dt = DriftTracker(2)
    dt.advance(0.1)
    dt.mark([1])
    dt.advance(math.pi / 100)
    dt.grow(4)
    np.testing.assert_array_equal(dt.seen(), [False, True, False, False])
    other = DriftTracker(4)
    other.load_state_dict(dt.state_dict())
    assert other.total == dt.total
    np.testing.assert_array_equal(other.divergence(np.arange(4)), dt.divergence(np.arange(4)))
    assert dt.nbytes / dt.num_prompts == 4
    with pytest.raises(ValueError, match=r"shape \(4,\) but this tracker has 3 prompts"):
        DriftTracker(3).load_state_dict(dt.state_dict())
    with pytest.raises(ValueError, match="lacks keys"):
        DriftTracker(4).load_state_dict({"total": 0.0})


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_drift_advance_invalid(bad):
    with pytest.raises(ValueError, match="step_drift"):
        DriftTracker(1).advance(bad)


def test_drift_ids_out_of_range():
    with pytest.raises(ValueError, match="ids out of range"):
        DriftTracker(2).mark([2])


def test_replay_divergence_single_token_row_and_stored_shape_message():
    logp = torch.tensor([[-1.0, 0.0], [-2.0, -3.0]])
    stored = torch.tensor([[-1.25, 0.0], [-2.5, -2.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    # row 0: one token, |−1 + 1.25| / 1 = 0.25; row 1: (0.5 + 1)/2 = 0.75
    torch.testing.assert_close(replay_divergence(logp, stored, mask), torch.tensor([0.25, 0.75]))
    with pytest.raises(ValueError) as info:
        replay_divergence(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    assert str(info.value) == "stored_logp_BT must have the shape of logp_BT (2, 3); got (2, 4)"


def test_drift_load_state_checks_and_owns_its_array():
    dt = DriftTracker(2)
    dt.load_state_dict({"total": 0.5, "visit_total": np.array([0.25, np.nan])})
    assert dt.visit_total.dtype == np.float32 and dt.total == 0.5  # float64 in, float32 kept
    visit = np.array([0.25, np.nan], dtype=np.float32)  # already float32: still copied
    dt.load_state_dict({"total": 0.5, "visit_total": visit})
    visit[0] = 0.0  # the caller's array is not the tracker's
    np.testing.assert_array_equal(dt.divergence([0, 1]), [0.25, 0.0])
    bad = {
        "total": (-1.0, "total must be in [0, inf]; got -1.0"),
        "visit_total": (
            np.zeros((2, 1), np.float32),
            "drift state 'visit_total' has shape (2, 1) but this tracker has 2 prompts; build "
            "DriftTracker(num_prompts) with the checkpoint's count, load, then grow()",
        ),
    }
    for key, (value, message) in bad.items():
        state = {**DriftTracker(2).state_dict(), key: value}
        with pytest.raises(ValueError) as info:
            dt.load_state_dict(state)
        assert str(info.value) == message
    with pytest.raises(ValueError, match=r"^state\['visit_total'\] must be array-like; got list$"):
        dt.load_state_dict({"total": 0.0, "visit_total": [[1.0], [1.0, 2.0]]})
    assert dt.total == 0.5  # nothing half-loaded


@pytest.mark.parametrize(
    ("num_prompts", "message"),
    [
        (-1, "num_prompts must be in [0, inf]; got -1"),
        (1.5, "num_prompts must be an integer; got 1.5"),
    ],
)
def test_drift_tracker_size_must_be_a_count(num_prompts, message):
    with pytest.raises(ValueError) as info:
        DriftTracker(num_prompts)
    assert str(info.value) == message
    assert DriftTracker(0).num_prompts == 0


def test_d_half_for_median_puts_the_median_revisit_mid_range():
    from spo.algo import d_half_for_median

    # median 0.02 (the zero, a first visit, is dropped): 0.02·ln 2/−ln(0.9175) = 0.16101
    d_half = d_half_for_median([0.0, 0.01, 0.02, 0.03], rho_min=0.875, rho_max=0.96)
    assert d_half == pytest.approx(0.02 * math.log(2) / -math.log(0.9175))
    assert d_half == pytest.approx(0.16101, abs=1e-5)
    assert rho_from_divergence(0.02, d_half=d_half) == pytest.approx(0.9175)
    # other bounds: mid 0.85
    assert rho_from_divergence(
        0.5, d_half=d_half_for_median([0.5], rho_min=0.8, rho_max=0.9), rho_min=0.8, rho_max=0.9
    ) == pytest.approx(0.85)
    with pytest.raises(ValueError, match="at least one positive divergence"):
        d_half_for_median([0.0, 0.0])


def test_d_half_widest_holds_the_densest_window_inside_the_bounds():
    from spo.algo import applied_rho_stats, d_half_widest

    # window ratio log2(1/0.875)/log2(1/0.96) = 3.27: {0.01, 0.011, 0.012} fit, 0.1 does not
    d = [0.1, 0.011, 0.01, 0.012]
    d_half = d_half_widest(d)
    # centred on 0.01 and 0.012: sqrt(0.01·0.012)/sqrt(log2(1/0.96)·log2(1/0.875))
    want = math.sqrt(0.01 * 0.012) / math.sqrt(math.log2(1 / 0.96) * math.log2(1 / 0.875))
    assert d_half == pytest.approx(want)
    rho = rho_from_divergence(np.array(d), d_half=d_half)
    stats = applied_rho_stats(rho, rho_min=0.875, rho_max=0.96)
    assert stats["at_min"] == 0.25 and stats["at_max"] == 0.0  # only 0.1 is clipped
    # a long tail: the median rule centres on the median, widest on the dense cluster
    tail = [0.001, 0.0011, 0.0012, 0.0013, 0.05, 0.2, 0.5]
    assert rho_from_divergence(np.array(tail[:4]), d_half=d_half_widest(tail)).max() < 0.96
