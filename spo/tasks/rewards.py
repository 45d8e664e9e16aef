"""Hardened reward execution: verifiers run isolated, in parallel, with a time limit.

A reward is `verifier(completion, example) -> float | bool in [0, 1]` (the protocol of
`spo.tasks.Verifier`). Verifiers are arbitrary code — math-verify's sympy can spin for
minutes on an adversarial expression, a user function can crash — so `RewardPool` runs
every call in a pebble `ProcessPool`:

- a whole batch is submitted at once and scored by `workers` long-lived processes;
- a call running longer than `timeout` seconds is cancelled and its worker killed and
  replaced; it scores 0 and is counted in `RewardResult.timeouts`;
- a call that raises, or whose worker dies (segfault, os._exit, OOM kill), scores 0 and is
  counted in `RewardResult.errors`;
- a verifier that *returns* something that is not a reward (None, a string, NaN, a value
  outside [0, 1]) is a bug in the verifier, not bad luck of one sample: `RewardError`.

So no failure is a silent zero and no batch can hang. If the pool itself cannot run (its
workers fail to start), the call raises RuntimeError rather than scoring everything 0.

Workers start from a fresh interpreter through the 'forkserver' context ('spawn' where
there is none): the trainer has torch and its OpenMP threads loaded, and forking such a
process is unsafe. Workers are reused across batches, so start-up (importing the
verifier's module) is paid once per worker, not per call. As with any spawn-style
multiprocessing, a script that creates a pool must guard its entry point with
`if __name__ == "__main__":`.

`workers=0` runs verifiers in the calling process: no isolation and no timeout (a hanging
verifier hangs the trainer, a segfault kills it). It is for debugging and fast tests only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import multiprocessing
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spo.tasks.base import Example

Verifier = Callable[[str, Example], Any]

_RANGE_SLACK = 1e-6  # float noise such as 1.0000000002 is clipped, not an error
_START_GRACE_S = 120.0  # worst-case wait for a worker process to start (busy 2-core laptop)
_MAX_FAILURES_KEPT = 5
_BROKEN_POOL = (
    "reward worker processes failed to start; if this runs from a script, put its entry "
    "point under `if __name__ == '__main__':` (workers re-import the main module), or set "
    "reward.workers=0 to score in-process"
)


class RewardError(ValueError):
    """A verifier returned something that is not a reward in [0, 1]."""


@dataclass
class RewardResult:
    """Rewards of one batch and how many calls failed.

    reward_B: float32 rewards in [0, 1], in the order of the completions; failed calls are 0.
    timeouts: calls cancelled after `timeout` seconds.
    errors: calls that raised or whose worker process died.
    failures: the first few failures as "example <id>: <reason>" lines, for the log.
    """

    reward_B: np.ndarray  # (B,)
    timeouts: int
    errors: int
    failures: list[str] = field(default_factory=list)


def verifier_name(verifier: Verifier) -> str:
    """A readable name for messages: module.function, with a partial's keywords."""
    if isinstance(verifier, functools.partial):
        keywords = ", ".join(f"{k}={v!r}" for k, v in verifier.keywords.items())
        inner = verifier_name(verifier.func)
        return f"{inner}({keywords})" if keywords else inner
    module = getattr(verifier, "__module__", None) or ""
    name = getattr(verifier, "__qualname__", None) or type(verifier).__name__
    return f"{module}.{name}" if module else name


def check_reward(value: Any, *, verifier: Verifier, example_id: str) -> float:
    """`value` as a float in [0, 1] (bools become 1.0 / 0.0), else RewardError."""
    if isinstance(value, (bool, np.bool_)):
        return 1.0 if value else 0.0
    problem = None
    if not isinstance(value, (int, float, np.integer, np.floating)):
        problem = f"a {type(value).__name__} ({value!r:.60})"
    elif math.isnan(value):
        problem = "NaN"
    elif not -_RANGE_SLACK <= value <= 1 + _RANGE_SLACK:
        problem = f"{float(value)!r}, outside [0, 1]"
    if problem is not None:
        raise RewardError(
            f"verifier {verifier_name(verifier)} returned {problem} for example "
            f"{example_id!r}; a verifier must return a number in [0, 1] or a bool — fix the "
            "function (e.g. clip or rescale its score)"
        )
    return min(max(float(value), 0.0), 1.0)


def _mp_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _warm_up(verifier: Verifier) -> None:
    """No-op task: starts a worker (and imports the verifier's module by unpickling it)
    while the trainer generates its first batch."""


