"""ValueTracker: spec §2 update (Beta = EMA), steady state, §3 init, ordering, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spo.algo import ValueTracker, spo_advantage

unit = st.floats(0.0, 1.0, allow_nan=False)
rho_st = st.floats(0.05, 1.0, allow_nan=False)


def test_prior_and_one_update_by_hand():
    t = ValueTracker(3)
    # prior α = β = 1.0·0.5 → v̂ = 0.5, N = 1
    np.testing.assert_array_equal(t.value([0, 1, 2]), [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(t.count([0, 1, 2]), [1.0, 1.0, 1.0])
    t.update([1], [1.0], 0.9)
    # α = 0.9·0.5 + 1 = 1.45, β = 0.9·0.5 + 0 = 0.45 → v̂ = 1.45/1.9 = 0.763157…, N = 1.9
    assert t.value([1])[0] == pytest.approx(1.45 / 1.9, rel=1e-6)
    assert t.count([1])[0] == pytest.approx(1.9, rel=1e-6)
    # EMA form of the same update: v̂ ← v̂ + (r − v̂)/(ρN + 1) = 0.5 + 0.5/(0.9·1 + 1)
    assert t.value([1])[0] == pytest.approx(0.5 + (1.0 - 0.5) / (0.9 * 1.0 + 1.0), rel=1e-6)
    t.update([1], [0.25], 0.5)
    # α = 0.5·1.45 + 0.25 = 0.975, β = 0.5·0.45 + 0.75 = 0.975 → v̂ = 0.5, N = 1.95
    assert t.value([1])[0] == pytest.approx(0.5, rel=1e-6)
    assert t.count([1])[0] == pytest.approx(1.95, rel=1e-6)
    assert t.value([0])[0] == 0.5  # untouched


def test_custom_prior():
    t = ValueTracker(2, prior_value=0.2, prior_count=5.0)
    # α = 5·0.2 = 1, β = 5·0.8 = 4
    np.testing.assert_allclose(t.alpha, [1.0, 1.0])
    np.testing.assert_allclose(t.beta, [4.0, 4.0])
    np.testing.assert_allclose(t.value([0, 1]), [0.2, 0.2], rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(unit, rho_st), min_size=1, max_size=60),
    st.floats(0.0, 1.0),
    st.floats(0.1, 30.0),
)
def test_beta_form_equals_ema_form(seq, v0, n0):
    t = ValueTracker(1)
    t.init_from_values([0], [v0], [n0])
    v, n = v0, n0  # EMA form in float64
    for r, rho in seq:
        t.update([0], [r], rho)
        v = v + (r - v) / (rho * n + 1.0)
        n = rho * n + 1.0
    assert t.value([0])[0] == pytest.approx(v, rel=1e-4, abs=1e-6)
    assert t.count([0])[0] == pytest.approx(n, rel=1e-4)


@pytest.mark.parametrize("rho", [0.875, 0.9, 0.96])
def test_steady_state_count(rho):
    t = ValueTracker(2)
    rng = np.random.default_rng(0)
    for _ in range(600):
        t.update([0, 1], rng.integers(0, 2, 2).astype(float), rho)
    # N ← ρN + 1 has fixed point N* = 1/(1 − ρ): 8, 10, 25
    np.testing.assert_allclose(t.count([0, 1]), 1.0 / (1.0 - rho), rtol=1e-5)


def test_init_from_counts_smoothed_by_hand():
    t = ValueTracker(4)  # rho_min 0.875 → N₀ = 1/(1 − 0.875) = 8
    assert t.offline_count == 8.0
    t.init_from_counts([0, 1, 3], successes=[3, 0, 8], trials=[8, 0, 8])
    # id 0: v̂₀ = (3 + 0.5)/(8 + 1) = 3.5/9; α = 8·3.5/9 = 3.111…, β = 8·5.5/9 = 4.888…
    assert t.alpha[0] == pytest.approx(8 * 3.5 / 9, rel=1e-6)
    assert t.beta[0] == pytest.approx(8 * 5.5 / 9, rel=1e-6)
    # id 1: no trials → (0 + 0.5)/(0 + 1) = 0.5, N = 8
    assert t.value([1])[0] == pytest.approx(0.5)
    # id 3: 8/8 → (8.5)/9 = 0.9444… (never exactly 1)
    assert t.value([3])[0] == pytest.approx(8.5 / 9, rel=1e-6)
    np.testing.assert_allclose(t.count([0, 1, 3]), 8.0, rtol=1e-6)
    assert t.count([2])[0] == 1.0  # untouched prompt keeps the prior
    assert not t.seen([0, 1, 2, 3]).any()  # offline init is not a visit


def test_init_from_values_user_prior():
    t = ValueTracker(3)
    t.init_from_values([0, 2], values=[0.1, 0.7], counts=4.0)
    # α = 4·0.1 = 0.4, β = 3.6; α = 2.8, β = 1.2
    np.testing.assert_allclose(t.alpha[[0, 2]], [0.4, 2.8], rtol=1e-6)
    np.testing.assert_allclose(t.beta[[0, 2]], [3.6, 1.2], rtol=1e-6)


def test_value_reads_are_snapshots_not_views():
    """A baseline read before an update must stay the pre-update value after it: if
    value()/values() returned views of the state, the trainer's pre-update baseline
    would silently become the post-update one (a biased gradient). That the trainer
    reads before it updates is pinned in tests/train/test_wiring.py."""
    ids = np.array([0, 1, 2])
    t = ValueTracker(3)
    t.init_from_counts(ids, [2, 4, 6], [8, 8, 8])
    baseline = t.value(ids)
    everything = t.values()
    want = (np.array([2, 4, 6]) + 0.5) / 9.0
    t.update(ids, [1.0, 1.0, 1.0], 0.9)
    np.testing.assert_allclose(baseline, want, rtol=1e-6)
    np.testing.assert_allclose(everything, want, rtol=1e-6)
    assert np.all(t.value(ids) > want)  # the state itself moved
    adv = spo_advantage(np.ones(3, np.float32), baseline, normalize=False)
    np.testing.assert_allclose(adv.numpy(), 1.0 - want, rtol=1e-6)


def _loop_update(alpha, beta, ids, rewards, rho):
    """Reference: one sample at a time, float64 arithmetic, float32 storage."""
    for i, r, p in zip(ids, rewards, rho, strict=True):
        alpha[i] = np.float32(p * float(alpha[i]) + r)
        beta[i] = np.float32(p * float(beta[i]) + (1.0 - r))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), unit, rho_st), min_size=1, max_size=40),
)
def test_vectorised_update_equals_loop_with_duplicates(rows):
    ids = np.array([r[0] for r in rows])
    rewards = np.array([r[1] for r in rows])
    rho = np.array([r[2] for r in rows])
    t = ValueTracker(6)
    a, b = t.alpha.copy(), t.beta.copy()
    t.update(ids, rewards, rho)
    _loop_update(a, b, ids, rewards, rho)
    np.testing.assert_array_equal(t.alpha, a)  # bit-exact
    np.testing.assert_array_equal(t.beta, b)


def test_duplicates_in_order_by_hand():
    t = ValueTracker(1)
    t.update([0, 0], [1.0, 0.0], 0.5)
    # 1st: α = 0.25 + 1 = 1.25, β = 0.25; 2nd: α = 0.625, β = 0.125 + 1 = 1.125
    assert t.alpha[0] == pytest.approx(0.625)
    assert t.beta[0] == pytest.approx(1.125)
    t2 = ValueTracker(1)
    t2.update([0, 0], [0.0, 1.0], 0.5)  # other order: α = 1.125, β = 0.625
    assert t2.value([0])[0] != t.value([0])[0]


def test_scalar_rho_equals_per_id_rho():
    rng = np.random.default_rng(1)
    ids = rng.permutation(100)[:40]
    r = rng.random(40)
    a, b = ValueTracker(100), ValueTracker(100)
    a.update(ids, r, 0.93)
    b.update(ids, r, np.full(40, 0.93))
    np.testing.assert_array_equal(a.alpha, b.alpha)


def test_values_equals_value_of_all():
    t = ValueTracker(50)
    rng = np.random.default_rng(2)
    t.update(rng.integers(0, 50, 80), rng.random(80), 0.9)
    np.testing.assert_array_equal(t.values(), t.value(np.arange(50)))
    assert t.values().dtype == np.float32


def test_last_step_seen_and_default_counter():
    t = ValueTracker(5)
    assert t.seen_fraction() == 0.0
    np.testing.assert_array_equal(t.last_step(), [-1] * 5)
    t.update([1, 2], [1, 0], 0.9)  # no step: 1-based count of update calls
    t.update([2], [1], 0.9, step=7)
    np.testing.assert_array_equal(t.last_step(), [-1, 1, 7, -1, -1])
    np.testing.assert_array_equal(t.seen([0, 1, 2]), [False, True, True])
    assert t.seen_fraction() == pytest.approx(2 / 5)


def test_grow_keeps_state_and_adds_prior():
    t = ValueTracker(2, prior_value=0.3, prior_count=2.0)
    t.update([1], [1.0], 0.9, step=3)
    before = t.state_dict()
    t.grow(5)
    assert t.num_prompts == 5
    np.testing.assert_array_equal(t.alpha[:2], before["alpha"])
    np.testing.assert_allclose(t.value([2, 3, 4]), 0.3, rtol=1e-6)
    np.testing.assert_allclose(t.count([2, 3, 4]), 2.0)
    np.testing.assert_array_equal(t.last_step([2, 3, 4]), [-1, -1, -1])
    t.update([4], [0.0], 0.9)
    with pytest.raises(ValueError, match="num_prompts"):
        t.grow(3)


def test_bytes_per_prompt_within_budget():
    t = ValueTracker(1000)
    assert t.nbytes / t.num_prompts == 12 <= 16


def _json_checkpoint(state: dict) -> dict:
    """What a checkpoint does: arrays through npz-like copies, scalars through JSON."""
    arrays = {k: np.array(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays}))
    return {**arrays, **scalars}


def test_state_round_trip_bit_exact():
    rng = np.random.default_rng(3)
    t = ValueTracker(100, rho_min=0.8, rho_max=0.95, prior_value=0.4, prior_count=2.0)
    t.init_from_counts(np.arange(50), rng.integers(0, 9, 50), np.full(50, 8))
    t.update(rng.integers(0, 100, 64), rng.random(64), rng.uniform(0.8, 0.95, 64), step=5)
    state = _json_checkpoint(t.state_dict())
    u = ValueTracker(100)
    u.load_state_dict(state)
    for key, value in t.state_dict().items():
        assert np.array_equal(np.asarray(value), np.asarray(u.state_dict()[key])), key
    ids, r = np.arange(10), rng.random(10)
    t.update(ids, r, 0.9)
    u.update(ids, r, 0.9)
    np.testing.assert_array_equal(t.alpha, u.alpha)
    assert u.rho_min == 0.8 and u.prior_count == 2.0


def test_state_dict_is_a_copy():
    t = ValueTracker(3)
    s = t.state_dict()
    t.update([0], [1.0], 0.9)
    assert s["alpha"][0] == 0.5


def test_load_state_mismatch_raises():
    t = ValueTracker(10)
    state = ValueTracker(12).state_dict()
    with pytest.raises(ValueError, match=r"has shape \(12,\) but this tracker has 10 prompts"):
        t.load_state_dict(state)
    bad = t.state_dict()
    del bad["beta"]
    with pytest.raises(ValueError, match="lacks keys"):
        t.load_state_dict(bad)
    bad = t.state_dict()
    bad["alpha"][0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        t.load_state_dict(bad)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t: t.update([0], [1.5], 0.9), r"rewards must be in \[0, 1\]; got 1.5"),
        (lambda t: t.update([0], [-0.1], 0.9), "rewards must be in"),
        (lambda t: t.update([0], [np.nan], 0.9), "rewards.*nan"),
        (lambda t: t.update([4], [1.0], 0.9), r"ids out of range \[0, 4\); got 4"),
        (lambda t: t.update([-1], [1.0], 0.9), "ids out of range"),
        (lambda t: t.update([0.5], [1.0], 0.9), "ids must be integer"),
        (lambda t: t.update([0, 1], [1.0], 0.9), "rewards must have shape"),
        (lambda t: t.update([0], [1.0], 0.0), r"rho must be in \(0, 1\]; got 0.0"),
        (lambda t: t.update([0], [1.0], 1.2), "rho must be in"),
        (lambda t: t.update([0], [1.0], np.nan), "rho must be in"),
        (lambda t: t.update([0], [1.0], 0.9, step=-1), "step"),
        (lambda t: t.value([7]), "ids out of range"),
        (lambda t: t.init_from_counts([0], [1], [-1]), "trials must be in"),
        (lambda t: t.init_from_counts([0], [-1], [3]), "successes must be in"),
        (lambda t: t.init_from_counts([0], [4], [3]), "successes must be <= trials"),
        (lambda t: t.init_from_counts([0, 0], [1, 1], [2, 2]), "distinct"),
        (lambda t: t.init_from_values([0], [1.2], [3]), "values must be in"),
        (lambda t: t.init_from_values([0], [0.5], [0]), "counts must be > 0"),
    ],
)
def test_invalid_input_raises_one_clear_line(call, match):
    t = ValueTracker(4)
    with pytest.raises(ValueError, match=match) as info:
        call(t)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_prompts": -1},
        {"num_prompts": 3, "rho_min": 1.0},
        {"num_prompts": 3, "rho_min": 0.0},
        {"num_prompts": 3, "rho_min": 0.9, "rho_max": 0.8},
        {"num_prompts": 3, "rho_max": 1.5},
        {"num_prompts": 3, "prior_value": 1.5},
        {"num_prompts": 3, "prior_count": 0.0},
    ],
)
def test_invalid_construction_raises(kwargs):
    with pytest.raises(ValueError):
        ValueTracker(**kwargs)


def test_empty_update_is_a_no_op():
    t = ValueTracker(3)
    t.update(np.array([], dtype=np.int64), np.array([]), 0.9)
    np.testing.assert_array_equal(t.alpha, [0.5, 0.5, 0.5])


def test_step_zero_counts_as_seen():
    t = ValueTracker(3)
    t.update([1], [1.0], 0.9, step=0)
    np.testing.assert_array_equal(t.seen(), [False, True, False])
    np.testing.assert_array_equal(t.seen([1, 2]), [True, False])
    assert t.seen_fraction() == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("init", "first", "second", "message"),
    [
        ("counts", [1, 1], [2], "trials must have shape (2,); got (1,)"),
        ("counts", [1], [2, 2], "successes must have shape (2,); got (1,)"),
        # the first index where s > n is named, not the first where s >= n
        (
            "counts",
            [3, 4],
            [3, 3],
            "successes must be <= trials; got successes=4 > trials=3 at index 1",
        ),
        ("values", [0.5], 4.0, "values must have shape (2,); got (1,)"),
        ("values", 0.5, [4.0], "counts must have shape (2,); got (1,)"),
        ("values", 0.5, [4.0, -1.0], "counts must be in [0, inf]; got -1.0 at index 1"),
        # the first count <= 0 is named (0.5 is a valid count)
        ("values", 0.5, [0.5, 0.0], "counts must be > 0; got 0"),
    ],
)
def test_init_names_the_bad_argument_and_its_index(init, first, second, message):
    """init_from_counts(ids, successes, trials) / init_from_values(ids, values, counts)."""
    t = ValueTracker(2)
    with pytest.raises(ValueError) as info:
        getattr(t, f"init_from_{init}")([0, 1], first, second)
    assert str(info.value) == message


def test_init_from_counts_broadcasts_scalar_trials():
    t = ValueTracker(2)
    t.init_from_counts([0, 1], [0, 8], 8)
    # (0 + 0.5)/9 and (8 + 0.5)/9, N₀ = 8
    np.testing.assert_allclose(t.value([0, 1]), [0.5 / 9, 8.5 / 9], rtol=1e-6)


def _state(**override) -> dict:
    """A fresh 3-prompt tracker's state (rho_min 0.875), with some entries replaced."""
    return {**ValueTracker(3).state_dict(), **override}


