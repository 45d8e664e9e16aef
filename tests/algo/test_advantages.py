"""Advantages: SPO batch normalisation (§4), GRPO / Dr. GRPO / RLOO (§7), registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spo.algo import (
    ADVANTAGE_NEEDS_BASELINE,
    ADVANTAGE_NEEDS_GROUPS,
    ADVANTAGES,
    UnknownNameError,
    get_advantage,
    grpo_advantage,
    rloo_advantage,
    spo_advantage,
)
from spo.algo.advantages import Registry


def test_spo_advantage_by_hand():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    b = torch.tensor([0.5, 0.5, 0.25, 0.75])
    # A = r − b = [0.5, −0.5, 0.75, 0.25]; mean = 1/4 = 0.25
    # A − mean = [0.25, −0.75, 0.5, 0.0]; unbiased var = (0.0625+0.5625+0.25+0)/3 = 0.291666…
    std = math.sqrt(0.875 / 3)  # 0.540062…
    expected = torch.tensor([0.25, -0.75, 0.5, 0.0]) / (std + 1e-8)
    torch.testing.assert_close(spo_advantage(r, b), expected)
    torch.testing.assert_close(
        spo_advantage(r, b, normalize=False), torch.tensor([0.5, -0.5, 0.75, 0.25])
    )


def test_spo_batch_of_one_and_constant_batch_are_zero_not_nan():
    out = spo_advantage(torch.tensor([1.0]), torch.tensor([0.3]))
    assert torch.equal(out, torch.zeros(1))
    out = spo_advantage(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5]))
    assert torch.equal(out, torch.zeros(2))  # (A − mean)/(0 + 1e-8) = 0
    assert spo_advantage(torch.zeros(0), torch.zeros(0)).shape == (0,)


def test_spo_accepts_numpy_and_promotes_dtypes_like_torch():
    """float32 in -> float32 out (the trainer's path); mixed precision promotes (float64
    baseline -> float64), as torch's own arithmetic does; never silently downcast."""
    r32 = np.array([1, 0, 1], dtype=np.float32)
    out = spo_advantage(r32, np.array([0.5, 0.25, 0.5], dtype=np.float32))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([0.5773503, -1.1547005, 0.5773503]))
    out64 = spo_advantage(r32, np.array([0.5, 0.25, 0.5]))
    assert out64.dtype == torch.float64


def test_grpo_advantage_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    # group 0: mean 0.5; unbiased std = sqrt(4·0.25/3) = sqrt(1/3) = 0.57735…
    s = math.sqrt(1 / 3)
    a0 = 0.5 / (s + 1e-6)
    expected = torch.tensor([a0, -a0, -a0, a0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(grpo_advantage(r, g), expected)
    # Dr. GRPO: no std → ±0.5
    torch.testing.assert_close(
        grpo_advantage(r, g, scale=None), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0.0])
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 6)), min_size=1, max_size=8))
def test_grpo_equal_reward_groups_are_exactly_zero(groups):
    r = torch.tensor([v for v, n in groups for _ in range(n)], dtype=torch.float32)
    g = torch.tensor([i for i, (_, n) in enumerate(groups) for _ in range(n)])
    for fn in (grpo_advantage, rloo_advantage, lambda r, g: grpo_advantage(r, g, scale=None)):
        assert torch.equal(fn(r, g), torch.zeros_like(r))


def test_rloo_by_hand_and_identity():
    r = torch.tensor([1.0, 0.0, 0.0])
    g = torch.tensor([5, 5, 5])
    # A_0 = 1 − (0+0)/2 = 1; A_1 = 0 − (1+0)/2 = −0.5; A_2 = −0.5
    torch.testing.assert_close(rloo_advantage(r, g), torch.tensor([1.0, -0.5, -0.5]))
    rng = np.random.default_rng(0)
    r = torch.tensor(rng.random(24))
    g = torch.tensor(np.repeat(np.arange(4), 6))
    # RLOO = n/(n−1)·(r − mean_g): Dr. GRPO scaled by 6/5
    torch.testing.assert_close(rloo_advantage(r, g), grpo_advantage(r, g, scale=None) * 6 / 5)


def test_group_ids_need_not_be_contiguous_and_singletons_are_zero():
    r = torch.tensor([1.0, 0.0, 1.0, 0.3])
    g = torch.tensor([42, 42, -7, 1000])
    out = grpo_advantage(r, g, scale=None)
    torch.testing.assert_close(out, torch.tensor([0.5, -0.5, 0.0, 0.0]))
    assert torch.equal(rloo_advantage(r, g)[2:], torch.zeros(2))


