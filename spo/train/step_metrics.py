"""One training step's metrics row (metrics.jsonl, TensorBoard) from a small record.

`StepRecord` holds what the step produced; `step_metrics` turns it into the logged keys:
rewards, the unnormalised advantage A = r − b (spo-spec.md §8: variance, share near 0;
group algorithms also the degenerate-group share and the variance over non-degenerate
groups), the within-batch variance reduction of the baseline, the ρ the tracker applied,
tracker state of the step's prompts, completion lengths, phase times and throughput, plus
the update's and the ρ estimator's / rollout scheduler's own stats.

b is the baseline the step's advantage subtracted (`spo.algo.advantage_baseline`): SPO's
v̂₋₁, zero without a baseline, the group mean (GRPO, Dr. GRPO) or the leave-one-out mean
(RLOO), so the variance keys compare arms like with like, all within the same batch:

    var/reward    Var(r)                     var/residual  Var(r − b)
    var/ratio     Var(r − b)/Var(r)          (NaN when Var(r) = 0)

The ρ fed to the tracker this step, per sample (`rho/applied_*`: mean, min, max, share at
ρ_min and at ρ_max), the same over revisits only (`rho/revisit_*`: prompts the tracker
had updated before; first visits get ρ_max unless offline-initialised), the share of first
visits (`rho/first_visit_share`) and the median D of revisits when ρ came from a divergence
(`rho/revisit_divergence_median`). `tracker/value_mean` and `tracker/count_mean` are the
mean v̂ and N of the step's prompts as the step used them, i.e. read BEFORE the tracker
absorbed the step's rewards (code before issue 19 read them after).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from spo.algo import (
    ValueTracker,
    advantage_baseline,
    advantage_variance,
    applied_rho_stats,
    degenerate_fraction,
    residual_variance,
    small_advantage_fraction,
    variance_ratio,
)


@dataclass
class StepTimes:
    """perf_counter stamps: start, generated, scored, trained, tracker updated."""

    start: float
    generate: float
    score: float
    train: float
    end: float


@dataclass
class StepRecord:
    reward_B: torch.Tensor  # (B,) float32 rewards in [0, 1]
    baseline_B: torch.Tensor  # (B,) the baseline passed to the advantage (zeros: none)
    group_id_B: torch.Tensor  # (B,) int64 group of each sample
    prompt_idx: np.ndarray  # (P,) distinct prompt indices of the step
    scored: object  # the reward pool's result (`timeouts`, `errors`)
    rollouts: object  # the generated batch (`completion_ids`, `finished`)
    times: StepTimes
    advantage: str  # key of spo.algo.ADVANTAGES the step used
    value_P: np.ndarray  # (P,) tracker v̂ of prompt_idx, read before the update
    count_P: np.ndarray  # (P,) tracker N of prompt_idx, read before the update
    first_visit_B: np.ndarray  # (B,) bool: the tracker had never updated the prompt
    rho_B: np.ndarray  # (B,) ρ the tracker applied to each sample
    divergence_B: np.ndarray | None = None  # (B,) D behind rho_B; None: constant ρ
    train_stats: dict[str, float] = field(default_factory=dict)  # the update's stats
    extra_stats: dict[str, float] = field(default_factory=dict)  # ρ estimator, scheduler


def step_metrics(
    rec: StepRecord,
    tracker: ValueTracker,
    *,
    grouped: bool,
    samples_seen: int,
    wall_seconds: float,
) -> dict[str, float]:
    """The metrics row of `rec`; `tracker` (read for its seen fraction and ρ bounds) has
    absorbed the step."""
    t = rec.times
    reward_B, group_id_B = rec.reward_B, rec.group_id_B
    b_B = advantage_baseline(
        rec.advantage,
        reward_B,
        baseline_B=rec.baseline_B,
        group_id_B=group_id_B,
        default="group_mean" if grouped else "given",  # an algorithm added without a row
    )
    raw_adv_B = reward_B - b_B
    lengths = np.array([len(c) for c in rec.rollouts.completion_ids])
    m = {
        "samples": samples_seen,
        "reward/mean": float(reward_B.mean()),
        "reward/timeouts": rec.scored.timeouts,
        "reward/errors": rec.scored.errors,
        "adv/variance": float(advantage_variance(raw_adv_B)),
        "adv/abs_le_1e-4": float(small_advantage_fraction(raw_adv_B, 1e-4)),
        "adv/abs_le_0.02": float(small_advantage_fraction(raw_adv_B, 0.02)),
        "var/reward": float(np.var(reward_B.double().numpy())),
        "var/residual": residual_variance(reward_B, b_B),
        "var/ratio": variance_ratio(reward_B, b_B),
        **_rho_metrics(rec, tracker),
        "tracker/value_mean": float(np.mean(rec.value_P)),
        "tracker/count_mean": float(np.mean(rec.count_P)),
        "tracker/seen_fraction": float(tracker.seen_fraction()),
        "completion/length_mean": float(lengths.mean()),
        "completion/truncated_fraction": float(1 - np.mean(rec.rollouts.finished)),
        "time/generate": t.generate - t.start,
        "time/score": t.score - t.generate,
        "time/train": t.train - t.score,
        "time/tracker": t.end - t.train,
        "time/step": t.end - t.start,
        "throughput/samples_per_s": len(reward_B) / (t.end - t.start),
        "throughput/gen_tokens_per_s": float(lengths.sum()) / max(t.generate - t.start, 1e-9),
        "wall_seconds": wall_seconds,
        **rec.train_stats,
        **rec.extra_stats,
    }
    if grouped:  # singleton "groups" of SPO would all count as degenerate
        m["adv/degenerate_fraction"] = float(degenerate_fraction(reward_B, group_id_B))
        m["adv/variance_nondegenerate"] = float(
            advantage_variance(raw_adv_B, group_id_B, exclude_degenerate=True, reward_B=reward_B)
        )
    return m


def _rho_metrics(rec: StepRecord, tracker: ValueTracker) -> dict[str, float]:
    bounds = {"rho_min": tracker.rho_min, "rho_max": tracker.rho_max}
    revisit_B = ~np.asarray(rec.first_visit_B, dtype=bool)
    m = {f"rho/applied_{k}": v for k, v in applied_rho_stats(rec.rho_B, **bounds).items()}
    revisit = applied_rho_stats(np.asarray(rec.rho_B)[revisit_B], **bounds)
    m.update({f"rho/revisit_{k}": v for k, v in revisit.items()})
    m["rho/first_visit_share"] = float(1.0 - revisit_B.mean()) if revisit_B.size else 0.0
    d_R = None if rec.divergence_B is None else np.asarray(rec.divergence_B)[revisit_B]
    m["rho/revisit_divergence_median"] = (
        float(np.median(d_R)) if d_R is not None and d_R.size else float("nan")
    )
    return m