_F32 = np.float32


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"prior_value": 1.5}, "prior_value must be in [0, 1]; got 1.5"),
        ({"prior_value": -0.5}, "prior_value must be in [0, 1]; got -0.5"),
        ({"prior_count": 0.0}, "prior_count must be in (0, inf]; got 0.0"),
        ({"num_updates": -1}, "num_updates must be in [0, inf]; got -1"),
        ({"rho_max": 0.5}, "rho_max must be >= rho_min=0.875; got 0.5"),
        (
            {"alpha": np.array([0.5, np.inf, 0.5], _F32)},
            "tracker state alpha/beta contain NaN or inf",
        ),
        (
            {"beta": np.array([0.5, np.nan, 0.5], _F32)},
            "tracker state alpha/beta contain NaN or inf",
        ),
        # negative alpha with a positive alpha+beta; negative beta; alpha = beta = 0
        (
            {"alpha": np.array([0.5, -0.25, 0.5], _F32)},
            "tracker state needs alpha >= 0, beta >= 0, alpha+beta > 0",
        ),
        (
            {"beta": np.array([0.5, -0.25, 0.5], _F32)},
            "tracker state needs alpha >= 0, beta >= 0, alpha+beta > 0",
        ),
        (
            {"alpha": np.array([0.5, 0.0, 0.5], _F32), "beta": np.array([0.5, 0.0, 0.5], _F32)},
            "tracker state needs alpha >= 0, beta >= 0, alpha+beta > 0",
        ),
        (
            {"alpha": np.full((3, 1), 0.5, _F32)},
            "tracker state 'alpha' has shape (3, 1) but this tracker has 3 prompts; build "
            "ValueTracker(num_prompts) with the checkpoint's count, load, then grow()",
        ),
    ],
)
def test_load_state_rejects_each_bad_entry_by_name(override, message):
    t = ValueTracker(3)
    with pytest.raises(ValueError) as info:
        t.load_state_dict(_state(**override))
    assert str(info.value) == message
    assert t.state_dict()["num_updates"] == 0 and t.prior_value == 0.5  # nothing half-loaded


