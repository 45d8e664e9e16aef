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

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

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

PAPER_GROUP_TIMES = (130.0, 133.0, 486.0, 495.0, 519.0, 553.0)  # stated, seconds
PAPER_GROUP_SIZE = 8
PAPER_BATCH = 24
PAPER_GROUP_FREE_TIME = 112.0  # stated: 24th-fastest of the 48 sample times
PAPER_SPEEDUP = 4.35  # stated


def paper_sample_times_N() -> np.ndarray:
    """Our 48 sample times (N,) consistent with everything the paper states (assumed).

    Group j (samples 8j..8j+7) has the stated completion time as its max, 4 samples on an
    even 4-s grid 20..112 s (24 in all, the slowest exactly 112 s) and 3 between 112 s and
    its max; so the 24th-fastest sample is 112 s and the 3rd-fastest group 486 s. Only the
    six maxima and 112 s come from the paper; the rest is one arbitrary choice among many.
    """
    fast_J4 = np.linspace(20.0, PAPER_GROUP_FREE_TIME, 24).reshape(4, 6).T
    groups = []
    for j, done in enumerate(PAPER_GROUP_TIMES):
        slow_3 = np.round(
            PAPER_GROUP_FREE_TIME + (done - PAPER_GROUP_FREE_TIME) * np.array([0.2, 0.45, 0.7]), 1
        )
        groups.append(np.concatenate([fast_J4[j], slow_3, [done]]))
    return np.concatenate(groups)


def paper_example() -> dict:
    """The worked example: group-based time computed from the stated group times."""
    keep = PAPER_BATCH // PAPER_GROUP_SIZE
    group_time = sorted(PAPER_GROUP_TIMES)[keep - 1]
    time_1N = paper_sample_times_N()[None, :]
    check = {
        name: float(policy(time_1N, PAPER_GROUP_SIZE, PAPER_BATCH)[0][0])
        for name, policy in POLICIES.items()
    }
    return {
        "batch": PAPER_BATCH,
        "group_size": PAPER_GROUP_SIZE,
        "groups": len(PAPER_GROUP_TIMES),
        "groups_kept": keep,
        "launched": len(PAPER_GROUP_TIMES) * PAPER_GROUP_SIZE,
        "group_times_stated": list(PAPER_GROUP_TIMES),
        "group_based_time": group_time,  # computed from the stated group times
        "group_free_time": PAPER_GROUP_FREE_TIME,  # stated
        "speedup_stated": PAPER_SPEEDUP,
        "speedup_from_rounded_times": group_time / PAPER_GROUP_FREE_TIME,
        "speedup_rounding_range": [
            (group_time - 0.5) / (PAPER_GROUP_FREE_TIME + 0.5),
            (group_time + 0.5) / (PAPER_GROUP_FREE_TIME - 0.5),
        ],
        "assumed_sample_times": paper_sample_times_N().tolist(),
        "assumed_sample_times_check": check,
    }