class RewardPool:
    """Score batches of completions with `verifier`, isolated and time-limited.

    timeout: seconds one verifier call may run before it is killed and scored 0.
    workers: verifier processes; 0 = call in-process (unsafe: no isolation, no timeout).
    """

    def __init__(self, verifier: Verifier, *, timeout: float = 5.0, workers: int = 2):
        if not timeout > 0:
            raise ValueError(f"reward timeout must be positive seconds, got {timeout}")
        if workers < 0:
            raise ValueError(f"reward workers must be 0 (in-process) or more, got {workers}")
        self.verifier = verifier
        self.timeout = float(timeout)
        self.workers = int(workers)
        self._pool = None
        if self.workers > 0:
            from pebble import ProcessPool

            try:
                pickle.dumps(verifier)
            except Exception as e:
                raise TypeError(
                    f"verifier {verifier_name(verifier)} cannot be sent to worker processes "
                    f"({type(e).__name__}: {e}); make it a module-level function or a "
                    "functools.partial of one (workers=0 runs it in-process, unisolated)"
                ) from e
            self._pool = ProcessPool(max_workers=self.workers, context=_mp_context())
            for _ in range(self.workers):
                self._pool.schedule(_warm_up, args=(verifier,))

    def __call__(self, completions: Sequence[str], examples: Sequence[Example]) -> RewardResult:
        """Rewards of `completions[i]` against `examples[i]`, in order."""
        if len(completions) != len(examples):
            raise ValueError(
                f"got {len(completions)} completions but {len(examples)} examples; "
                "pass one example per completion"
            )
        if self._pool is None and self.workers > 0:
            raise RuntimeError("RewardPool is closed; create a new one")
        outcomes = (
            self._run_inline(completions, examples)
            if self._pool is None
            else (self._run_pool(completions, examples))
        )
        reward_B = np.zeros(len(completions), dtype=np.float32)
        timeouts = errors = 0
        failures: list[str] = []
        for i, (status, value) in enumerate(outcomes):
            example_id = examples[i].id
            if status == "ok":
                reward_B[i] = check_reward(value, verifier=self.verifier, example_id=example_id)
                continue
            if status == "timeout":
                timeouts += 1
            else:
                errors += 1
            if len(failures) < _MAX_FAILURES_KEPT:
                failures.append(f"example {example_id}: {value}")
        return RewardResult(reward_B=reward_B, timeouts=timeouts, errors=errors, failures=failures)

    def _run_inline(
        self, completions: Sequence[str], examples: Sequence[Example]
    ) -> list[tuple[str, Any]]:
        outcomes: list[tuple[str, Any]] = []
        for completion, example in zip(completions, examples, strict=True):
            try:
                outcomes.append(("ok", self.verifier(completion, example)))
            except Exception as e:  # a crashing verifier scores 0 and is counted
                outcomes.append(("error", f"{type(e).__name__}: {e}"))
        return outcomes

    def _run_pool(
        self, completions: Sequence[str], examples: Sequence[Example]
    ) -> list[tuple[str, Any]]:
        from pebble import ProcessExpired

        assert self._pool is not None
        try:
            futures = [
                self._pool.schedule(self.verifier, args=(c, ex), timeout=self.timeout)
                for c, ex in zip(completions, examples, strict=True)
            ]
        except RuntimeError as e:
            raise RuntimeError(_BROKEN_POOL) from e
        # pebble's timeout runs from each call's start; this outer deadline only guards
        # against a pool that stops making progress at all (it should never fire).
        rounds = math.ceil(len(futures) / self.workers)
        deadline = time.monotonic() + _START_GRACE_S + 2 * self.timeout * (rounds + 1)
        outcomes: list[tuple[str, Any]] = []
        for future in futures:
            try:
                value = future.result(timeout=max(0.0, deadline - time.monotonic()))
                outcomes.append(("ok", value))
            except (concurrent.futures.TimeoutError, TimeoutError):
                future.cancel()
                outcomes.append(("timeout", f"timed out after {self.timeout:g} s"))
            except ProcessExpired as e:
                outcomes.append(("error", f"worker died (exit code {e.exitcode})"))
            except Exception as e:  # raised inside the verifier, re-raised here by pebble
                outcomes.append(("error", f"{type(e).__name__}: {e}"))
        if not self._pool.active:  # the pool itself failed: not the verifier's fault
            raise RuntimeError(_BROKEN_POOL)
        return outcomes

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=10)
            self._pool = None

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to clean
            self.close()
