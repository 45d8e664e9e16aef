"""SPOState: the key-based facade equals the low-level pieces call for call."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spo.algo import (
    DriftTracker,
    PrioritySampler,
    SPOState,
    ValueTracker,
    rho_from_divergence,
    spo_advantage,
)
from spo.algo.values import write_values


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_same_state(a[k], b[k])
        elif isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]), k  # NaN == NaN here


# One "step" of a host: draw k, score, advantage, update with one of three rho modes.
steps_st = st.lists(
    st.tuples(
        st.integers(1, 6),  # k
        st.sampled_from(["drift", "divergence", "rho"]),
        st.floats(0.0, 0.2),  # step drift / divergence / (rho - 0.8)
        st.integers(0, 2**31 - 1),  # reward seed
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(6, 20), seed=st.integers(0, 1000), steps=steps_st)
def test_same_calls_give_bit_identical_state_to_the_pieces(n, seed, steps):
    keys = [f"q{i}" for i in range(n)]
    state = SPOState(keys, seed=seed, d_half=0.05)
    tracker, drift = ValueTracker(n), DriftTracker(n)
    sampler = PrioritySampler(seed=seed)
    for t, (k, mode, x, rseed) in enumerate(steps, start=1):
        ids = sampler.draw(tracker.values(), k)
        drawn = state.select(k)
        assert drawn == [keys[i] for i in ids]
        r = np.random.default_rng(rseed).integers(0, 2, k).astype(np.float32)
        base = tracker.value(ids)
        np.testing.assert_array_equal(state.baseline(drawn), base)
        adv = spo_advantage(torch.from_numpy(r), torch.from_numpy(base))
        torch.testing.assert_close(state.advantages(r, drawn), adv, rtol=0, atol=0)
        clip = {"d_half": 0.05, "rho_min": 0.875, "rho_max": 0.96}
        if mode == "drift":
            state.advance(x)
            drift.advance(x)
            rho = rho_from_divergence(drift.divergence(ids), **clip)
            drift.mark(ids)
            state.observe(drawn, r, step=t)
        elif mode == "divergence":
            d = np.full(k, x)
            rho = rho_from_divergence(d, **clip)
            state.observe(drawn, r, step=t, divergence=d)
        else:
            rho = 0.8 + x
            state.observe(drawn, r, step=t, rho=rho)
        tracker.update(ids, r, rho, step=t)
    _assert_same_state(state.tracker.state_dict(), tracker.state_dict())
    _assert_same_state(state.drift.state_dict(), drift.state_dict())
    _assert_same_state(state.sampler.state_dict(), sampler.state_dict())


@settings(max_examples=30, deadline=None)
@given(
    perm_seed=st.integers(0, 10_000),
    rewards=st.lists(st.sampled_from([0.0, 0.25, 1.0]), min_size=5, max_size=5),
)
def test_keys_in_any_order_map_to_the_same_values(perm_seed, rewards):
    keys = ["a", 7, ("t", 1), "zz", 3]
    perm = np.random.default_rng(perm_seed).permutation(5)
    a = SPOState(keys)
    b = SPOState([keys[i] for i in perm])
    a.observe(keys, rewards, step=1)
    b.observe([keys[i] for i in perm], [rewards[i] for i in perm], step=1)
    for key in keys:
        assert a.baseline([key]) == b.baseline([key])
    np.testing.assert_array_equal(a.baseline(keys), b.baseline(keys))


def test_new_keys_grow_the_tracker_at_the_prior():
    s = SPOState(prior_value=0.25, prior_count=2.0)
    assert len(s) == 0
    np.testing.assert_allclose(s.baseline(["x", "y"]), [0.25, 0.25])
    s.observe(["x", "z"], [1.0, 0.0], step=3)
    assert s.keys == ["x", "y", "z"]
    assert s.tracker.last_step().tolist() == [3, -1, 3]
    assert s.metrics()["tracker/seen_fraction"] == pytest.approx(2 / 3)


def test_select_from_candidates_can_draw_unseen_keys():
    s = SPOState(["a", "b"], seed=0)
    s.tracker.init_from_values([0, 1], [0.0, 1.0], 100.0)  # known keys: weight eps only
    drawn = s.select(2, candidates=["b", "new1", "new2"])
    assert len(set(drawn)) == 2 and set(drawn) <= {"b", "new1", "new2"}
    assert "new1" in s.keys and "new2" in s.keys
    with pytest.raises(ValueError, match="exceeds"):
        s.select(6)


def test_reward_range_maps_and_rejects_outside():
    s = SPOState(["a", "b"], reward_range=(-1.0, 3.0))
    s.observe(["a", "b"], [3.0, -1.0], step=1)
    t = SPOState(["a", "b"])
    t.observe(["a", "b"], [1.0, 0.0], step=1)
    _assert_same_state(s.tracker.state_dict(), t.tracker.state_dict())
    torch.testing.assert_close(
        s.advantages([1.0, 3.0], ["a", "b"], normalize="none"),
        t.advantages([0.5, 1.0], ["a", "b"], normalize="none"),
    )
    with pytest.raises(ValueError, match=r"rewards must be in \[-1, 3\]; got 3.5"):
        s.observe(["a"], [3.5], step=2)
    with pytest.raises(ValueError, match="lo < hi"):
        SPOState(reward_range=(1.0, 1.0))


def test_bad_calls_are_one_clear_error():
    s = SPOState(3)
    with pytest.raises(ValueError, match=r"not among the keys 0\.\.2"):
        s.baseline([5])
    with pytest.raises(ValueError, match="rho or divergence, not both"):
        s.observe([0], [1.0], step=1, rho=0.9, divergence=0.1)
    with pytest.raises(ValueError, match="one key per reward"):
        s.advantages([1.0, 0.0], [0])
    with pytest.raises(ValueError, match="normalize must be one of batch, none"):
        s.advantages([1.0], [0], normalize="group")
    with pytest.raises(ValueError, match="hashable"):
        SPOState([["list-key"]])


def test_count_mode_equals_keyed_mode_on_the_same_ids():
    a, b = SPOState(5, seed=3), SPOState(list(range(5)), seed=3)
    for t in range(1, 4):
        ka, kb = a.select(3), b.select(3)
        assert ka == kb
        a.observe(ka, [1.0, 0.0, 1.0], step=t)
        b.observe(kb, [1.0, 0.0, 1.0], step=t)
    _assert_same_state(a.tracker.state_dict(), b.tracker.state_dict())


@pytest.mark.parametrize("keys", [6, [f"p{i}" for i in range(6)]])
def test_state_round_trips_and_pickles(keys):
    s = SPOState(keys, seed=5, d_half=0.1, reward_range=(0, 2))
    for t in range(1, 4):
        drawn = s.select(3)
        s.advance(0.05 * t)
        s.observe(drawn, [2.0, 0.0, 1.0], step=t)
    copies = (pickle.loads(pickle.dumps(s)), _reloaded(s))
    for copy in copies:
        _assert_same_state(copy.state_dict(), s.state_dict())
        assert copy.metrics() == pytest.approx(s.metrics(), nan_ok=True)
    nxt = s.select(4)
    assert all(copy.select(4) == nxt for copy in copies)  # same RNG stream afterwards


def _reloaded(s: SPOState) -> SPOState:
    fresh = SPOState()
    fresh.load_state_dict(s.state_dict())
    return fresh


def test_metrics_after_observe():
    s = SPOState(["a", "b", "c", "d"])
    assert np.isnan(s.metrics()["adv/variance_ratio"])
    s.observe(["a", "b", "c", "d"], [1.0, 0.0, 1.0, 0.5], step=1, rho=0.9)
    m = s.metrics()
    # prior v̂ = 0.5 for all: A = r − 0.5 has the variance of r, ratio 1
    assert m["adv/variance_ratio"] == pytest.approx(1.0)
    assert m["adv/abs_le_1e-4"] == pytest.approx(0.25)
    assert m["tracker/rho_mean"] == pytest.approx(0.9)
    assert m["tracker/seen_fraction"] == 1.0


def test_parquet_in_init_values_format(tmp_path):
    path = write_values(tmp_path / "v.parquet", ["b", "zzz", "a"], [3, 1, 8], [8, 8, 8])
    s = SPOState(["a", "b", "c"])
    assert s.load_values(path) == 2
    ref = ValueTracker(3)
    ref.init_from_counts([1, 0], [3, 8], [8, 8])  # spec §3, as `spo train tracker.init=offline`
    _assert_same_state(s.tracker.state_dict(), ref.state_dict())
    out = s.save_values(tmp_path / "out.parquet")
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pydict()
    assert table["prompt_id"] == ["a", "b", "c"]
    np.testing.assert_allclose(table["value"], s.baseline(["a", "b", "c"]), rtol=1e-6)
    back = SPOState(["c", "a", "b"])
    assert back.load_values(out) == 3  # the export reads back as offline estimates
    np.testing.assert_allclose(
        back.baseline(["a", "b", "c"]),
        (np.asarray(table["successes"]) + 0.5) / (np.asarray(table["trials"]) + 1),
        rtol=1e-6,
    )


def test_observe_returns_the_applied_rho_and_the_divergence_behind_it():
    s = SPOState(4, d_half=0.1)
    rho = s.observe([0, 1], [1.0, 0.0], step=1)  # drift clock: first visits, D = 0
    np.testing.assert_array_equal(rho, [0.96, 0.96])
    np.testing.assert_array_equal(s.last_divergence, [0.0, 0.0])
    s.advance(0.1)
    rho = s.observe([0, 2], [1.0, 1.0], step=2)  # 0 revisited after D = 0.1: 2^-1 -> clipped
    np.testing.assert_allclose(s.last_divergence, [0.1, 0.0], rtol=1e-6)
    np.testing.assert_allclose(rho, [0.875, 0.96])
    rho = s.observe([1, 3], [0.0, 1.0], step=3, divergence=[0.01, 0.0])
    np.testing.assert_allclose(rho, [2 ** (-0.1), 0.96])  # 0.933: inside the bounds
    np.testing.assert_allclose(s.last_divergence, [0.01, 0.0])
    rho = s.observe([3], [1.0], step=4, rho=0.9)
    np.testing.assert_array_equal(rho, [0.9])
    assert s.last_divergence is None


def test_offline_init_counts_as_a_visit_of_the_drift_clock(tmp_path):
    """An offline prior comes from the policy at initialisation: its first observe gets the
    drift accumulated since, not the fresh-prompt D = 0 (issue 19)."""
    s = SPOState(["a", "b", "c"], d_half=0.2)
    s.init_from_counts(["a"], [3], [8])
    assert s.drift.seen().tolist() == [True, False, False]
    s.advance(0.1)
    s.advance(0.1)
    rho = s.observe(["a", "b"], [1.0, 0.0], step=1)
    np.testing.assert_allclose(s.last_divergence, [0.2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(rho, [0.875, 0.96])  # 2^-1 clipped to ρ_min; fresh b: ρ_max
    # N₀ = 8: α = ρ·α₀ + r with the discounted ρ
    np.testing.assert_allclose(s.tracker.count([0]), [0.875 * 8 + 1], rtol=1e-6)
    # the parquet path marks the same way
    path = write_values(tmp_path / "v.parquet", ["c"], [1], [8])
    t = SPOState(["a", "b", "c"], d_half=1.0)
    t.advance(0.05)
    assert t.load_values(path) == 1
    t.advance(0.1)
    t.observe(["c", "a"], [1.0, 1.0], step=1)
    np.testing.assert_allclose(t.last_divergence, [0.1, 0.0], rtol=1e-6)


def test_metrics_value_mean_is_the_baseline_before_the_update():
    s = SPOState(2)
    s.tracker.init_from_values([0, 1], [0.2, 0.6], 4.0)
    s.observe([0, 1], [1.0, 1.0], step=1, rho=0.5)
    # before: (0.2 + 0.6)/2 = 0.4; after it would be ((0.4+1)/3 + (1.2+1)/3)/2 = 0.6
    assert s.metrics()["tracker/value_mean"] == pytest.approx(0.4)
