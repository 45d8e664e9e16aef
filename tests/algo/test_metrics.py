"""Metrics (§8): pass@k vs brute force / exact rationals, maj@k, avg@k, diagnostics."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from spo.algo import (
    advantage_variance,
    avg_at_k,
    degenerate_fraction,
    maj_at_k,
    pass_at_k,
    small_advantage_fraction,
)


def test_pass_at_k_by_hand():
    # n=10, c=3, k=3: 1 − C(7,3)/C(10,3) = 1 − 35/120 = 0.708333…
    assert pass_at_k(10, 3, 3) == pytest.approx(1 - 35 / 120)
    # product form: 1 − (1 − 3/8)(1 − 3/9)(1 − 3/10) = 1 − (5/8)(6/9)(7/10) = 1 − 210/720
    assert pass_at_k(10, 3, 3) == pytest.approx(1 - (5 / 8) * (6 / 9) * (7 / 10))
    # n=5, c=2, k=2: 1 − C(3,2)/C(5,2) = 1 − 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 8, 3) == 1.0  # n − c = 2 < k: every 3-subset has a correct one
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 = c/n


def test_pass_at_k_equals_brute_force_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("c", "k"), [(1, 1), (1, 500), (3, 32), (10, 100), (500, 10), (999, 1)])
def test_pass_at_k_exact_for_n_1000(c, k):
    n = 1000
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_vectorised():
    c = np.array([0, 1, 5, 16])
    out = pass_at_k(16, c, 4)
    np.testing.assert_allclose(out, [pass_at_k(16, int(x), 4) for x in c])
    grid = pass_at_k(np.array([[8], [16]]), np.array([2, 4]), np.array([4]))
    assert grid.shape == (2, 2)
    assert grid[1, 0] == pass_at_k(16, 2, 4)
    assert pass_at_k(16, torch.tensor([1, 2]), 2).shape == (2,)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((4, 1, 5), r"k must be <= n.*n=4, c=1, k=5"),
        ((4, 5, 2), "c must be <= n"),
        ((4, -1, 2), "c must be >= 0"),
        ((4, 1, 0), "k must be >= 1"),
        ((4, 1.5, 2), "c must be integers"),
    ],
)
def test_pass_at_k_invalid(args, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(*args)


def test_maj_at_k_by_hand():
    answers = ["4", "5", "4", None, None]
    correct = [1, 0, 1, 0, 0]
    assert maj_at_k(answers, correct, 5) == 1.0  # "4" twice beats "5" once
    assert maj_at_k(["5", "4", "4"], [0, 1, 1], 1) == 0.0  # first k = 1 sample only
    assert maj_at_k(["5", "4"], [0, 1], 2) == 0.0  # tie → earliest first occurrence: "5"
    assert maj_at_k(["4", "5"], [1, 0], 2) == 1.0
    assert maj_at_k([None, None, None, "3"], [0, 0, 0, 1], 4) == 1.0  # None never wins
    assert maj_at_k([None, None], [0, 0], 2) == 0.0  # all extractions failed


def test_maj_at_k_invalid():
    with pytest.raises(ValueError, match="k must be in"):
        maj_at_k(["1"], [1], 2)
    with pytest.raises(ValueError, match="correct must have shape"):
        maj_at_k(["1", "2"], [1], 1)
    with pytest.raises(ValueError, match="hashable"):
        maj_at_k([["1"]], [1], 1)
    with pytest.raises(ValueError, match="empty"):
        maj_at_k([], [], 1)


def test_avg_at_k_by_hand():
    correct = np.array([[1, 0, 1, 1], [0, 0, 0, 1]], dtype=bool)
    assert avg_at_k(correct) == pytest.approx(4 / 8)  # all K = 4
    assert avg_at_k(correct, 2) == pytest.approx(1 / 4)  # [[1,0],[0,0]]
    assert avg_at_k([0.5, 1.0]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="k must be in"):
        avg_at_k(correct, 5)
    with pytest.raises(ValueError, match="correct must be in"):
        avg_at_k([1.5])


def test_degenerate_fraction_by_hand():
    reward = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    # group 1 (4 samples) all 0 → degenerate: 4/10
    assert degenerate_fraction(reward, group) == pytest.approx(0.4)
    assert degenerate_fraction(np.array([1.0, 0.0]), np.arange(2)) == 1.0  # singletons
    assert degenerate_fraction(np.zeros(0), np.zeros(0, dtype=int)) == 0.0
    with pytest.raises(ValueError, match="reward_B must be in"):
        degenerate_fraction([2.0], [0])
    with pytest.raises(ValueError, match="group_id_B must have shape"):
        degenerate_fraction([1.0, 0.0], [0])


def test_small_advantage_fraction_by_hand():
    adv = torch.tensor([0.0, 1e-5, -0.01, 0.5])
    assert small_advantage_fraction(adv, 1e-4) == pytest.approx(2 / 4)
    assert small_advantage_fraction(adv, 0.02) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="threshold"):
        small_advantage_fraction(adv, -1.0)


def test_advantage_variance_by_hand():
    assert advantage_variance(torch.tensor([1.0, -1.0, 1.0, -1.0])) == pytest.approx(1.0)
    adv = np.array([0.0, 0.0, 0.5, -0.5])
    groups = np.array([0, 0, 1, 1])
    # drop group 0 (all-equal advantages) → var([0.5, −0.5]) = 0.25
    assert advantage_variance(adv, groups, exclude_degenerate=True) == pytest.approx(0.25)
    # degeneracy from rewards instead: group 1 has equal rewards → only group 0 left → 0
    rewards = np.array([1.0, 0.0, 1.0, 1.0])
    assert advantage_variance(adv, groups, exclude_degenerate=True, reward_B=rewards) == 0.0
    assert advantage_variance(np.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="needs group_id_B"):
        advantage_variance(adv, exclude_degenerate=True)
    with pytest.raises(ValueError, match="adv_B"):
        advantage_variance(np.array([np.nan]))


def test_pass_at_k_scalar_in_float_out():
    assert type(pass_at_k(10, 3, 3)) is float
    assert type(pass_at_k(np.int64(4), np.int64(1), np.int64(1))) is float


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((4.5, 1, 2), "n must be integers; got [4.5] (float64)"),
        ((4, 1, 2.5), "k must be integers; got [2.5] (float64)"),
        ((4, -1, 2), "c must be >= 0; got n=4, c=-1, k=2"),
        ((4, 5, 2), "c must be <= n; got n=4, c=5, k=2"),
        ((4, 1, 0), "k must be >= 1; got n=4, c=1, k=0"),
        ((4, 1, 5), "k must be <= n (cannot pick more samples than were drawn); got n=4, c=1, k=5"),
    ],
)
def test_pass_at_k_invalid_exact_message(args, message):
    with pytest.raises(ValueError) as info:
        pass_at_k(*args)
    assert str(info.value) == message


def test_maj_at_k_majority_need_not_come_first():
    # "4" (twice) beats "5" (once) although "5" comes first
    assert maj_at_k(["5", "4", "4"], [0, 1, 1], 3) == 1.0
    assert maj_at_k(["5", "4", "4", "5", "5"], [0, 1, 1, 0, 0], 5) == 0.0  # 3 × "5"
    assert maj_at_k(["5", "4", "4", "5", "5"], [0, 1, 1, 0, 0], 3) == 1.0  # first 3 only


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["1"], [1.5], 1), "correct must be in [0, 1]; got 1.5 at index 0"),
        (([], [], 1), "answers must not be empty"),
        ((["1"], [1], 0), "k must be in [1, 1]; got 0"),
        (([["1"]], [1], 1), "answers must be hashable; got list at 0"),
    ],
)
def test_maj_at_k_invalid_exact_message(args, message):
    with pytest.raises(ValueError) as info:
        maj_at_k(*args)
    assert str(info.value) == message


def test_avg_at_k_bounds_of_k_and_shape():
    correct = np.array([[1, 0, 1, 1], [0, 0, 0, 1]], dtype=bool)
    assert avg_at_k(correct, 1) == pytest.approx(1 / 2)  # first column [1, 0]
    assert avg_at_k([1.0]) == 1.0  # K = 1 is a valid (E, K)
    assert avg_at_k([[0.0], [1.0]], 1) == 0.5
    with pytest.raises(ValueError, match=r"^k must be in \[1, 4\]; got 0$"):
        avg_at_k(correct, 0)
    for bad in (np.zeros(0), np.zeros((2, 0)), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError, match=r"^correct must be \(K,\) or \(E, K\) with K >= 1"):
            avg_at_k(bad)


def test_group_ids_must_be_integers_named_in_the_message():
    with pytest.raises(ValueError) as info:
        degenerate_fraction([1.0, 0.0], [0.5, 1.0])
    assert str(info.value) == "group_id_B must be integers; got [0.5] (float64)"
    with pytest.raises(ValueError) as info:
        advantage_variance([0.5, -0.5], [True, False], exclude_degenerate=True)
    assert str(info.value) == "group_id_B must be integers; got [ True] (bool)"


def test_pass_at_k_accepts_integral_floats_of_any_width():
    # 4.0 and 5.0 are counts; float32 (e.g. from a torch tensor) as well as float64
    assert pass_at_k(4.0, 1.0, 1.0) == pytest.approx(0.25)
    assert pass_at_k(5.0, 1, 1) == pytest.approx(0.2)
    assert pass_at_k(np.float32(5.0), 1, 1) == pytest.approx(0.2)
    np.testing.assert_allclose(pass_at_k(torch.tensor([4.0, 5.0]), 1, 1), [0.25, 0.2])


@pytest.mark.parametrize(
    ("n", "message"),
    [
        ([4.5, 5.5], "n must be integers; got [4.5] (float64)"),  # the first value is shown
        ("4", "n must be integers; got ['4'] (<U1)"),
        ([[4], [4, 5]], "n must be array-like; got list"),
    ],
)
def test_pass_at_k_non_integer_counts_message(n, message):
    with pytest.raises(ValueError) as info:
        pass_at_k(n, 1, 1)
    assert str(info.value) == message


# ------------------------------------------------ issue 19: within-batch variance, applied ρ
def test_variance_ratio_by_hand():
    from spo.algo import residual_variance, variance_ratio

    r = np.array([1.0, 0.0, 1.0, 0.0])
    b = np.array([0.75, 0.25, 0.5, 0.5])
    # Var(r) = 0.25. r − b = [0.25, −0.25, 0.5, −0.5], mean 0, Var = (2·0.0625 + 2·0.25)/4
    assert residual_variance(r, b) == pytest.approx(0.15625)
    assert variance_ratio(r, b) == pytest.approx(0.15625 / 0.25)
    # a constant baseline leaves the variance as it is; b = r removes all of it
    assert variance_ratio(r, np.full(4, 0.3)) == pytest.approx(1.0)
    assert variance_ratio(r, r) == 0.0
    # a baseline anti-correlated with r adds variance: r − (1 − r) = [1, −1, 1, −1], Var 1
    assert variance_ratio(r, 1 - r) == pytest.approx(4.0)
    # torch in, fractional rewards: r = [0.5, 0.25], b = [0, 0.5]: r − b = [0.5, −0.25]
    # Var(r) = 0.015625, Var(r − b) = 0.140625 -> 9
    assert variance_ratio(torch.tensor([0.5, 0.25]), torch.tensor([0.0, 0.5])) == pytest.approx(9)


def test_variance_ratio_is_nan_without_reward_variance_and_checks_input():
    from spo.algo import residual_variance, variance_ratio

    assert np.isnan(variance_ratio([1.0, 1.0, 1.0], [0.2, 0.5, 0.9]))
    assert np.isnan(variance_ratio([], []))
    assert np.isnan(residual_variance([], []))
    assert residual_variance([1.0, 1.0], [0.2, 0.6]) == pytest.approx(0.04)
    # a learned value may leave [0, 1]: any finite baseline is accepted.
    # r − b = [−0.2, 0.1]: deviations ±0.15, Var = 0.0225; Var(r) = 0.25
    assert variance_ratio([1.0, 0.0], [1.2, -0.1]) == pytest.approx(0.0225 / 0.25)
    with pytest.raises(ValueError, match="baseline_B must have shape"):
        variance_ratio([1.0, 0.0], [0.5])
    with pytest.raises(ValueError, match="reward_B must be in"):
        variance_ratio([1.5, 0.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="baseline_B must be in"):
        variance_ratio([1.0, 0.0], [np.nan, 0.5])


def test_oracle_variance_ratio_by_hand():
    from spo.algo import oracle_variance_ratio

    # Two prompts with pass rates 0.9 and 0.1, two samples each: r = [1, 1, 0, 0].
    # Var(r) = 0.25; r − p = [0.1, 0.1, −0.1, −0.1], Var = 0.01 -> 0.04
    r = np.array([1.0, 1.0, 0.0, 0.0])
    assert oracle_variance_ratio(r, [0.9, 0.9, 0.1, 0.1]) == pytest.approx(0.04)
    # homogeneous pass rates: the perfect per-prompt baseline is a constant, ratio 1
    assert oracle_variance_ratio(r, np.full(4, 0.5)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pass_rate_B must be in"):
        oracle_variance_ratio(r, [1.2, 0.9, 0.1, 0.1])


def test_applied_rho_stats_by_hand():
    from spo.algo import applied_rho_stats

    rho = np.array([0.875, 0.9, 0.96, np.float32(0.96), 0.875, 0.93])
    s = applied_rho_stats(rho, rho_min=0.875, rho_max=0.96)
    assert s["mean"] == pytest.approx((0.875 * 2 + 0.9 + 0.96 * 2 + 0.93) / 6, abs=1e-7)
    assert s["min"] == 0.875
    assert s["max"] == pytest.approx(0.96, abs=1e-7)
    assert s["at_min"] == pytest.approx(2 / 6)
    assert s["at_max"] == pytest.approx(2 / 6)  # the float32 0.96 counts as the bound
    inner = applied_rho_stats([0.9, 0.93], rho_min=0.875, rho_max=0.96)
    assert inner["at_min"] == inner["at_max"] == 0.0
    empty = applied_rho_stats([], rho_min=0.875, rho_max=0.96)
    assert sorted(empty) == ["at_max", "at_min", "max", "mean", "min"]
    assert all(np.isnan(v) for v in empty.values())
    with pytest.raises(ValueError, match="rho_B must be in"):
        applied_rho_stats([1.5], rho_min=0.875, rho_max=0.96)
