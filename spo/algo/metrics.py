"""Evaluation and diagnostic metrics the paper reports (spo-spec.md §8).

    avg@k   mean correctness of the first k samples
    pass@k  1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i)       (Chen et al. 2021)
    maj@k   correctness of the most frequent extracted answer among the first k samples
    degenerate fraction  share of samples in groups whose rewards are all equal
    small-advantage share  share of samples with |A| <= threshold (SPO: 1e-4, 0.02)
    advantage variance   population variance (ddof=0) of the unnormalised advantages
    variance ratio       Var(r − b)/Var(r) within one batch, b the baseline the step used
                         (ddof=0 both); NaN when Var(r) = 0 (nothing to reduce)
    oracle ratio         the same with b = p(x), fresh per-prompt pass rates: the share of
                         reward variance a perfect per-prompt baseline would leave
    applied ρ            mean, min, max and share at ρ_min / ρ_max of the ρ values a step
                         fed to the tracker

pass@k uses the product form, not binomials: no overflow, no cancellation between huge
numbers, relative error ~n·1e-16 (exact to 1e-12 for n <= 1000 against rational
arithmetic). maj@k uses the first k samples (not an expectation over k-subsets): simple,
deterministic and what "sample k and vote" does; ties go to the answer that appears
first; failed extractions (None) never win; if all k are None, maj@k = 0.

A group of one sample counts as degenerate (its group advantage is 0 by definition), so
for SPO batches (one sample per prompt) read `small_advantage_fraction` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spo.algo._validate import check_in_range, check_int, check_scalar, to_numpy

_BOUND_ATOL = 1e-6  # ρ "at a bound": clip output, possibly stored as float32 (0.96 is inexact)


def _int_array(x, name: str) -> np.ndarray:
    arr = to_numpy(x, name)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer)
        or (np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0))
    ):
        raise ValueError(f"{name} must be integers; got {arr.reshape(-1)[:1]} ({arr.dtype})")
    return arr.astype(np.int64)


def _pass_at_k_one(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k(n, c, k):
    """pass@k = 1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1}^{n}(1 − k/i), unbiased.

    n: samples per problem, c: correct among them, k: budget; scalars or arrays that
    broadcast (e.g. n scalar, c (E,)). Needs 0 <= c <= n and 1 <= k <= n.
    Returns a float for scalar inputs, else a float64 array of the broadcast shape.
    """
    n_a, c_a, k_a = (_int_array(x, name) for x, name in ((n, "n"), (c, "c"), (k, "k")))
    n_a, c_a, k_a = np.broadcast_arrays(n_a, c_a, k_a)
    for bad, msg in (
        (c_a < 0, "c must be >= 0"),
        (c_a > n_a, "c must be <= n"),
        (k_a < 1, "k must be >= 1"),
        (k_a > n_a, "k must be <= n (cannot pick more samples than were drawn)"),
    ):
        if np.any(bad):
            i = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
            raise ValueError(f"{msg}; got n={n_a[i]}, c={c_a[i]}, k={k_a[i]}")
    triples = np.stack([n_a.ravel(), c_a.ravel(), k_a.ravel()], axis=1)
    uniq, inv = np.unique(triples, axis=0, return_inverse=True)
    vals = np.array([_pass_at_k_one(int(a), int(b), int(d)) for a, b, d in uniq])
    out = vals[np.ravel(inv)].reshape(n_a.shape)
    return float(out) if out.ndim == 0 else out


def avg_at_k(correct, k: int | None = None) -> float:
    """avg@k = mean over problems and the first k samples of correctness.

    correct: (K,) or (E, K) in [0, 1] (bool or fractional); k defaults to all K.
    """
    arr = check_in_range(correct, "correct")
    if arr.ndim not in (1, 2) or arr.shape[-1] == 0:
        raise ValueError(f"correct must be (K,) or (E, K) with K >= 1; got shape {arr.shape}")
    K = arr.shape[-1]
    k = K if k is None else check_int(k, "k", lo=1, hi=K)
    return float(arr[..., :k].mean())


def maj_at_k(answers: Sequence, correct, k: int) -> float:
    """maj@k = correct[first index of the modal non-None answer among answers[:k]].

    answers: (n,) hashable extracted answers, None = extraction failed (never wins);
    correct: (n,) bool/0-1 correctness of each sample; 1 <= k <= n.
    Ties: the answer whose first occurrence comes earliest wins. Returns 0.0 or 1.0
    (or the fractional correctness of that sample).
    """
    answers = list(answers)
    corr = check_in_range(correct, "correct")
    if corr.ndim != 1 or corr.shape[0] != len(answers):
        raise ValueError(
            f"correct must have shape ({len(answers)},) like answers; got {corr.shape}"
        )
    if not answers:
        raise ValueError("answers must not be empty")
    k = check_int(k, "k", lo=1, hi=len(answers))
    counts: dict = {}
    first: dict = {}
    for i, a in enumerate(answers[:k]):
        if a is None:
            continue
        try:
            counts[a] = counts.get(a, 0) + 1
        except TypeError as e:
            raise ValueError(f"answers must be hashable; got {type(a).__name__} at {i}") from e
        first.setdefault(a, i)
    if not counts:
        return 0.0
    best = max(counts, key=lambda a: (counts[a], -first[a]))
    return float(corr[first[best]])


def _group_flat(reward: np.ndarray, group: np.ndarray) -> np.ndarray:
    """flat_B[i] = all rewards in sample i's group are equal."""
    _, inv = np.unique(group, return_inverse=True)
    inv = np.ravel(inv)
    G = int(inv.max()) + 1
    lo = np.full(G, np.inf)
    hi = np.full(G, -np.inf)
    np.minimum.at(lo, inv, reward)
    np.maximum.at(hi, inv, reward)
    return (lo == hi)[inv]


