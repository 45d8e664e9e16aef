"""Small statistics shared by the study modules (no scipy at run time)."""

from __future__ import annotations

import math

import numpy as np


def finite(x) -> bool:
    """A real int/float that is not NaN/inf (bools excluded)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def t_quantile(q: float, df: float) -> float:
    """Quantile q in (0, 1) of Student's t with df > 0 degrees of freedom (df = inf: normal).

    Bisection on the CDF, 1/2 + ∫_0^x f(t) dt by Simpson's rule on 4,000 intervals of the
    density f(t) = Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · (1 + t²/ν)^(−(ν+1)/2): accurate to ~1e-9
    for the quantiles used here (no scipy at run time).
    """
    from statistics import NormalDist

    if not 0 < q < 1 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    if math.isinf(df):
        return NormalDist().inv_cdf(q)
    if q < 0.5:
        return -t_quantile(1 - q, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def mass(x: float) -> float:  # P(0 < T < x)
        t = np.linspace(0.0, x, 4001)
        f = c * (1 + t * t / df) ** (-(df + 1) / 2)
        return float((f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()) * x / 12000)

    target, lo, hi = q - 0.5, 0.0, 1.0
    while mass(hi) < target:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < target else (lo, mid)
    return (lo + hi) / 2


def t_interval(values, level: float = 0.95) -> dict:
    """mean, sd (ddof 1), n and the Student-t interval mean ± t((1+level)/2, n−1)·sd/√n of
    the finite values; lo/hi None below two values."""
    v = np.asarray([x for x in values if finite(x)], dtype=np.float64)
    out = {"mean": None, "std": None, "lo": None, "hi": None, "n": int(v.size), "level": level}
    if v.size == 0:
        return out
    out["mean"] = float(v.mean())
    if v.size > 1:
        sd = float(v.std(ddof=1))
        half = t_quantile((1 + level) / 2, v.size - 1) * sd / math.sqrt(v.size)
        out.update(std=sd, lo=out["mean"] - half, hi=out["mean"] + half)
    return out
