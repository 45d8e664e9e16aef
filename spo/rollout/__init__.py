"""Rollout engines: turn prompt token ids into sampled completions with behaviour log-probs.

Every engine implements `RolloutEngine`, so the trainer does not care whether completions
come from Hugging Face on CPU/GPU (`spo.rollout.hf.HFEngine`), vLLM on a GPU
(`spo.rollout.vllm_engine.VLLMEngine`), shards of either in turn (`ShardedEngine`) or Ray
actors holding copies of the policy (`spo.rollout.ray_engine.RayEngine`).
`spo.rollout.factory.make_engine` maps the config (`rollout.engine`, `cluster.*`) to one.

Each engine is built with the run's sampling settings (`rollout.temperature`, `top_p`,
`max_new_tokens`); one `generate` call may ask for others with a `SamplingSettings`
(evaluation: greedy, and k samples per prompt), so every consumer samples through the one
configured engine, wherever it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Protocol

from torch import Tensor, nn


@dataclass
class Rollouts:
    """Completions for a list of prompts, in the prompts' order."""

    prompt_tokens: list[list[int]]
    completion_ids: list[list[int]]  # generated ids, eos included when generated, no padding
    logp: list[Tensor]  # behaviour log-prob of each completion token, float32, (T_i,)
    finished: list[bool]  # ended with eos (False: stopped at max_new_tokens)
    texts: list[str]  # decoded completions, special tokens skipped

    def __len__(self) -> int:
        return len(self.completion_ids)


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings of one `generate` call; a field left None is the engine's own.

    temperature 0 is greedy (argmax decoding). n > 1 asks for n completions per prompt,
    returned prompt-major (prompt i's are rows i*n .. i*n+n-1), exactly as if each prompt
    had been repeated n times in the call.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    n: int = 1

    def __post_init__(self):
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def over(self, engine: SamplingSettings) -> SamplingSettings:
        """These settings, with the fields left None taken from `engine`'s."""
        mine = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(engine, **{k: v for k, v in mine.items() if v is not None})

    def repeat(self, prompt_tokens: list[list[int]]) -> list[list[int]]:
        """Each prompt n times in a row: the rows an engine generates for these settings."""
        return [p for p in prompt_tokens for _ in range(self.n)]


class EngineError(ValueError):
    """An engine that cannot run here (missing package, no GPU); one line for the user."""


class RolloutEngine(Protocol):
    def generate(
        self, prompt_tokens: list[list[int]], *, seed: int, sampling: SamplingSettings | None = None
    ) -> Rollouts:
        """`sampling.n` (default 1) completions per prompt at `sampling`'s settings (None:
        the engine's configured ones), deterministic given (weights, prompt_tokens, seed,
        sampling)."""
        ...

    def sync_weights(self, policy: nn.Module | Mapping[str, Tensor]) -> None:
        """Make the engine sample from `policy` (the trainer's model, or its
        `spo.policy.weights.policy_weights`); called after every optimizer update."""
        ...


__all__ = ["EngineError", "RolloutEngine", "Rollouts", "SamplingSettings"]
