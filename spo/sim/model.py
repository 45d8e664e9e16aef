"""Agentic throughput simulation: how long one training batch waits for its rollouts.

Reproduces and generalises the agentic-training simulation of Xu & Ding, "Single-stream
Policy Optimization" (arXiv 2509.13232): with tool calls, sample generation times vary
widely, and a group-based method (GRPO) can only use a prompt's samples once the
slowest of its G samples is done, while a group-free method (SPO) can use every sample
the moment it finishes.

Model: one rollout phase of a synchronous (on-policy) training step. `n = oversample *
batch` samples are launched at t = 0, one per rollout slot, with independent generation
times `time_TN` (T trials x N samples, seconds). Samples `[j*G, (j+1)*G)` form group j.

- group-based: the batch is ready when `batch / G` whole groups are done, i.e. at the
  (batch/G)-th smallest group completion time, where a group completes at the max of its
  G sample times. Those groups are kept.
- group-free: the batch is ready when `batch` samples are done, i.e. at the batch-th
  smallest sample time. Those samples are kept.

Either way, what is not kept when the batch is ready is aborted: after the update it
would be off-policy. With the same sample times the group-free batch is never later:
the kept groups hold `batch` finished samples, so the batch-th fastest sample is no
later than the group barrier.

Slot-time accounting (per trial, `ready` = time-to-batch, N slots, budget N * ready):
  useful    = sum of generation times of the kept samples
  idle      = sum over slots of (ready - min(t, ready))  -- slot done, waiting at the barrier
  discarded = sum over the other samples of min(t, ready) -- compute on aborted samples
useful + idle + discarded = N * ready; each is reported as a fraction of it, and the
GPU-idle (wasted) fraction of a policy is `idle + discarded = 1 - useful`.

The paper states only the group completion times (130, 133, 486, 495, 519, 553 s) and
the group-free result (112 s, the 24th-fastest of 48 sample times), not the per-sample
times nor a distribution. `paper_example` computes 486 s from the stated group times and
reports 112 s as stated; `paper_sample_times_N` is our own set of 48 sample times,
consistent with both, that checks the policies end to end. Latency distributions for
the random trials are ours (`LATENCIES`); the default lognormal is matched to the
example's quantiles, not taken from the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction

import numpy as np


class SimError(ValueError):
    """Bad simulation input; the message is one line for the user."""


# --------------------------------------------------------------------------- latencies


@dataclass(frozen=True)
class Latency:
    """A distribution of per-sample generation times (seconds).

    `dist` names an entry of LATENCIES; `median` is the median of the base time for every
    distribution. A fraction `straggler_frac` of samples (any distribution) is slowed down
    `straggler_mult` times. Defaults: lognormal with median 112 s and sigma 1.06 puts the
    median sample at 112 s and the median maximum of 8 samples at ~486 s, as in the
    paper's example (our calibration; the paper gives no distribution).
    """

    dist: str = "lognormal"
    median: float = 112.0
    sigma: float = 1.06  # lognormal shape: lognormal, and the base time of `tool`
    alpha: float = 1.5  # Pareto tail index: pareto, and each call of `tool`
    tool_calls: float = 4.0  # mean tool calls per sample (Poisson), `tool` only
    tool_median: float = 10.0  # median latency of one tool call, `tool` only
    straggler_frac: float = 0.0
    straggler_mult: float = 10.0

    def __post_init__(self) -> None:
        if self.dist not in LATENCIES:
            raise SimError(f"unknown latency dist {self.dist!r}; valid: {', '.join(LATENCIES)}")
        for name in ("median", "sigma", "alpha", "tool_median", "straggler_mult"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SimError(f"{name} must be a positive number, got {value}")
        if not (math.isfinite(self.tool_calls) and self.tool_calls >= 0):
            raise SimError(f"tool_calls must be >= 0, got {self.tool_calls}")
        if not 0 <= self.straggler_frac <= 1:
            raise SimError(f"straggler_frac must be in [0, 1], got {self.straggler_frac}")

    def describe(self) -> str:
        base = {
            "lognormal": f"lognormal (median {self.median:g} s, sigma {self.sigma:g})",
            "exponential": f"exponential (median {self.median:g} s)",
            "pareto": f"Pareto (median {self.median:g} s, alpha {self.alpha:g})",
            "tool": (
                f"tool: lognormal generation (median {self.median:g} s, sigma "
                f"{self.sigma:g}) + Poisson({self.tool_calls:g}) tool calls, each "
                f"Pareto (median {self.tool_median:g} s, alpha {self.alpha:g})"
            ),
        }[self.dist]
        if self.straggler_frac > 0:
            return f"{base}; {self.straggler_frac:.0%} stragglers x{self.straggler_mult:g}"
        return f"{base}; no stragglers"


def _lognormal(lat: Latency, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return lat.median * np.exp(lat.sigma * rng.standard_normal(shape))


def _exponential(lat: Latency, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.exponential(lat.median / math.log(2), shape)


def _pareto_median(
    median: float, alpha: float, rng: np.random.Generator, shape: tuple[int, ...] | int
) -> np.ndarray:
    # Classical Pareto(x_m, alpha) has median x_m * 2**(1/alpha); numpy draws Lomax = X/x_m - 1.
    x_m = median / 2 ** (1 / alpha)
    return x_m * (1 + rng.pareto(alpha, shape))


def _pareto(lat: Latency, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return _pareto_median(lat.median, lat.alpha, rng, shape)


def _tool(lat: Latency, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    time = _lognormal(lat, rng, shape)
    calls = rng.poisson(lat.tool_calls, shape)
    call_time = _pareto_median(lat.tool_median, lat.alpha, rng, int(calls.sum()))
    sample_of_call = np.repeat(np.arange(calls.size), calls.ravel())
    return time + np.bincount(sample_of_call, call_time, minlength=calls.size).reshape(shape)


LATENCIES: dict[str, Callable[[Latency, np.random.Generator, tuple[int, ...]], np.ndarray]] = {
    "lognormal": _lognormal,
    "exponential": _exponential,
    "pareto": _pareto,
    "tool": _tool,
}


def sample_times_TN(
    lat: Latency, n_trials: int, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Generation times, shape (n_trials, n_samples), seconds: base draw, then stragglers.

    The straggler uniforms are drawn after the base times, so the same seed with a
    different `straggler_frac` gives the same base times (common random numbers).
    """
    shape = (n_trials, n_samples)
    time_TN = LATENCIES[lat.dist](lat, rng, shape)
    straggler_TN = rng.random(shape) < lat.straggler_frac
    return np.where(straggler_TN, time_TN * lat.straggler_mult, time_TN)