def format_paper(ex: dict) -> str:
    """The worked example as text, saying which numbers are stated and which computed."""
    n, b, g = ex["launched"], ex["batch"], ex["groups_kept"]
    times = ", ".join(f"{t:g}" for t in ex["group_times_stated"])
    lo, hi = ex["speedup_rounding_range"]
    group_t, free_t = ex["group_based_time"], ex["group_free_time"]
    check = ex["assumed_sample_times_check"]
    return "\n".join(
        [
            "The paper's worked example (Xu & Ding, arXiv 2509.13232, agentic-training "
            "simulation):",
            f"a batch of {b} samples, {n} launched (over-sampling {n / b:g}x)",
            "",
            f"group-based (GRPO): {ex['groups']} groups of {ex['group_size']} in parallel, keep "
            f"the {g} fastest groups",
            f"  group completion times (stated): {times} s",
            f"  batch ready at {group_t:g} s: the {_ordinal(g)}-fastest group (computed from the "
            "stated times)",
            f"group-free (SPO): {n} independent samples, keep the first {b}",
            f"  batch ready at {free_t:g} s: the {_ordinal(b)}-fastest of {n} sample times "
            "(stated; the paper",
            "  gives no per-sample times)",
            f"speed-up: {ex['speedup_stated']:.2f}x (stated); {group_t:g} / {free_t:g} = "
            f"{ex['speedup_from_rounded_times']:.2f}x from the rounded times,",
            f"  and {ex['speedup_stated']:.2f}x lies within their rounding "
            f"({group_t - 0.5:g}/{free_t + 0.5:g} = {lo:.2f}x .. "
            f"{group_t + 0.5:g}/{free_t - 0.5:g} = {hi:.2f}x)",
            "",
            f"check (assumed data): {n} sample times of our own with exactly these group maxima "
            "and",
            f"  {free_t:g} s as the {_ordinal(b)}-fastest (spo.sim.paper_sample_times_N) give "
            f"{check['group-based']:g} s and {check['group-free']:g} s",
            "  through the same policy code as the random trials.",
        ]
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# ----------------------------------------------------------------------------- output


def format_result(result: SimResult) -> str:
    """The setting, one row per policy, and the speed-up with its CI."""
    cfg = result.config
    pct = f"{cfg.ci_level:.0%}"
    lines = [
        f"latency: {cfg.latency.describe()}",
        f"batch {cfg.batch}, group size {cfg.group_size}, over-sampling {cfg.oversample:g}x "
        f"-> {cfg.launched} samples launched per step ({cfg.launched // cfg.group_size} "
        f"groups, keep {cfg.batch // cfg.group_size})",
        f"{cfg.trials} trials, seed {cfg.seed}, {pct} CI ({cfg.ci}); slot-time fractions: "
        "useful + idle + discarded = 1, wasted = idle + discarded",
        "",
        f"{'policy':<12} {'time to batch, s: mean [' + pct + ' CI]':<31} {'median':>7} "
        f"{'p90':>7} {'samples/s':>9} {'useful':>7} {'idle':>6} {'discarded':>9} "
        f"{'wasted':>6}",
    ]
    for name, s in result.policies.items():
        mean = f"{s.time_mean:.1f} [{s.time_ci[0]:.1f}, {s.time_ci[1]:.1f}]"
        lines.append(
            f"{name:<12} {mean:<31} {s.time_median:7.1f} {s.time_p90:7.1f} "
            f"{s.samples_per_s:9.3f} {s.useful:7.1%} {s.idle:6.1%} {s.discarded:9.1%} "
            f"{s.wasted:6.1%}"
        )
    lo, hi = result.speedup_ci
    lines += [
        "",
        f"speed-up (mean group-based / mean group-free time): {result.speedup:.2f}x "
        f"[{pct} CI {lo:.2f}, {hi:.2f}]; median per-trial ratio "
        f"{result.speedup_median_per_trial:.2f}x",
    ]
    return "\n".join(lines)


def format_sweep(sweep: list[SimResult]) -> str:
    """One row per straggler fraction: both mean times, speed-up, wasted slot-time."""
    lines = [
        f"{'stragglers':>10} {'group-based s':>14} {'group-free s':>13} {'speed-up':>9} "
        f"{'wasted: group-based':>20} {'group-free':>11}"
    ]
    for r in sweep:
        g, f = r.policies["group-based"], r.policies["group-free"]
        lines.append(
            f"{r.config.latency.straggler_frac:>10.1%} {g.time_mean:>14.1f} "
            f"{f.time_mean:>13.1f} {r.speedup:>8.2f}x {g.wasted:>20.1%} "
            f"{f.wasted:>11.1%}"
        )
    return "\n".join(lines)


COLORS = {"group-based": "tab:red", "group-free": "tab:blue"}


def plot_result(result: SimResult, sweep: list[SimResult], path: str | Path) -> Path:
    """Three panels: time-to-batch histograms; speed-up and wasted slot-time vs stragglers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cfg = result.config
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(16, 4.8))
    everything = np.concatenate(list(result.ready_PT.values()))
    lo, hi = np.quantile(everything, [0.001, 0.995])
    bins = np.geomspace(lo, hi, 60)
    for name, ready_T in result.ready_PT.items():
        s = result.policies[name]
        ax0.hist(
            ready_T,
            bins=bins,
            histtype="step",
            lw=1.8,
            color=COLORS[name],
            density=False,
            label=f"{name}: mean {s.time_mean:.0f} s",
        )
        ax0.axvline(s.time_mean, color=COLORS[name], ls="--", lw=1)
    ax0.set_xscale("log")
    ax0.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax0.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax0.xaxis.set_minor_formatter(NullFormatter())
    ax0.set_xlabel("time to batch (s, log scale)")
    ax0.set_ylabel(f"trials (of {cfg.trials})")
    ax0.set_title(
        f"time to a batch of {cfg.batch} at {cfg.latency.straggler_frac:.0%} "
        f"stragglers: speed-up {result.speedup:.2f}x"
    )
    ax0.legend(fontsize=9)

    frac_F = np.array([r.config.latency.straggler_frac for r in sweep])
    ci_F2 = np.array([r.speedup_ci for r in sweep])
    ax1.fill_between(
        frac_F, ci_F2[:, 0], ci_F2[:, 1], color="k", alpha=0.15, label=f"{cfg.ci_level:.0%} CI"
    )
    ax1.plot(frac_F, [r.speedup for r in sweep], "k.-", label="mean time ratio")
    ax1.axhline(1, color="gray", lw=0.8)
    ax1.set_xlabel(f"straggler fraction (stragglers x{cfg.latency.straggler_mult:g})")
    ax1.set_ylabel("speed-up of group-free (x)")
    ax1.set_title("speed-up vs straggler fraction")
    ax1.legend(fontsize=9)

    for name, color in COLORS.items():
        ax2.plot(
            frac_F,
            [r.policies[name].wasted for r in sweep],
            ".-",
            color=color,
            label=f"{name}: wasted",
        )
        ax2.plot(
            frac_F,
            [r.policies[name].idle for r in sweep],
            ":",
            color=color,
            label=f"{name}: of which idle",
        )
    ax2.set_ylim(0, 1.3)
    ax2.set_yticks(np.linspace(0, 1, 6))
    ax2.set_xlabel("straggler fraction")
    ax2.set_ylabel("fraction of slot-time")
    ax2.set_title("GPU slot-time wasted (idle + discarded)")
    ax2.legend(fontsize=8, loc="upper center", ncol=2)
    for ax in (ax1, ax2):
        ax.axvline(cfg.latency.straggler_frac, color="gray", ls=":", lw=1)

    base = cfg.latency.describe().split(";")[0]
    fig.suptitle(
        f"{base}; G={cfg.group_size}, batch {cfg.batch}, {cfg.launched} launched, "
        f"{cfg.trials} trials per point",
        fontsize=11,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_paper(path: str | Path) -> Path:
    """Timeline of the 48 assumed sample times, by group, with both batch-ready times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = paper_example()
    time_N = np.asarray(ex["assumed_sample_times"])
    G = ex["group_size"]
    group_T, free_T = ex["group_based_time"], ex["group_free_time"]
    kept_groups = set(np.argsort(ex["group_times_stated"])[: ex["groups_kept"]].tolist())
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for i, t in enumerate(time_N):
        j = i // G
        y = len(time_N) - 1 - i - 0.6 * j
        color = "tab:red" if j in kept_groups else "lightgray"
        ax.barh(y, t, color=color, height=0.8, edgecolor="white", lw=0.3)
        if t <= free_T:
            ax.plot(t, y, "o", color="tab:blue", ms=3.5)
    for j, done in enumerate(ex["group_times_stated"]):
        y = len(time_N) - 1 - (j * G + G - 1) - 0.6 * j
        ax.text(done + 5, y, f"group {j + 1}: {done:g} s (stated)", va="center", fontsize=8)
    ax.axvline(group_T, color="tab:red", ls="--")
    ax.axvline(free_T, color="tab:blue", ls="--")
    ax.text(group_T + 4, len(time_N) + 2.5, f"group-based ready: {group_T:g} s", color="tab:red")
    ax.text(free_T + 4, len(time_N) + 0.5, f"group-free ready: {free_T:g} s", color="tab:blue")
    ax.set_yticks([])
    ax.set_ylim(-5, len(time_N) + 4.5)
    ax.set_xlim(0, max(ex["group_times_stated"]) * 1.28)
    ax.set_xlabel("time (s)")
    ax.set_title(
        f"The paper's example, {ex['launched']} samples: red = the {ex['groups_kept']} groups "
        f"group-based keeps, dots = the {ex['batch']}\nsamples group-free keeps. Group maxima "
        f"and {free_T:g} s are stated; the other per-sample times are assumed.",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------- CLI

DEFAULT_SWEEP = "0:0.5:0.025"

EPILOG = """\
Model: one rollout phase of an on-policy step. OVERSAMPLE x BATCH samples start at t=0,
one per slot. group-based keeps the BATCH/G groups that finish first (a group finishes
with its slowest sample); group-free keeps the first BATCH samples. The rest is aborted.
Slot-time wasted = idle at the batch barrier + spent on aborted samples. See
docs/simulate.md.

examples:
  spo simulate --paper                          # the paper's 486 s vs 112 s, 4.35x
  spo simulate                                  # lognormal matched to the example
  spo simulate --dist tool --tool-calls 6 --alpha 1.2 --json sim.json
  spo simulate --sigma 0.3 --straggler-frac 0.1 --plot sim.png
"""


def _fracs(text: str) -> list[float]:
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            fracs = np.arange(start, stop + step / 2, step).round(10).tolist()
        else:
            fracs = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give START:STOP:STEP (STEP > 0) or a comma-separated list"
        ) from None
    if not fracs or not all(0 <= f <= 1 for f in fracs):
        raise argparse.ArgumentTypeError(f"{text!r}: straggler fractions must be in [0, 1]")
    return fracs


def _fraction(text: str) -> float:
    try:
        num, _, den = text.partition("/")
        return float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a number or a fraction like 4/3"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `spo simulate` options on `parser`."""
    d, c = Latency(), SimConfig()
    parser.epilog = EPILOG
    parser.add_argument(
        "--paper",
        action="store_true",
        help="print the paper's worked example (486 s vs 112 s) and exit",
    )
    g = parser.add_argument_group("latency (seconds per sample)")
    g.add_argument(
        "--dist",
        choices=list(LATENCIES),
        default=d.dist,
        help=f"generation-time distribution (default {d.dist})",
    )
    for flag, text in (
        ("--median", "median of the base time, s"),
        ("--sigma", "lognormal shape, for lognormal and tool"),
        ("--alpha", "Pareto tail index, for pareto and each tool call"),
        ("--tool-calls", "mean tool calls per sample, Poisson"),
        ("--tool-median", "median latency of one tool call, s"),
        ("--straggler-frac", "fraction of samples slowed down"),
        ("--straggler-mult", "slow-down of a straggler"),
    ):
        default = getattr(d, flag[2:].replace("-", "_"))
        g.add_argument(flag, type=float, default=default, help=f"{text} (default {default:g})")
    g = parser.add_argument_group("batch")
    g.add_argument(
        "--group-size",
        "-G",
        type=int,
        default=c.group_size,
        help=f"samples per prompt for group-based (default {c.group_size})",
    )
    g.add_argument(
        "--batch",
        type=int,
        default=c.batch,
        help=f"samples kept per training step (default {c.batch})",
    )
    g.add_argument(
        "--oversample",
        type=_fraction,
        default=c.oversample,
        help=f"launched / kept samples, same for both; a number or a fraction like 4/3 "
        f"(default {c.oversample:g})",
    )
    g = parser.add_argument_group("trials and output")
    g.add_argument(
        "--trials",
        type=int,
        default=c.trials,
        help=f"independent rollout phases (default {c.trials})",
    )
    g.add_argument("--seed", type=int, default=c.seed, help=f"numpy seed (default {c.seed})")
    g.add_argument(
        "--ci",
        choices=["normal", "bootstrap"],
        default=c.ci,
        help=f"confidence intervals (default {c.ci})",
    )
    g.add_argument(
        "--ci-level",
        type=float,
        default=c.ci_level,
        help=f"confidence level (default {c.ci_level:g})",
    )
    g.add_argument(
        "--sweep",
        type=_fracs,
        default=None,
        metavar="FRACS",
        help="also sweep the straggler fraction: START:STOP:STEP or a,b,c "
        f"(with --plot, default {DEFAULT_SWEEP})",
    )
    g.add_argument("--plot", metavar="PATH", help="write a PNG figure")
    g.add_argument("--json", metavar="PATH", help="write the results as JSON")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build and validate a SimConfig from parsed arguments; ValueError on bad input."""
    latency = Latency(
        dist=args.dist,
        median=args.median,
        sigma=args.sigma,
        alpha=args.alpha,
        tool_calls=args.tool_calls,
        tool_median=args.tool_median,
        straggler_frac=args.straggler_frac,
        straggler_mult=args.straggler_mult,
    )
    return SimConfig(
        latency=latency,
        group_size=args.group_size,
        batch=args.batch,
        oversample=args.oversample,
        trials=args.trials,
        seed=args.seed,
        ci=args.ci,
        ci_level=args.ci_level,
    )


def _write_json(path: str, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def run(args: argparse.Namespace) -> int:
    """`spo simulate`: print results; 0 on success, 2 with one error line on bad input."""
    try:
        if args.paper:
            ex = paper_example()
            print(format_paper(ex))
            if args.plot:
                print(f"wrote {plot_paper(args.plot)}")
            if args.json:
                _write_json(args.json, {"paper": ex})
            return 0
        config = config_from_args(args)
        result = simulate(config)
        print(format_result(result))
        fracs = args.sweep or (_fracs(DEFAULT_SWEEP) if args.plot else None)
        sweep = sweep_straggler_frac(config, fracs) if fracs else []
        if args.sweep:
            print("\n" + format_sweep(sweep))
        if args.plot:
            print(f"wrote {plot_result(result, sweep, args.plot)}")
        if args.json:
            payload = result.to_dict()
            if sweep:
                payload["sweep"] = [r.to_dict() for r in sweep]
            _write_json(args.json, payload)
    except SimError as e:
        print(f"spo: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(
            f"spo: error: cannot write {e.filename or 'output'}: {e.strerror or e}", file=sys.stderr
        )
        return 2
    return 0
