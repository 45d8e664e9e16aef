"""How much of the reward variance a per-prompt baseline can remove: the oracle share.

With P prompts and K fresh samples each, reward_PK in [0, 1], the reward of one sample of
a random prompt decomposes (law of total variance, a one-way random-effects model):

    Var(r) = Var_x(p) + E_x[σ²(x)],      p(x) = E[r | x],  σ²(x) = Var(r | x)
                                           (binary r: σ²(x) = p(x)(1 − p(x)))

A perfect per-prompt baseline b(x) = p(x) leaves Var(r − p(x)) = E_x[σ²(x)], so the share
of Var(r) it removes is the **oracle share** Var_x(p)/Var(r) (the intraclass correlation):
an upper bound on the variance reduction of any per-prompt baseline (SPO's tracker
included), issue 19. Estimators (balanced ANOVA, unbiased for both components):

    σ̂²  = mean_x s²_x                         s²_x = sample variance of row x (ddof 1)
    τ̂²  = Var_x(p̂) (ddof 1) − σ̂²/K           p̂_x = row mean; Var(p̂) = τ² + σ²/K
    share = τ̂² / (τ̂² + σ̂²)                    (may be < 0 when the true share is ~0)

The plug-in Var_x(p̂)/Var_pooled(r) is also returned: it is biased up by about 1/K (a
share of 1/K even when every prompt has the same p), which is why it is not the estimate.
Intervals: percentile bootstrap over prompts (rows resampled with their K samples).

A baseline estimated from m fresh samples of the same prompt, b = mean of m other samples,
leaves E[(r − b)²] = σ²(x)(1 + 1/m) for independent samples, so the share it removes is
1 − (1 − share)(1 + 1/m): a 5-sample estimate keeps 120% of the oracle residual.
`few_sample_baseline_ratio` measures this on the data without randomness: for each sample
r_xk and each m, the exact mean over all m-subsets b of the other K − 1 samples of
(r_xk − b)², i.e. (r_xk − ō)² + S²/m · (1 − m/(K − 1)) (ō, S²: mean and ddof-1 variance
of the other samples; the finite-population correction of sampling without replacement),
divided by the pooled Var(r).
"""

from __future__ import annotations

import numpy as np


def _check(reward_PK) -> np.ndarray:
    r = np.asarray(reward_PK, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 2 or r.shape[1] < 2:
        raise ValueError(
            f"need reward_PK with >= 2 prompts and >= 2 samples per prompt; got shape {r.shape}"
        )
    return r


def variance_components(reward_PK) -> dict:
    """Oracle share and its components of reward_PK (P, K); see the module docstring."""
    r = _check(reward_PK)
    P, K = r.shape
    rate_P = r.mean(1)
    within = float(r.var(1, ddof=1).mean())  # σ̂² = E_x[σ²(x)]
    between_raw = float(rate_P.var(ddof=1))  # Var_x(p̂) = τ² + σ²/K in expectation
    between = between_raw - within / K  # τ̂² = Var_x(p)
    total = between + within
    pooled = float(r.var())  # all P·K samples, ddof 0
    return {
        "n_prompts": P,
        "samples_per_prompt": K,
        "reward_mean": float(r.mean()),
        "var_reward": total,
        "var_reward_pooled": pooled,
        "var_between": between,
        "var_within": within,
        "oracle_share": between / total if total > 0 else float("nan"),
        "oracle_share_plugin": float(rate_P.var()) / pooled if pooled > 0 else float("nan"),
    }


def few_sample_baseline_ratio(reward_PK, m: int) -> float:
    """E[(r − b_m)²] / Var(r) for b_m = mean of m other samples of the same prompt.

    Exact average over every sample and every m-subset of its prompt's other K − 1
    samples (no randomness); Var(r) is the pooled variance of all samples (ddof 0).
    """
    r = _check(reward_PK)
    K = r.shape[1]
    if not 1 <= m <= K - 1:
        raise ValueError(f"m must be in [1, K − 1] = [1, {K - 1}], got {m}")
    pooled = float(r.var())
    if pooled == 0:
        return float("nan")
    n = K - 1
    s1 = r.sum(1, keepdims=True)
    s2 = (r**2).sum(1, keepdims=True)
    other_mean = (s1 - r) / n  # (P, K): mean of the other K − 1 samples
    other_var = ((s2 - r**2) - n * other_mean**2) / (n - 1) if n > 1 else np.zeros_like(r)
    msq = (r - other_mean) ** 2 + other_var / m * (1 - m / n)
    return float(msq.mean()) / pooled


def bootstrap_interval(
    reward_PK, stat, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of stat(reward_PK) over prompts (rows resampled)."""
    r = _check(reward_PK)
    rng = np.random.default_rng(seed)
    P = r.shape[0]
    values = np.array([stat(r[rng.integers(0, P, P)]) for _ in range(n_boot)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def oracle_report(
    reward_PK, *, ms=(1, 2, 4, 8), n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """variance_components + bootstrap intervals + few-sample baseline ratios (m < K)."""
    r = _check(reward_PK)
    out = variance_components(r)
    out["oracle_share_interval"] = bootstrap_interval(
        r,
        lambda x: variance_components(x)["oracle_share"],
        n_boot=n_boot,
        level=level,
        seed=seed,
    )
    out["interval_level"] = level
    out["oracle_residual_ratio"] = 1 - out["oracle_share"]  # Var(r − p(x)) / Var(r)
    out["few_sample_baseline_ratio"] = {
        str(m): few_sample_baseline_ratio(r, m) for m in ms if m <= r.shape[1] - 1
    }
    return out