# ---------------------------------------------------------------------------- policies


def group_based_T(
    time_TN: np.ndarray, group_size: int, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the batch/G groups that finish first; a group finishes with its slowest sample.

    time_TN: (T, N), N a multiple of G; samples [j*G, (j+1)*G) are group j.
    Returns ready_T (T,) = (batch/G)-th smallest group max, and kept_TN (T, N) bool.
    """
    n_trials, n = time_TN.shape
    done_TJ = time_TN.reshape(n_trials, n // group_size, group_size).max(axis=2)
    order_TJ = np.argsort(done_TJ, axis=1, kind="stable")
    keep = batch // group_size
    ready_T = np.take_along_axis(done_TJ, order_TJ[:, keep - 1 : keep], axis=1)[:, 0]
    kept_TJ = np.zeros_like(done_TJ, dtype=bool)
    np.put_along_axis(kept_TJ, order_TJ[:, :keep], True, axis=1)
    return ready_T, np.repeat(kept_TJ, group_size, axis=1)


def group_free_T(time_TN: np.ndarray, group_size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first `batch` samples to finish, whatever prompt they belong to.

    time_TN: (T, N). Returns ready_T (T,) = batch-th smallest time, kept_TN (T, N) bool.
    `group_size` is unused (same signature as every policy).
    """
    order_TN = np.argsort(time_TN, axis=1, kind="stable")
    ready_T = np.take_along_axis(time_TN, order_TN[:, batch - 1 : batch], axis=1)[:, 0]
    kept_TN = np.zeros_like(time_TN, dtype=bool)
    np.put_along_axis(kept_TN, order_TN[:, :batch], True, axis=1)
    return ready_T, kept_TN


POLICIES: dict[str, Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]] = {
    "group-based": group_based_T,
    "group-free": group_free_T,
}


