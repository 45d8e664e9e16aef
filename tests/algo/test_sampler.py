"""PrioritySampler: w ∝ sqrt(v(1−v)) + ε, without replacement (§5), seeded and resumable."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy.stats import chisquare

from spo.algo import PrioritySampler, ValueTracker, priority_weights


def test_priority_weights_by_hand():
    w = priority_weights(np.array([0.5, 0.0, 0.1, 1.0]), eps=0.05)
    # sqrt(0.25) + 0.05 = 0.55; 0 + 0.05; sqrt(0.09) + 0.05 = 0.35; 0 + 0.05
    np.testing.assert_allclose(w, [0.55, 0.05, 0.35, 0.05], rtol=1e-6)
    assert w.dtype == np.float32


def test_single_draw_frequencies_match_weights_chi_square():
    v = np.array([0.5, 0.1, 0.02, 0.0, 0.9, 0.3], dtype=np.float32)
    w = priority_weights(v).astype(np.float64)
    s = PrioritySampler(seed=1234)
    n = 20_000
    counts = np.bincount([s.draw(v, 1)[0] for _ in range(n)], minlength=len(v))
    expected = n * w / w.sum()
    assert chisquare(counts, expected).pvalue > 1e-3


def test_ordered_pairs_follow_successive_sampling():
    """k = 2: P(i then j) = w_i/W · w_j/(W − w_i) (Efraimidis–Spirakis = successive)."""
    v = np.array([0.5, 0.05, 0.2, 0.0], dtype=np.float32)
    w = priority_weights(v).astype(np.float64)
    W = w.sum()
    pairs = list(itertools.permutations(range(4), 2))
    prob = np.array([w[i] / W * w[j] / (W - w[i]) for i, j in pairs])
    s = PrioritySampler(seed=7)
    n = 20_000
    index = {p: c for c, p in enumerate(pairs)}
    counts = np.zeros(len(pairs))
    for _ in range(n):
        i, j = s.draw(v, 2)
        counts[index[(int(i), int(j))]] += 1
    assert chisquare(counts, n * prob).pvalue > 1e-3


def test_uniform_mode_frequencies():
    v = np.array([0.5, 0.0, 0.01, 1.0, 0.7], dtype=np.float32)  # ignored in uniform mode
    s = PrioritySampler(seed=3, mode="uniform")
    n = 10_000
    counts = np.bincount([s.draw(v, 1)[0] for _ in range(n)], minlength=5)
    assert chisquare(counts, np.full(5, n / 5)).pvalue > 1e-3


@pytest.mark.parametrize("mode", ["priority", "uniform"])
def test_no_repeated_id_within_a_draw(mode):
    rng = np.random.default_rng(0)
    v = rng.random(60).astype(np.float32)
    s = PrioritySampler(seed=0, mode=mode)
    for _ in range(200):
        ids = s.draw(v, 50)
        assert ids.dtype == np.int64 and len(ids) == 50 == len(np.unique(ids))
    assert sorted(s.draw(v, 60).tolist()) == list(range(60))  # k = P: a permutation


def test_deterministic_given_seed_and_state_round_trip():
    v = np.random.default_rng(5).random(1000).astype(np.float32)
    a, b = PrioritySampler(seed=11), PrioritySampler(seed=11)
    np.testing.assert_array_equal(a.draw(v, 32), b.draw(v, 32))
    a.draw(v, 7)
    state = a.state_dict()
    # a checkpoint: arrays stay arrays, scalars go through JSON
    restored = {
        k: (np.array(x) if isinstance(x, np.ndarray) else json.loads(json.dumps(x)))
        for k, x in state.items()
    }
    expected = [a.draw(v, 16) for _ in range(3)]
    c = PrioritySampler(seed=999, mode="uniform", eps=0.5)
    c.load_state_dict(restored)
    assert (c.seed, c.mode, c.eps) == (11, "priority", 0.05)
    for e in expected:
        np.testing.assert_array_equal(c.draw(v, 16), e)
    for k, x in c.state_dict().items():
        assert np.array_equal(np.asarray(x), np.asarray(a.state_dict()[k])), k
    assert not np.array_equal(PrioritySampler(seed=12).draw(v, 32), PrioritySampler(11).draw(v, 32))


def test_eligible_mask_and_ids():
    v = np.full(20, 0.5, dtype=np.float32)
    mask = np.zeros(20, dtype=bool)
    mask[[3, 4, 9, 15]] = True
    for mode in ("priority", "uniform"):
        s = PrioritySampler(seed=2, mode=mode)
        for _ in range(50):
            assert set(s.draw(v, 3, eligible=mask).tolist()) <= {3, 4, 9, 15}
            assert set(s.draw(v, 2, eligible=np.array([7, 1])).tolist()) == {1, 7}
        with pytest.raises(ValueError, match="k=5 exceeds the population of 4"):
            s.draw(v, 5, eligible=mask)


def test_unestimated_prompts_are_sampleable():
    t = ValueTracker(100)
    t.init_from_counts(np.arange(50), np.zeros(50), np.full(50, 8))  # v̂ = 0.5/9, easy-hard
    ids = np.concatenate([PrioritySampler(seed=s).draw(t.values(), 10) for s in range(20)])
    assert (ids >= 50).mean() > 0.5  # the prior v̂ = 0.5 has the largest weight


def test_zero_weights_only_fill_after_positive_ones():
    v = np.array([0.0, 1.0, 0.5, 0.0, 1.0], dtype=np.float32)
    s = PrioritySampler(eps=0.0, seed=0)
    seen = set()
    for _ in range(100):
        ids = s.draw(v, 3)
        assert ids[0] == 2 and len(set(ids.tolist())) == 3
        seen |= set(ids[1:].tolist())
    assert seen == {0, 1, 3, 4}  # zero-weight prompts filled uniformly


def test_k_zero_returns_empty():
    assert PrioritySampler().draw(np.full(3, 0.5), 0).shape == (0,)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.draw(np.full(3, 0.5), 4), "k=4 exceeds the population of 3"),
        (lambda s: s.draw(np.full(3, 0.5), -1), "k must be in"),
        (lambda s: s.draw(np.full(3, 0.5), 1.5), "k must be an integer"),
        (lambda s: s.draw(np.array([0.5, np.nan]), 1), "values must be in.*nan"),
        (lambda s: s.draw(np.array([0.5, 1.2]), 1), r"values must be in \[0, 1\]; got 1.2"),
        (lambda s: s.draw(np.full((2, 2), 0.5), 1), "values must be 1-D"),
        (lambda s: s.draw(np.full(3, 0.5), 1, eligible=np.ones(4, bool)), "eligible mask"),
        (lambda s: s.draw(np.full(3, 0.5), 1, eligible=[0, 0]), "distinct"),
        (lambda s: s.draw(np.full(3, 0.5), 1, eligible=[5]), "eligible out of range"),
    ],
)
def test_invalid_draws(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call(PrioritySampler())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"mode": "softmax"}, {"eps": -0.1}, {"eps": float("nan")}, {"seed": -1}]
)
def test_invalid_construction(kwargs):
    with pytest.raises(ValueError):
        PrioritySampler(**kwargs)


def test_load_state_validates():
    s = PrioritySampler()
    state = s.state_dict()
    with pytest.raises(ValueError, match="lacks keys"):
        s.load_state_dict({k: v for k, v in state.items() if k != "rng_state"})
    with pytest.raises(ValueError, match="4 uint64 words"):
        s.load_state_dict({**state, "rng_state": np.zeros(3, np.uint64)})
    with pytest.raises(ValueError, match="mode"):
        s.load_state_dict({**state, "mode": "greedy"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"eps": -1.0}, "eps must be in [0, inf]; got -1.0"),
        ({"seed": -1}, "seed must be in [0, inf]; got -1"),
        ({"mode": "greedy"}, "sampler state mode must be one of priority, uniform; got 'greedy'"),
        (
            {"rng_state": np.zeros(4, np.int64)},
            "sampler state 'rng_state' must be 4 uint64 words; got int64 (4,)",
        ),
        ({"rng_state": [[1], [1, 2]]}, "state['rng_state'] must be array-like; got list"),
        ({"rng_has_uint32": 2}, "rng_has_uint32 must be in [0, 1]; got 2"),
        ({"rng_has_uint32": -1}, "rng_has_uint32 must be in [0, 1]; got -1"),
        ({"rng_uinteger": 2**32}, "rng_uinteger must be in [0, 4294967295]; got 4294967296"),
        ({"rng_uinteger": -1}, "rng_uinteger must be in [0, 4294967295]; got -1"),
    ],
)
def test_load_state_names_each_bad_entry(override, message):
    s = PrioritySampler(seed=3, eps=0.2)
    with pytest.raises(ValueError) as info:
        s.load_state_dict({**PrioritySampler().state_dict(), **override})
    assert str(info.value) == message
    assert (s.seed, s.eps) == (3, 0.2)  # nothing half-loaded


def test_state_edges_round_trip_exactly():
    v = np.random.default_rng(0).random(50).astype(np.float32)
    # seed 0, no buffered uint32, uinteger 0: the smallest valid values load
    fresh = PrioritySampler(seed=0, eps=0.0)
    s = PrioritySampler(seed=5)
    s.load_state_dict(fresh.state_dict())
    assert (s.seed, s.eps) == (0, 0.0)
    np.testing.assert_array_equal(s.draw(v, 10), fresh.draw(v, 10))
    # the largest valid buffered uint32, and state words small enough for int64
    words = np.array([0, 12345, 0, 6789], dtype=np.uint64)
    state = {**fresh.state_dict(), "rng_state": words}
    state.update(rng_has_uint32=1, rng_uinteger=2**32 - 1)
    s.load_state_dict(state)
    out = s.state_dict()
    assert out["rng_state"].dtype == np.uint64
    np.testing.assert_array_equal(out["rng_state"], words)
    assert (out["rng_has_uint32"], out["rng_uinteger"]) == (1, 2**32 - 1)
