"""Deterministic sharding of a step's prompts over rollout workers.

A step's prompts are cut into `shards` contiguous, near-equal slices; slice k is generated
with seed `shard_seed(seed, k)`. Ray actors (`spo.rollout.ray_engine`) generate the slices
in parallel, `ShardedEngine` generates them in turn in this process: both give the same
completions for the same seed, so `cluster.mode` never changes a run's results. One shard
uses the step seed itself (identical to an unsharded engine). Shards cut the prompts,
not the rows: with `sampling.n` > 1 all n samples of a prompt come from one shard.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
from torch import Tensor, nn

from spo.rollout import Rollouts, SamplingSettings


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """[lo, hi) of each non-empty shard; the first n % shards shards get one more prompt."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    edges = np.cumsum([0] + [n // shards + (k < n % shards) for k in range(shards)])
    return [(int(lo), int(hi)) for lo, hi in itertools.pairwise(edges) if hi > lo]


def shard_seed(seed: int, k: int) -> int:
    """Seed of shard k: the step seed for shard 0, independent streams for the others."""
    if k == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0])


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
    return Rollouts(
        prompt_tokens=[p for r in parts for p in r.prompt_tokens],
        completion_ids=[c for r in parts for c in r.completion_ids],
        logp=[lp for r in parts for lp in r.logp],
        finished=[f for r in parts for f in r.finished],
        texts=[t for r in parts for t in r.texts],
    )


class ShardedEngine:
    """Generates the shards of `shard_bounds` in turn with one engine (local mode)."""

    def __init__(self, engine, shards: int):
        self.engine = engine
        self.shards = shards

    def generate(
        self, prompt_tokens: list[list[int]], *, seed: int, sampling: SamplingSettings | None = None
    ) -> Rollouts:
        parts = [
            self.engine.generate(prompt_tokens[lo:hi], seed=shard_seed(seed, k), sampling=sampling)
            for k, (lo, hi) in enumerate(shard_bounds(len(prompt_tokens), self.shards))
        ]
        return concat_rollouts(parts)

    def sync_weights(self, policy: nn.Module | Mapping[str, Tensor]) -> None:
        self.engine.sync_weights(policy)