def slot_fractions_T(
    time_TN: np.ndarray, kept_TN: np.ndarray, ready_T: np.ndarray
) -> dict[str, np.ndarray]:
    """Split each trial's slot-time budget N * ready into useful / idle / discarded (T,).

    useful = sum of kept times; idle = sum (ready - min(t, ready)); discarded = sum of
    min(t, ready) over samples not kept. The three fractions sum to 1.
    """
    budget_T = time_TN.shape[1] * ready_T
    busy_TN = np.minimum(time_TN, ready_T[:, None])
    useful_T = np.where(kept_TN, time_TN, 0.0).sum(axis=1)
    discarded_T = np.where(kept_TN, 0.0, busy_TN).sum(axis=1)
    idle_T = (ready_T[:, None] - busy_TN).sum(axis=1)
    return {
        "useful": useful_T / budget_T,
        "idle": idle_T / budget_T,
        "discarded": discarded_T / budget_T,
    }


# ---------------------------------------------------------------- confidence intervals

_BOOT_RESAMPLES = 1000


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def _boot_indices(n: int, rng: np.random.Generator):
    chunk = max(1, 4_000_000 // n)  # bounds memory at ~32 MB of indices per chunk
    for start in range(0, _BOOT_RESAMPLES, chunk):
        yield rng.integers(0, n, (min(chunk, _BOOT_RESAMPLES - start), n))


def mean_ci(
    x_T: np.ndarray,
    level: float = 0.95,
    method: str = "normal",
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """CI of the mean of x_T (T,): normal approximation or percentile bootstrap."""
    if method == "normal":
        half = _z(level) * x_T.std(ddof=1) / math.sqrt(len(x_T)) if len(x_T) > 1 else math.inf
        return float(x_T.mean() - half), float(x_T.mean() + half)
    rng = rng if rng is not None else np.random.default_rng(0)
    means = np.concatenate([x_T[idx].mean(axis=1) for idx in _boot_indices(len(x_T), rng)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def ratio_ci(
    a_T: np.ndarray,
    b_T: np.ndarray,
    level: float = 0.95,
    method: str = "normal",
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """CI of mean(a_T) / mean(b_T) for paired trials: delta method or paired bootstrap."""
    n = len(a_T)
    if method == "normal":
        if n < 2:
            return -math.inf, math.inf
        ma, mb = a_T.mean(), b_T.mean()
        cov = np.cov(a_T, b_T)
        r = ma / mb
        var = r**2 * (cov[0, 0] / ma**2 + cov[1, 1] / mb**2 - 2 * cov[0, 1] / (ma * mb)) / n
        half = _z(level) * math.sqrt(max(var, 0.0))
        return float(r - half), float(r + half)
    rng = rng if rng is not None else np.random.default_rng(0)
    ratios = np.concatenate(
        [a_T[idx].mean(axis=1) / b_T[idx].mean(axis=1) for idx in _boot_indices(n, rng)]
    )
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- simulation

MAX_DRAWS = 100_000_000  # trials x launched samples; ~0.8 GB per float64 array


@dataclass(frozen=True)
class SimConfig:
    """One simulated setting. `oversample * batch` samples are launched per step."""

    latency: Latency = field(default_factory=Latency)
    group_size: int = 8
    batch: int = 24
    oversample: float = 2.0
    trials: int = 10_000
    seed: int = 0
    ci: str = "normal"
    ci_level: float = 0.95

    def __post_init__(self) -> None:
        for name in ("group_size", "batch", "trials"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise SimError(f"{name} must be a positive integer, got {value!r}")
        if self.batch % self.group_size:
            raise SimError(
                f"batch ({self.batch}) must be a multiple of group_size "
                f"({self.group_size}): the group-based policy keeps whole groups"
            )
        if not (math.isfinite(self.oversample) and self.oversample >= 1):
            raise SimError(
                f"oversample must be >= 1, got {self.oversample}: fewer than "
                f"batch ({self.batch}) launched samples can never fill the batch"
            )
        n = self.oversample * self.batch
        if abs(n - round(n)) > 1e-9 or round(n) % self.group_size:
            near = sorted(
                {
                    max(self.batch // self.group_size, math.floor(n / self.group_size)),
                    math.ceil(n / self.group_size),
                }
            )
            options = " or ".join(
                f"{Fraction(k * self.group_size, self.batch)} ({k} groups)" for k in near
            )
            raise SimError(
                f"oversample {self.oversample:g} x batch {self.batch} = {n:g} launched samples "
                f"is not a whole number of groups of {self.group_size}; try --oversample "
                f"{options}"
            )
        if self.trials * self.launched > MAX_DRAWS:
            raise SimError(
                f"trials x launched samples = {self.trials * self.launched:,} "
                f"exceeds {MAX_DRAWS:,}; use fewer trials"
            )
        if self.ci not in ("normal", "bootstrap"):
            raise SimError(f"unknown ci method {self.ci!r}; valid: normal, bootstrap")
        if not 0 < self.ci_level < 1:
            raise SimError(f"ci_level must be in (0, 1), got {self.ci_level}")

    @property
    def launched(self) -> int:
        return round(self.oversample * self.batch)


@dataclass
class PolicyStats:
    """Summary of one policy over the trials; times in seconds, fractions of slot-time."""

    time_mean: float
    time_ci: tuple[float, float]
    time_median: float
    time_p90: float
    samples_per_s: float  # batch / mean time-to-batch
    useful: float
    idle: float
    discarded: float

    @property
    def wasted(self) -> float:
        return self.idle + self.discarded


@dataclass
class SimResult:
    config: SimConfig
    policies: dict[str, PolicyStats]
    speedup: float  # mean group-based time / mean group-free time = throughput ratio
    speedup_ci: tuple[float, float]
    speedup_median_per_trial: float
    ready_PT: dict[str, np.ndarray]  # time-to-batch per trial, for plots; not in to_dict()

    def to_dict(self) -> dict:
        cfg = asdict(self.config)
        cfg["launched"] = self.config.launched
        return {
            "config": cfg,
            "latency": self.config.latency.describe(),
            "policies": {
                name: {**asdict(s), "wasted": s.wasted} for name, s in self.policies.items()
            },
            "speedup": self.speedup,
            "speedup_ci": list(self.speedup_ci),
            "speedup_median_per_trial": self.speedup_median_per_trial,
        }


def simulate(config: SimConfig) -> SimResult:
    """Run config.trials independent rollout phases, vectorised, for both policies."""
    rng = np.random.default_rng(config.seed)
    time_TN = sample_times_TN(config.latency, config.trials, config.launched, rng)
    ci_rng = np.random.default_rng([config.seed, 1])
    policies, ready_PT = {}, {}
    for name, policy in POLICIES.items():
        ready_T, kept_TN = policy(time_TN, config.group_size, config.batch)
        frac = slot_fractions_T(time_TN, kept_TN, ready_T)
        ready_PT[name] = ready_T
        policies[name] = PolicyStats(
            time_mean=float(ready_T.mean()),
            time_ci=mean_ci(ready_T, config.ci_level, config.ci, ci_rng),
            time_median=float(np.median(ready_T)),
            time_p90=float(np.quantile(ready_T, 0.9)),
            samples_per_s=config.batch / float(ready_T.mean()),
            **{k: float(v.mean()) for k, v in frac.items()},
        )
    group_T, free_T = ready_PT["group-based"], ready_PT["group-free"]
    return SimResult(
        config=config,
        policies=policies,
        speedup=float(group_T.mean() / free_T.mean()),
        speedup_ci=ratio_ci(group_T, free_T, config.ci_level, config.ci, ci_rng),
        speedup_median_per_trial=float(np.median(group_T / free_T)),
        ready_PT=ready_PT,
    )


def sweep_straggler_frac(config: SimConfig, fracs: list[float]) -> list[SimResult]:
    """simulate() at each straggler fraction, same seed (so the base times are shared)."""
    return [
        simulate(replace(config, latency=replace(config.latency, straggler_frac=f))) for f in fracs
    ]


# ------------------------------------------------------------------ the paper's example


# ----------------------------------------------------------------------------- output


# --------------------------------------------------------------------------------- CLI