def test_registry_one_calling_convention():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    b = torch.full((6,), 0.25)
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    assert set(ADVANTAGES) == {"spo", "none", "grpo", "dr_grpo", "rloo"}
    for name in ADVANTAGES:
        out = ADVANTAGES[name](r, baseline_B=b, group_id_B=g)  # extra args ignored
        assert out.shape == (6,) and torch.isfinite(out).all(), name
    torch.testing.assert_close(ADVANTAGES["spo"](r, baseline_B=b), spo_advantage(r, b))
    torch.testing.assert_close(ADVANTAGES["grpo"](r, group_id_B=g), grpo_advantage(r, g))
    torch.testing.assert_close(ADVANTAGES["rloo"](r, group_id_B=g), rloo_advantage(r, g))
    # none: A = r, still batch-normalised = spo with a zero baseline
    torch.testing.assert_close(ADVANTAGES["none"](r), spo_advantage(r, torch.zeros(6)))
    assert set(ADVANTAGE_NEEDS_GROUPS) == {"grpo", "dr_grpo", "rloo"}
    assert set(ADVANTAGE_NEEDS_BASELINE) == {"spo"}
    assert get_advantage("dr_grpo") is ADVANTAGES["dr_grpo"]


def test_registry_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown advantage 'ppo'; valid: dr_grpo, grpo"):
        get_advantage("ppo")
    with pytest.raises(KeyError):  # still a KeyError for dict-style callers
        ADVANTAGES["ppo"]
    assert "ppo" not in ADVANTAGES


