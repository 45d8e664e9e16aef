"""The task types: `Example` (one prompt with its answer and stable id), `Task` (train and
held-out examples plus a verifier), `TaskError`, and the content-hash id of a prompt."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Extractor = Callable[[str], "str | None"]


class TaskError(ValueError):
    """Bad task input (unknown name, missing column, empty dataset, ...): one line for people."""


@dataclass(frozen=True)
class Example:
    """One prompt of a task.

    id: stable prompt id (explicit id column, else `content_id(prompt, answer)`).
    prompt: the user message text; the trainer applies the chat template.
    answer: the reference answer as text.
    meta: extra facts, e.g. {"difficulty": "add2"}; for reasoning-gym the entry metadata.
    """

    id: str
    prompt: str
    answer: str
    meta: Mapping[str, Any] = field(default_factory=dict)


Verifier = Callable[[str, Example], float]


@dataclass(frozen=True)
class Task:
    """Training prompts, disjoint held-out prompts, and how to score and read a reply."""

    name: str
    train: list[Example]
    test: list[Example]
    verifier: Verifier
    extractor: Extractor
    system_prompt: str | None = None  # the task's own, used when the config sets none
    fewshot: tuple[dict[str, str], ...] = ()  # the task's own prefix (spo.tasks.fewshot)
    info: Mapping[str, Any] = field(default_factory=dict)
    """For file tasks: rows read, duplicates dropped, rows skipped, warnings (list of lines)."""

    def chat_system_prompt(self, override: str | None) -> str | None:
        """The one system-prompt rule of training, evaluation and `spo init-values`: the
        config's `task.system_prompt` when set, else the task's own (None = the chat
        template's default)."""
        return override if override is not None else self.system_prompt

    def chat_fewshot(
        self, override: Sequence[Mapping[str, str]] | None, *, tool_role: str = "tool"
    ) -> list[dict[str, str]]:
        """The one few-shot rule of training, evaluation and `spo init-values`: the
        config's `task.fewshot` when set (messages as `spo.tasks.fewshot.parse_fewshot`
        returns them; empty = none), else the task's own; tool messages take `tool_role`,
        as in rollouts."""
        messages = self.fewshot if override is None else override
        return [
            {"role": tool_role if m["role"] == "tool" else m["role"], "content": m["content"]}
            for m in messages
        ]

    def extract_answer(self, completion: str) -> str | None:
        """The final answer of `completion` (None = extraction failed); maj@k votes on it."""
        return self.extractor(completion)

    def summary(self) -> str:
        """One line for the console at start: name, prompts, duplicates dropped, skipped."""
        line = f"task {self.name}: {len(self.train)} training / {len(self.test)} held-out prompts"
        if "rows" in self.info:
            line += (
                f" (from {self.info['rows']} rows; {self.info['duplicates']} duplicates "
                f"dropped, {self.info['skipped']} bad rows skipped)"
            )
        return line


def content_id(prompt: str, answer: str) -> str:
    """Stable id from content: the first 16 hex digits of sha256 of [prompt, answer]."""
    payload = json.dumps([prompt, answer], ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()[:16]