def _group_ids(group_id_B, B: int) -> np.ndarray:
    g = _int_array(group_id_B, "group_id_B")
    if g.shape != (B,):
        raise ValueError(f"group_id_B must have shape ({B},); got {g.shape}")
    return g


def degenerate_fraction(reward_B, group_id_B) -> float:
    """Share of samples whose group has all-equal rewards (zero group advantage).

    reward_B: (B,) in [0, 1]; group_id_B: (B,) int. Groups of one count as degenerate.
    Returns 0.0 for an empty batch.
    """
    r = check_in_range(reward_B, "reward_B")
    if r.ndim != 1:
        raise ValueError(f"reward_B must be 1-D (B,); got shape {r.shape}")
    g = _group_ids(group_id_B, r.shape[0])
    if r.size == 0:
        return 0.0
    return float(_group_flat(r, g).mean())


def small_advantage_fraction(adv_B, threshold: float) -> float:
    """Share of samples with |A| <= threshold; adv_B: (B,) finite. 0.0 for an empty batch."""
    threshold = check_scalar(threshold, "threshold", lo=0.0)
    a = check_in_range(adv_B, "adv_B", lo=-np.inf, hi=np.inf)
    if a.size == 0:
        return 0.0
    return float(np.mean(np.abs(a) <= threshold))


def advantage_variance(
    adv_B, group_id_B=None, *, exclude_degenerate: bool = False, reward_B=None
) -> float:
    """Var(A) = mean((A − mean A)²) over the batch (ddof=0) of unnormalised advantages.

    adv_B: (B,) finite. exclude_degenerate=True drops samples in degenerate groups
    (needs group_id_B (B,)): groups whose rewards are all equal if reward_B (B,) is
    given, else groups whose advantages are all equal (the same for group baselines).
    Returns 0.0 when no sample is left.
    """
    a = check_in_range(adv_B, "adv_B", lo=-np.inf, hi=np.inf)
    if a.ndim != 1:
        raise ValueError(f"adv_B must be 1-D (B,); got shape {a.shape}")
    if exclude_degenerate:
        if group_id_B is None:
            raise ValueError("exclude_degenerate=True needs group_id_B; got None")
        g = _group_ids(group_id_B, a.shape[0])
        key = a
        if reward_B is not None:
            key = check_in_range(reward_B, "reward_B", shape=a.shape)
        if a.size:
            a = a[~_group_flat(key, g)]
    if a.size == 0:
        return 0.0
    return float(np.var(a))


def _reward_and_baseline(
    reward_B, baseline_B, baseline_name: str, lo: float = -np.inf, hi: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    r = check_in_range(reward_B, "reward_B")
    if r.ndim != 1:
        raise ValueError(f"reward_B must be 1-D (B,); got shape {r.shape}")
    return r, check_in_range(baseline_B, baseline_name, lo=lo, hi=hi, shape=r.shape)


def residual_variance(reward_B, baseline_B) -> float:
    """Var(r − b) = mean((r − b − mean(r − b))²) (ddof=0); NaN for an empty batch.

    reward_B: (B,) in [0, 1]; baseline_B: (B,) finite, the baseline the step subtracted.
    """
    r, b = _reward_and_baseline(reward_B, baseline_B, "baseline_B")
    return float(np.var(r - b)) if r.size else float("nan")


def variance_ratio(reward_B, baseline_B) -> float:
    """Var(r − b)/Var(r) within the batch (ddof=0); NaN when Var(r) = 0 or B = 0.

    < 1: the baseline removes variance; 1: a constant baseline (or none); > 1: it adds noise.
    reward_B: (B,) in [0, 1]; baseline_B: (B,) finite.
    """
    r, b = _reward_and_baseline(reward_B, baseline_B, "baseline_B")
    var_r = float(np.var(r)) if r.size else 0.0
    return float(np.var(r - b)) / var_r if var_r > 0 else float("nan")


def oracle_variance_ratio(reward_B, pass_rate_B) -> float:
    """Var(r − p(x))/Var(r): the variance ratio of a perfect per-prompt baseline.

    reward_B: (B,) in [0, 1]; pass_rate_B: (B,) in [0, 1] the fresh empirical success rate
    of each sample's prompt under the policy that sampled it. NaN when Var(r) = 0.
    """
    r, p = _reward_and_baseline(reward_B, pass_rate_B, "pass_rate_B", 0.0, 1.0)
    return variance_ratio(r, p)


def applied_rho_stats(rho_B, *, rho_min: float, rho_max: float) -> dict[str, float]:
    """{"mean", "min", "max", "at_min", "at_max"} of the ρ values applied to a batch.

    rho_B: (B,) in (0, 1]; at_min / at_max = share within 1e-6 of rho_min / rho_max.
    NaN everywhere for an empty batch.
    """
    rho = check_in_range(rho_B, "rho_B", lo=0.0, hi=1.0).reshape(-1).astype(np.float64)
    if rho.size == 0:
        return dict.fromkeys(("mean", "min", "max", "at_min", "at_max"), float("nan"))
    return {
        "mean": float(rho.mean()),
        "min": float(rho.min()),
        "max": float(rho.max()),
        "at_min": float(np.mean(np.abs(rho - rho_min) <= _BOUND_ATOL)),
        "at_max": float(np.mean(np.abs(rho - rho_max) <= _BOUND_ATOL)),
    }