def test_load_state_accepts_the_edges_and_owns_its_arrays():
    # alpha = 0 or beta = 0 is a certain prompt (v̂ = 0 or 1), prior_count < 1, no update yet
    alpha = np.array([0.0, 2.0, 0.5], dtype=np.float64)  # float64 in: stored as float32
    beta = np.array([3.0, 0.0, 0.5], dtype=_F32)
    last = np.array([-1, 4, 0], dtype=np.int64)
    state = _state(alpha=alpha, beta=beta, last_step=last, prior_value=1.0, prior_count=0.5)
    t = ValueTracker(3)
    t.load_state_dict(state)
    np.testing.assert_array_equal(t.value([0, 1, 2]), [0.0, 1.0, 0.5])
    assert (t.alpha.dtype, t.beta.dtype, t.last_step().dtype) == (_F32, _F32, np.int32)
    assert (t.prior_value, t.prior_count, t.num_updates) == (1.0, 0.5, 0)
    np.testing.assert_array_equal(t.seen(), [False, True, True])
    beta[2] = 7.0  # the caller's arrays are not the tracker's
    last[0] = 9
    assert t.beta[2] == 0.5 and t.last_step([0])[0] == -1


def test_init_repeated_ids_message_and_ragged_state():
    t = ValueTracker(2)
    with pytest.raises(ValueError) as info:
        t.init_from_values([1, 1], 0.5, 2.0)
    assert str(info.value) == "ids must be distinct for initialisation; got repeated ids"
    with pytest.raises(ValueError) as info:
        t.load_state_dict(_state(alpha=[[0.5], [0.5, 0.5]]))
    assert str(info.value) == "state['alpha'] must be array-like; got list"
