"""Rollout engines: turn prompt token ids into sampled completions with behaviour log-probs.

Every engine implements `RolloutEngine`, so the trainer does not care whether completions
come from Hugging Face on CPU/GPU (`spo.rollout.hf.HFEngine`), vLLM on a GPU
(`spo.rollout.vllm_engine.VLLMEngine`), shards of either in turn (`ShardedEngine`) or Ray
actors holding copies of the policy (`spo.rollout.ray_engine.RayEngine`).
`spo.rollout.factory.make_engine` maps the config (`rollout.engine`, `cluster.*`) to one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn


@dataclass
class Rollouts:
    """Completions for a list of prompts, in the prompts' order."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # generated ids, eos included when generated, no padding
    logp: list[Tensor]  # behaviour log-prob of each completion token, float32, (T_i,)
    finished: list[bool]  # ended with eos (False: stopped at max_new_tokens)
    texts: list[str]  # decoded completions, special tokens skipped

    def __len__(self) -> int:
        return len(self.completion_ids)


class EngineError(ValueError):
    """An engine that cannot run here (missing package, no GPU); one line for the user."""


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], *, seed: int) -> Rollouts:
        """One completion per prompt, deterministic given (weights, prompt_ids, seed)."""
        ...

    def sync_weights(self, policy: nn.Module | Mapping[str, Tensor]) -> None:
        """Make the engine sample from `policy` (the trainer's model, or its
        `spo.policy.weights.policy_weights`); called after every optimizer update."""
        ...


__all__ = ["EngineError", "RolloutEngine", "Rollouts"]
