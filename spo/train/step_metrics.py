"""One training step's metrics row (metrics.jsonl, TensorBoard) from a small record.

`StepRecord` holds what the step produced; `step_metrics` turns it into the logged keys:
rewards, the unnormalised advantage A (spo-spec.md §8: variance, share near 0; group
algorithms also the degenerate-group share and the variance over non-degenerate groups),
tracker state of the step's prompts, completion lengths, phase times and throughput, plus
the update's and the ρ estimator's / rollout scheduler's own stats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from spo.algo import (
    ValueTracker,
    advantage_variance,
    degenerate_fraction,
    small_advantage_fraction,
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
    baseline_B: torch.Tensor  # (B,) the baseline the advantage used (zeros: none)
    group_id_B: torch.Tensor  # (B,) int64 group of each sample
    prompt_idx: np.ndarray  # (P,) distinct prompt indices of the step
    scored: object  # the reward pool's result (`timeouts`, `errors`)
    rollouts: object  # the generated batch (`completion_ids`, `finished`)
    times: StepTimes
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
    """The metrics row of `rec`; `tracker` is read after it absorbed the step."""
    t = rec.times
    reward_B, group_id_B = rec.reward_B, rec.group_id_B
    raw_adv_B = reward_B - rec.baseline_B
    if grouped:  # the group-mean baseline of the update itself
        means = torch.zeros(int(group_id_B.max()) + 1).index_add_(0, group_id_B, reward_B)
        raw_adv_B = reward_B - (means / torch.bincount(group_id_B).float())[group_id_B]
    lengths = np.array([len(c) for c in rec.rollouts.completion_ids])
    values = tracker.value(rec.prompt_idx)
    counts = tracker.count(rec.prompt_idx)
    m = {
        "samples": samples_seen,
        "reward/mean": float(reward_B.mean()),
        "reward/timeouts": rec.scored.timeouts,
        "reward/errors": rec.scored.errors,
        "adv/variance": float(advantage_variance(raw_adv_B)),
        "adv/abs_le_1e-4": float(small_advantage_fraction(raw_adv_B, 1e-4)),
        "adv/abs_le_0.02": float(small_advantage_fraction(raw_adv_B, 0.02)),
        "tracker/value_mean": float(values.mean()),
        "tracker/count_mean": float(counts.mean()),
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