def test_registry_missing_argument():
    with pytest.raises(ValueError, match="'spo' needs baseline_B"):
        ADVANTAGES["spo"](torch.ones(2))
    with pytest.raises(ValueError, match="'grpo' needs group_id_B"):
        ADVANTAGES["grpo"](torch.ones(2), baseline_B=torch.ones(2))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: spo_advantage(torch.tensor([1.5]), torch.tensor([0.5])), "reward_B.*1.5"),
        (lambda: spo_advantage(torch.tensor([-0.5]), torch.tensor([0.5])), "reward_B"),
        (lambda: spo_advantage(torch.tensor([math.nan]), torch.tensor([0.5])), "reward_B.*nan"),
        (lambda: spo_advantage(torch.ones(2), torch.ones(3)), "baseline_B must have shape"),
        (lambda: spo_advantage(torch.ones(2), torch.tensor([0.5, math.nan])), "baseline_B"),
        (lambda: spo_advantage(torch.ones(2, 2), torch.ones(2, 2)), "1-D"),
        (lambda: grpo_advantage(torch.ones(2), torch.tensor([0.0, 1.0])), "integer group ids"),
        (lambda: grpo_advantage(torch.ones(2), torch.tensor([0])), "group_id_B must have shape"),
        (lambda: grpo_advantage(torch.ones(2), torch.tensor([0, 0]), scale="mad"), "scale"),
        (lambda: rloo_advantage(torch.tensor([2.0]), torch.tensor([0])), "reward_B"),
    ],
)
def test_invalid_input(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_rloo_group_of_two_is_the_other_sample_as_baseline():
    # n = 2: A_i = r_i − r_other; the leave-one-out mean divides by n − 1 = 1
    r = torch.tensor([1.0, 0.0, 0.25, 0.75])
    g = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(rloo_advantage(r, g), torch.tensor([1.0, -1.0, -0.5, 0.5]))


def test_registry_dr_grpo_is_grpo_without_the_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    # group means 1/3 and 2/3: A = r − mean, no division by the std (which is ≠ 1 here)
    want = torch.tensor([2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3])
    torch.testing.assert_close(ADVANTAGES["dr_grpo"](r, group_id_B=g), want)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_registry_group_algorithms_name_themselves_when_groups_are_missing(name):
    with pytest.raises(ValueError) as info:
        ADVANTAGES[name](torch.ones(2), baseline_B=torch.ones(2))
    assert str(info.value) == f"advantage {name!r} needs group_id_B; got None"


def test_unknown_name_error_text_and_a_fresh_registry():
    assert str(UnknownNameError()) == ""
    assert str(UnknownNameError("unknown x 'y'")) == "unknown x 'y'"
    reg = Registry("reward", {"b": 2, "a": 1})
    assert dict(reg) == {"a": 1, "b": 2} and reg.kind == "reward"
    with pytest.raises(UnknownNameError) as info:
        reg["c"]
    assert str(info.value) == "unknown reward 'c'; valid: a, b"


def test_grpo_one_group_and_groups_of_two_by_hand():
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # one group of 2: mean 0.5, unbiased std = sqrt((0.25 + 0.25)/1) = sqrt(0.5)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    want = torch.tensor([a, -a], dtype=torch.float64)
    torch.testing.assert_close(grpo_advantage(r, torch.tensor([3, 3])), want, rtol=1e-12, atol=0)


def test_grpo_epsilon_is_added_to_the_std():
    # float64 and a tight tolerance: std + 1e-6 vs std − 1e-6 differ by 3.5e-6 relative
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    out = grpo_advantage(r, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(
        out, torch.tensor([a, -a, -a, a], dtype=torch.float64), rtol=1e-12, atol=0
    )


def test_group_ids_as_lists_or_numpy_and_the_empty_batch():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    want = torch.tensor([0.5, -0.5, 0.0, 0.0])
    for g in ([7, 7, 2, 2], np.array([7, 7, 2, 2])):
        torch.testing.assert_close(grpo_advantage(r, g, scale=None), want)
        torch.testing.assert_close(rloo_advantage(r, g), 2 * want)
    empty = torch.zeros(0)
    assert grpo_advantage(empty, torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert rloo_advantage(empty, np.zeros(0, dtype=np.int64)).shape == (0,)


def test_bool_group_ids_are_refused():
    with pytest.raises(ValueError) as info:
        grpo_advantage(torch.ones(2), torch.tensor([True, False]))
    assert str(info.value) == "group_id_B must be integer group ids; got dtype torch.bool"


def test_group_baseline_by_hand():
    from spo.algo import group_baseline

    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    g = torch.tensor([0, 0, 0, 1, 1, 2])
    # group 0: mean 1/3; leave-one-out: others' mean [0, 0.5, 0.5]; group 1 all equal: b = r;
    # group 2 a singleton: b = r
    torch.testing.assert_close(
        group_baseline(r, g), torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0, 0.5])
    )
    torch.testing.assert_close(
        group_baseline(r, g, leave_one_out=True), torch.tensor([0.0, 0.5, 0.5, 1.0, 1.0, 0.5])
    )


def test_advantage_baseline_is_what_each_estimator_subtracts():
    """A = r − b for every entry, before its scaling: the variance ratio's b is the real one."""
    from spo.algo import ADVANTAGE_BASELINE, advantage_baseline

    assert set(ADVANTAGE_BASELINE) == set(ADVANTAGES)  # a new algorithm needs its row
    gen = torch.Generator().manual_seed(3)
    r = torch.randint(0, 3, (12,), generator=gen).float() / 2
    g = torch.arange(12) // 4
    v = torch.rand(12, generator=gen)
    b = {n: advantage_baseline(n, r, baseline_B=v, group_id_B=g) for n in ADVANTAGES}
    torch.testing.assert_close(b["spo"], v)
    torch.testing.assert_close(b["none"], torch.zeros(12))
    torch.testing.assert_close(r - b["dr_grpo"], ADVANTAGES["dr_grpo"](r, group_id_B=g))
    torch.testing.assert_close(r - b["rloo"], ADVANTAGES["rloo"](r, group_id_B=g))
    std = torch.stack([r[g == k].std() for k in range(3)])[g]
    grpo = ADVANTAGES["grpo"](r, group_id_B=g)
    torch.testing.assert_close(torch.where(grpo == 0, 0.0, (r - b["grpo"]) / (std + 1e-6)), grpo)
    spo = ADVANTAGES["spo"](r, baseline_B=v)
    torch.testing.assert_close(spo, spo_advantage(r, b["spo"]))
    with pytest.raises(UnknownNameError, match="valid: "):
        advantage_baseline("nope", r)
    with pytest.raises(ValueError, match="'rloo' needs group_id_B"):
        advantage_baseline("rloo", r)
    with pytest.raises(ValueError, match="'spo' needs baseline_B"):
        advantage_baseline("spo", r)


def test_advantage_baseline_of_an_entry_without_a_row_needs_a_default(monkeypatch):
    from spo.algo import advantage_baseline

    monkeypatch.setitem(ADVANTAGES, "half_spo", lambda r, **kw: 0.5 * r)
    r, v = torch.tensor([1.0, 0.0]), torch.tensor([0.25, 0.5])
    with pytest.raises(ValueError, match="'half_spo' has no ADVANTAGE_BASELINE row"):
        advantage_baseline("half_spo", r, baseline_B=v)
    torch.testing.assert_close(advantage_baseline("half_spo", r, baseline_B=v, default="given"), v)
    torch.testing.assert_close(
        advantage_baseline("half_spo", r, group_id_B=[0, 0], default="group_mean"),
        torch.tensor([0.5, 0.5]),
    )
