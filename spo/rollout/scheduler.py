"""Rollout scheduler: a pool of in-flight samples that hands the trainer finished ones.

`RolloutScheduler.next_batch(version)` returns the next batch of finished samples for the
training step that follows policy version `version` (= optimizer steps taken so far):

- **async** (single-stream SPO; the SPO paper's agentic argument, section on throughput):
  up to `in_flight` samples are kept in flight (finished-but-untrained ones included). The
  decoder takes the ready samples, oldest first, `batch_size` at a time, one model turn per
  call; a turn that calls a tool sends the sample to a thread pool (the sandbox runs in its
  own process, so calls overlap each other and the decoder) and the decoder moves on to
  whatever is ready. A sample that finishes is scored at once and queued; the step takes
  the first `samples_per_step` in finishing order, the rest stay in flight into the next
  step, and freed slots are refilled from the prompt sampler at once.
- **async with groups** (GRPO, RLOO, ...): the same pool, in whole groups; a group is
  admitted only when all of its members have finished (the group barrier), in the order in
  which groups completed; the step takes the first `samples_per_step / group_size` groups.
- **sync**: the step issues exactly one batch (as the synchronous trainer does) and waits
  for every sample of it; nothing carries over.

Staleness. Every model turn is tagged with the policy version that sampled it; a sample's
staleness is `version - (oldest turn's version)`. Samples staler than `max_staleness` are
either dropped (`staleness="drop"`: the whole sample or group is discarded, counted, and its
prompt re-issued as a fresh sample/group) or kept and re-weighted (`"reweight"`: the batch
marks them `stale_B`, and the trainer uses their stored behaviour log-probs as `old_logp`,
so the PPO ratio is the importance ratio π_θ / π_behaviour, clipped as usual).

Engine idle time is wall time inside `next_batch` during which no sample was ready to
decode (every in-flight sample was waiting on a tool). A tool call that has not returned
`tool_timeout` seconds after it started is abandoned: the sample gets a "[tool call
abandoned ...]" message and goes on, so a step never waits forever (the sandbox has its own
limits; this is the backstop for a tool that hangs); its outcome is "timeout".

Stats of a step (`FinishedBatch.stats`, logged to metrics.jsonl): wall time, engine idle
share, staleness, tool calls started during the step; with `max_turns > 1` also the tool
metrics of the step's episodes (`spo.rollout.multiturn.tool_stats`: turns per episode,
tool-call rate, calls per outcome, share of episodes whose code ran without error).

Accounting (resume is lossless): `issued_P`, `trained_P`, `dropped_P` count samples per
prompt, and always `issued = trained + dropped + in flight`. `state_dict()` holds every
in-flight sample (tokens, masks, log-probs, versions, its pending tool call, which is
re-run on load), so a resumed run trains each issued sample exactly once or counts it as
dropped. The tracker baseline is read by the trainer when a batch is trained, and the
tracker is updated once per trained sample (dropped samples never touch it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from spo.rollout import Rollouts
from spo.rollout.multiturn import (
    Sample,
    ToolEnv,
    ToolMessages,
    abandoned,
    apply_tool,
    apply_turns,
    safe_run,
    tool_stats,
)
from spo.tasks.rewards import RewardResult

MODES = ("sync", "async")
STALENESS = ("drop", "reweight")


class InlineExecutor:
    """Runs each tool call at submit time (deterministic; tests and tool-free runs)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # reported through the future
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


@dataclass
class FinishedBatch:
    """Finished samples of one step, in admission order."""

    samples: list[Sample]
    prompt_idx_B: np.ndarray  # (B,) int64 prompt indices
    group_id_B: torch.Tensor  # (B,) int64, 0..groups-1 (arange for single-stream)
    rollouts: Rollouts
    loss_mask: list[list[int]]
    reward: RewardResult
    stale_B: torch.Tensor  # (B,) bool: train against the stored behaviour log-probs
    staleness_B: np.ndarray  # (B,) int64
    stats: dict[str, float]


