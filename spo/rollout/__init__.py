"""Rollout engines: turn prompt token ids into sampled completions with behaviour log-probs.

Every engine implements `RolloutEngine` (one method), so the trainer does not care whether
completions come from Hugging Face on CPU/GPU (`spo.rollout.hf.HFEngine`) or, later, vLLM.
"""

from __future__ import annotations

from typing import Protocol

from spo.rollout.batch import PackedBatch, Rollouts, pack


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], *, seed: int) -> Rollouts:
        """One completion per prompt, deterministic given (weights, prompt_ids, seed)."""
        ...


__all__ = ["PackedBatch", "RolloutEngine", "Rollouts", "pack"]