class RolloutScheduler:
    """See the module docstring. `engine.generate(prompt_tokens, seed=)` decodes one turn."""

    def __init__(
        self,
        *,
        engine,
        prompt_tokens: list[list[int]],
        draw: Callable[[int, np.ndarray | None], np.ndarray],
        score: Callable[[list[Sample]], RewardResult],
        samples_per_step: int,
        group_size: int = 1,
        mode: str = "async",
        in_flight: int | None = None,
        max_staleness: int = 1,
        staleness: str = "reweight",
        batch_size: int = 64,
        max_turns: int = 1,
        env: ToolEnv | None = None,
        messages: ToolMessages | None = None,
        tool_timeout: float = 30.0,
        executor=None,
        seed: Callable[[int], int] = lambda call: call,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if staleness not in STALENESS:
            raise ValueError(f"staleness must be one of {STALENESS}, got {staleness!r}")
        if samples_per_step % group_size:
            raise ValueError("samples_per_step must be a multiple of group_size")
        if max_turns > 1 and (env is None or messages is None):
            raise ValueError("max_turns > 1 needs a tool env and ToolMessages")
        self.engine = engine
        self.prompt_tokens = prompt_tokens
        self.draw = draw  # draw(k, eligible mask or None) -> k distinct prompt indices
        self.score = score
        self.samples_per_step = samples_per_step
        self.group_size = group_size
        self.mode = mode
        self.in_flight = max(in_flight or 2 * samples_per_step, samples_per_step)
        self.max_staleness = max_staleness
        self.staleness = staleness
        self.batch_size = batch_size
        self.max_turns = max_turns
        self.env = env
        self.messages = messages
        self.tool_timeout = tool_timeout
        self.executor = executor if executor is not None else ThreadPoolExecutor(8)
        self.seed = seed
        P = len(prompt_tokens)
        self.pool: list[Sample] = []  # in flight: decoding or waiting on a tool
        self.done: list[Sample] = []  # finished, not yet trained
        self.futures: dict[int, tuple[Future, float]] = {}  # uid -> (future, deadline)
        self.next_uid = 0
        self.decode_calls = 0
        self.finish_seq = 0
        self.issued_P = np.zeros(P, dtype=np.int64)
        self.trained_P = np.zeros(P, dtype=np.int64)
        self.dropped_P = np.zeros(P, dtype=np.int64)
        self.totals = {"wall": 0.0, "idle": 0.0, "decode": 0.0, "tool_calls": 0, "abandoned": 0}

    # ------------------------------------------------------------------ the step
    def next_batch(self, version: int) -> FinishedBatch:
        t0 = time.perf_counter()
        idle = decode = 0.0
        calls0, abandoned0 = self.totals["tool_calls"], self.totals["abandoned"]
        scored: list[RewardResult] = []
        dropped = self._drop_stale(version) if self.staleness == "drop" else 0
        if self.mode == "sync":
            if self.pool or self.done:
                raise RuntimeError("sync mode carries nothing over between steps")
            self._issue(self.samples_per_step // self.group_size)
        while (batch := self._admit()) is None:
            if self.mode == "async":
                self._top_up()
            self._harvest(version)
            ready = [s for s in self.pool if s.ready][: self.batch_size]
            if ready:
                t = time.perf_counter()
                rollouts = self.engine.generate(
                    [s.context() for s in ready], seed=self.seed(self.decode_calls)
                )
                self.decode_calls += 1
                apply_turns(
                    ready, rollouts, version=version, env=self.env, max_turns=self.max_turns
                )
                for s in ready:
                    if s.pending is not None:
                        self._submit(s)
                scored += self._finish([s for s in ready if s.done])
                decode += time.perf_counter() - t
            else:
                if not self.futures:  # cannot happen: every in-flight sample is ready or on a tool
                    raise RuntimeError(
                        "rollout scheduler has nothing to decode and nothing to wait for"
                    )
                t = time.perf_counter()
                nearest = min(deadline for _, deadline in self.futures.values())
                wait(
                    [f for f, _ in self.futures.values()],
                    timeout=max(nearest - time.monotonic(), 0.0),
                    return_when=FIRST_COMPLETED,
                )
                idle += time.perf_counter() - t
        wall = time.perf_counter() - t0
        for key, value in (("wall", wall), ("idle", idle), ("decode", decode)):
            self.totals[key] += value
        return self._build(batch, version, scored, dropped, wall, idle, calls0, abandoned0)

    # ------------------------------------------------------------------ pieces
    def _issue(self, groups: int, prompts: list[int] | None = None) -> None:
        """Issue `groups` new groups (of `group_size` samples) from the sampler, or for
        the given prompts (re-issues)."""
        if prompts is None:
            if groups <= 0:
                return
            busy = np.zeros(len(self.prompt_tokens), dtype=bool)
            busy[[s.prompt_idx for s in self.pool + self.done]] = True
            free = int((~busy).sum())
            prompts = self.draw(min(groups, len(busy)), ~busy if free >= groups else None).tolist()
        for p in prompts:
            group = self.next_uid
            for _ in range(self.group_size):
                self.pool.append(Sample(self.next_uid, int(p), group, list(self.prompt_tokens[p])))
                self.issued_P[p] += 1
                self.next_uid += 1

    def _top_up(self) -> None:
        room = self.in_flight - len(self.pool) - len(self.done)
        self._issue(room // self.group_size)

    def _submit(self, s: Sample) -> None:
        future = self.executor.submit(safe_run, self.env, s.pending)
        self.futures[s.uid] = (future, time.monotonic() + self.tool_timeout)
        self.totals["tool_calls"] += 1

    def _harvest(self, version: int) -> None:
        """Append the output of every tool call that returned (or is overdue)."""
        now = time.monotonic()
        by_uid = {s.uid: s for s in self.pool}
        for uid in sorted(self.futures):
            future, deadline = self.futures[uid]
            if future.done():
                output = future.result()
            elif now >= deadline:
                future.cancel()
                output = abandoned(self.tool_timeout)
                self.totals["abandoned"] += 1
            else:
                continue
            del self.futures[uid]
            apply_tool(by_uid[uid], output, self.messages)

    def _finish(self, finished: list[Sample]) -> list[RewardResult]:
        """Score newly finished samples at once and queue them for admission."""
        if not finished:
            return []
        result = self.score(finished)
        for s, r in zip(finished, result.reward_B.tolist(), strict=True):
            s.reward = float(r)
            s.finish_seq = self.finish_seq
            self.finish_seq += 1
        ids = {s.uid for s in finished}
        self.pool = [s for s in self.pool if s.uid not in ids]
        self.done += finished
        return [result]

    def _admit(self) -> list[Sample] | None:
        """The step's samples, if enough have finished: first finished (or first complete
        groups), in admission order; they leave the scheduler."""
        if self.mode == "sync" and self.pool:
            return None
        members: dict[int, list[Sample]] = {}
        for s in self.done:
            members.setdefault(s.group, []).append(s)
        complete = [g for g in members.values() if len(g) == self.group_size]
        need = self.samples_per_step // self.group_size
        if len(complete) < need:
            return None
        complete.sort(key=lambda g: max(s.finish_seq for s in g))
        batch = [s for g in complete[:need] for s in sorted(g, key=lambda s: s.uid)]
        taken = {s.uid for s in batch}
        self.done = [s for s in self.done if s.uid not in taken]
        for s in batch:
            self.trained_P[s.prompt_idx] += 1
        return batch

    def _drop_stale(self, version: int) -> int:
        """Discard every group with a member staler than max_staleness; re-issue its prompt."""
        stale = {
            s.group for s in self.pool + self.done if s.staleness(version) > self.max_staleness
        }
        if not stale:
            return 0
        gone = [s for s in self.pool + self.done if s.group in stale]
        for s in gone:
            self.dropped_P[s.prompt_idx] += 1
            entry = self.futures.pop(s.uid, None)
            if entry is not None:
                entry[0].cancel()
        self.pool = [s for s in self.pool if s.group not in stale]
        self.done = [s for s in self.done if s.group not in stale]
        prompts = {s.group: s.prompt_idx for s in gone}
        self._issue(len(prompts), [prompts[g] for g in sorted(prompts)])
        return len(gone)

    def _build(self, batch, version, scored, dropped, wall, idle, calls0, abandoned0):
        group_index = {g: i for i, g in enumerate(dict.fromkeys(s.group for s in batch))}
        staleness_B = np.array([s.staleness(version) for s in batch], dtype=np.int64)
        reward = RewardResult(
            reward_B=np.array([s.reward for s in batch], dtype=np.float32),
            timeouts=sum(r.timeouts for r in scored),
            errors=sum(r.errors for r in scored),
            failures=[f for r in scored for f in r.failures][:5],
        )
        rollouts = Rollouts(
            prompt_tokens=[s.prompt_tokens for s in batch],
            completion_ids=[s.completion_ids for s in batch],
            logp=[torch.tensor(s.logp, dtype=torch.float32) for s in batch],
            finished=[s.stop_reason != "length" for s in batch],
            texts=[s.final_text for s in batch],
        )
        stats = {
            "rollout/wall": wall,
            "rollout/engine_idle_fraction": idle / wall if wall > 0 else 0.0,
            "rollout/in_flight": float(len(self.pool) + len(self.done)),
            "rollout/dropped": float(dropped),
            "rollout/staleness_mean": float(staleness_B.mean()),
            "rollout/stale_fraction": float((staleness_B > self.max_staleness).mean()),
            "rollout/tool_calls": float(self.totals["tool_calls"] - calls0),
            "rollout/tool_calls_per_sample": float(np.mean([s.tool_calls for s in batch])),
            "rollout/tools_abandoned": float(self.totals["abandoned"] - abandoned0),
        }
        if self.max_turns > 1:
            stats.update(tool_stats(batch))
        return FinishedBatch(
            samples=batch,
            prompt_idx_B=np.array([s.prompt_idx for s in batch], dtype=np.int64),
            group_id_B=torch.tensor([group_index[s.group] for s in batch], dtype=torch.long),
            rollouts=rollouts,
            loss_mask=[s.loss_mask for s in batch],
            reward=reward,
            stale_B=torch.from_numpy(staleness_B > self.max_staleness),
            staleness_B=staleness_B,
            stats=stats,
        )

    # ------------------------------------------------------------ state / close
    def accounting(self) -> dict[str, np.ndarray]:
        """Per prompt: issued = trained + dropped + in_flight."""
        in_flight = np.zeros_like(self.issued_P)
        np.add.at(in_flight, [s.prompt_idx for s in self.pool + self.done], 1)
        return {
            "issued": self.issued_P.copy(),
            "trained": self.trained_P.copy(),
            "dropped": self.dropped_P.copy(),
            "in_flight": in_flight,
        }

    def state_dict(self) -> dict:
        return {
            "samples": [s.to_state() for s in self.pool + self.done],
            "next_uid": self.next_uid,
            "decode_calls": self.decode_calls,
            "finish_seq": self.finish_seq,
            "issued_P": self.issued_P.copy(),
            "trained_P": self.trained_P.copy(),
            "dropped_P": self.dropped_P.copy(),
        }

    def load_state_dict(self, state: dict) -> None:
        samples = [Sample.from_state(dict(s)) for s in state["samples"]]
        for name in ("issued_P", "trained_P", "dropped_P"):
            value = np.asarray(state[name], dtype=np.int64)
            if value.shape != self.issued_P.shape:
                raise ValueError(f"rollout state {name} has shape {value.shape}")
            setattr(self, name, value.copy())
        self.pool = [s for s in samples if not s.done]
        self.done = [s for s in samples if s.done]
        self.next_uid = int(state["next_uid"])
        self.decode_calls = int(state["decode_calls"])
        self.finish_seq = int(state["finish_seq"])
        self.futures = {}
        for s in self.pool:  # a call that was running at the checkpoint runs again
            if s.pending is not None:
                self._submit(s)

    def close(self) -> None:
        for future, _ in self.futures.values():
            future.cancel()
        self.futures = {}
        self.executor.shutdown(wait=False, cancel_futures=True)
