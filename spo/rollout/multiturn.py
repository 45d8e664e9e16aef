"""Multi-turn tool-integrated rollouts, kept as token ids: the model's turns exactly as sampled.

One episode (SPO paper, agentic setting; up to `max_turns` model turns, paper: 8):

    prompt ─► model turn (text + ```python block) ─► tool message ─► model turn ─► … ─► answer

A `Sample` holds the episode as one token sequence: `prompt_tokens`, then `completion_ids`,
which interleave the generated turns with tool messages. `loss_mask` is 1 on generated
tokens and 0 on tool messages (the tool's output and the chat-template tokens around it),
`logp` is the behaviour log-prob of each generated token (0 under mask 0), and
`turn_versions` records the policy version that sampled each model turn (the async
scheduler's staleness).

No re-tokenisation: a model turn's ids are appended as the engine returned them; the next
turn is decoded from `prompt_tokens + completion_ids`, and the tool message is appended as
ids built once from the chat template (`ToolMessages`). So the training forward pass sees
exactly the sequence the rollout engine saw, and `spo.policy.logprobs.completion_logp` on
`pack(..., loss_mask=sample.loss_mask)` scores exactly the generated ids.

A turn ends at eos or `max_new_tokens`; the engine does not stop at the end of a code
block (a model that keeps writing after its block has its last block run: `extract_code`).

What a "tool call" is, and what running it returns, is a `ToolEnv`: `PythonTool` runs the
turn's last ```python block in the sandbox (`spo.tools.ToolRunner`); benchmarks plug in
their own (e.g. a tool that only sleeps). A call returns a `ToolOutput` (the message text
and its outcome, one of `spo.tools.OUTCOMES`) or a plain str (outcome "ok": the tool
returned). Each sample keeps, per call, the text as the model saw it and the outcome
(`tool_outputs`, `tool_outcomes`) for the run's metrics and samples log
(`Sample.transcript()`, `tool_stats`).

Training runs episodes through `spo.rollout.scheduler.RolloutScheduler` (async, staleness,
checkpointed pool). Evaluation, calibration and `spo init-values` run them through
`Episodes.run`: the same turn and tool functions (`apply_turns`, `apply_tool`), one round
of decoding per turn with per-call `SamplingSettings`, every episode to its end.
`sample_texts` is the one entry point for "what the policy answers to these prompts":
single-turn generation when there is no tool, episodes when there is.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import numpy as np

from spo.rollout import Rollouts, SamplingSettings
from spo.tools import OUTCOMES, ToolRunner, extract_code, format_tool_output, tool_outcome


@dataclass(frozen=True)
class ToolOutput:
    """What one tool call returned: the tool message text and its outcome (`OUTCOMES`)."""

    text: str
    outcome: str = "ok"


@dataclass
class Sample:
    """One (prompt, multi-turn response) episode; see the module docstring.

    uid: issue number, unique in a run. prompt: index of the training prompt. group: uid of
    the group it belongs to (its own uid for single-stream samples).
    pending: the tool call being run (None: ready to decode, or finished).
    stop_reason: None while in flight; "answer" (a turn without a tool call that ended
    with eos), "length" (a turn cut at max_new_tokens without a tool call), "max_turns".
    ended: the last model turn ended with eos.
    tool_outputs, tool_outcomes: per tool call, the message text as the model saw it and
    its outcome ("ok", "error", "timeout", "killed").
    """

    uid: int
    prompt_idx: int
    group: int
    prompt_tokens: list[int]
    completion_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    turn_versions: list[int] = field(default_factory=list)
    turn_texts: list[str] = field(default_factory=list)
    tool_calls: int = 0
    tool_outputs: list[str] = field(default_factory=list)
    tool_outcomes: list[str] = field(default_factory=list)
    pending: str | None = None
    ended: bool = False
    stop_reason: str | None = None
    reward: float | None = None
    finish_seq: int = -1  # order of finishing (admission order)

    def context(self) -> list[int]:
        """Every token so far: what the next model turn is decoded from."""
        return self.prompt_tokens + self.completion_ids

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def ready(self) -> bool:
        """Waiting for the decoder (not on a tool, not finished)."""
        return self.pending is None and self.stop_reason is None

    @property
    def final_text(self) -> str:
        """The last model turn: where the verifier looks for the answer."""
        return self.turn_texts[-1] if self.turn_texts else ""

    def staleness(self, version: int) -> int:
        """Policy updates since its oldest model turn was sampled (0: none decoded yet)."""
        return version - min(self.turn_versions) if self.turn_versions else 0

    def transcript(self, tool_role: str = "tool") -> list[dict[str, str]]:
        """The episode after the prompt as chat messages: each model turn, then the output
        of its tool call (with "outcome") when it made one that ran."""
        out: list[dict[str, str]] = []
        for i, text in enumerate(self.turn_texts):
            out.append({"role": "assistant", "content": text})
            if i < len(self.tool_outputs):
                out.append(
                    {
                        "role": tool_role,
                        "content": self.tool_outputs[i],
                        "outcome": self.tool_outcomes[i],
                    }
                )
        return out

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Sample:
        return cls(**state)


class ToolEnv(Protocol):
    def call(self, sample: Sample, text: str) -> str | None:
        """The tool call in model turn `text` (e.g. its code), or None when it answers."""
        ...

    def run(self, call: str) -> ToolOutput | str:
        """Execute one call; the tool message text, with its outcome (runs in a worker thread)."""
        ...


class PythonTool:
    """The ```python tool: the last fenced block of a turn, run in the sandbox."""

    def __init__(self, runner: ToolRunner):
        self.runner = runner

    def call(self, sample: Sample, text: str) -> str | None:
        return extract_code(text)

    def run(self, call: str) -> ToolOutput:
        result = self.runner.execute(call)
        text = format_tool_output(result, self.runner.max_output_chars)
        return ToolOutput(text, tool_outcome(result))


class ToolMessages:
    """Token ids of a tool message, built from the chat template once (no model text in it).

    The template renders [user, assistant "A"] and [user, assistant "A", tool SENTINEL] +
    generation prompt; what the second adds after the first, split at the sentinel, wraps
    every tool output. The model's turn ended with its own eos token id; the template text
    after that eos (e.g. "\\n") comes first. A turn cut off without eos gets the eos first.
    """

    _SENTINEL = "\x00TOOL-OUTPUT\x00"

    def __init__(self, tokenizer, *, role: str = "tool"):
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token
        if not eos:
            raise ValueError("the tokenizer names no eos token; tool messages need one")
        chat = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
        base = tokenizer.apply_chat_template(chat, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*chat, {"role": role, "content": self._SENTINEL}],
            tokenize=False,
            add_generation_prompt=True,
        )
        if not full.startswith(base) or self._SENTINEL not in full:
            raise ValueError(
                f"the chat template re-renders earlier turns or drops role {role!r}; "
                "multi-turn rollouts need an append-only template (try rollout.tool_role=user)"
            )
        end = base.rfind(eos)
        if end < 0:
            raise ValueError(f"the chat template does not end assistant turns with {eos!r}")
        self.eos = eos
        trailer = base[end + len(eos) :]
        self.before, self.after = full[len(base) :].split(self._SENTINEL)
        self.before = trailer + self.before

    def ids(self, output: str, *, ended: bool) -> list[int]:
        text = ("" if ended else self.eos) + self.before + output + self.after
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def apply_turns(
    samples: list[Sample], rollouts: Rollouts, *, version: int, env: ToolEnv | None, max_turns: int
) -> None:
    """Append one decoded model turn to each sample; set `pending` or `stop_reason`."""
    for s, ids, lp, ended, text in zip(
        samples,
        rollouts.completion_ids,
        rollouts.logp,
        rollouts.finished,
        rollouts.texts,
        strict=True,
    ):
        s.completion_ids += list(ids)
        s.loss_mask += [1] * len(ids)
        s.logp += [float(x) for x in lp.tolist()]
        s.turn_versions.append(int(version))
        s.turn_texts.append(text)
        s.ended = bool(ended)
        call = env.call(s, text) if env is not None else None
        if call is None:
            s.stop_reason = "answer" if ended else "length"
        elif len(s.turn_versions) >= max_turns:
            s.stop_reason = "max_turns"  # nobody would read this call's output
        else:
            s.pending = call


def apply_tool(sample: Sample, output: ToolOutput | str, messages: ToolMessages) -> None:
    """Append a tool message as context: loss mask 0, no behaviour log-prob."""
    if isinstance(output, str):
        output = ToolOutput(output)
    if output.outcome not in OUTCOMES:
        raise ValueError(f"tool outcome must be one of {OUTCOMES}, got {output.outcome!r}")
    ids = messages.ids(output.text, ended=sample.ended)
    sample.completion_ids += ids
    sample.loss_mask += [0] * len(ids)
    sample.logp += [0.0] * len(ids)
    sample.tool_calls += 1
    sample.tool_outputs.append(output.text)
    sample.tool_outcomes.append(output.outcome)
    sample.pending = None


def tool_stats(samples: list[Sample]) -> dict[str, float]:
    """Per-step metrics of multi-turn episodes (keys under "tools/"):

    turns_per_episode: mean model turns; call_rate: share of model turns that made a tool
    call that ran; calls_<outcome>: tool calls with each outcome; episodes_with_calls: share
    of episodes that called the tool at least once; episodes_code_ok: share of episodes
    that called it and whose every call ran without error ("ok").
    """
    turns = np.array([len(s.turn_texts) for s in samples], dtype=np.float64)
    calls = np.array([len(s.tool_outcomes) for s in samples], dtype=np.float64)
    outcomes = [o for s in samples for o in s.tool_outcomes]
    stats = {
        "tools/turns_per_episode": float(turns.mean()),
        "tools/call_rate": float(calls.sum() / turns.sum()) if turns.sum() else 0.0,
        "tools/episodes_with_calls": float((calls > 0).mean()),
        "tools/episodes_code_ok": float(
            np.mean([bool(s.tool_outcomes) and set(s.tool_outcomes) == {"ok"} for s in samples])
        ),
    }
    for outcome in OUTCOMES:
        stats[f"tools/calls_{outcome}"] = float(outcomes.count(outcome))
    return stats


def safe_run(env: ToolEnv, call: str) -> ToolOutput | str:
    """`env.run(call)`; a tool that raises becomes an "error" message to the model."""
    try:
        return env.run(call)
    except Exception as e:  # a broken tool is a message to the model, not a crash
        return ToolOutput(f"[tool error: {type(e).__name__}: {e}]", "error")


def abandoned(timeout: float) -> ToolOutput:
    """The message of a tool call that did not return within `timeout` seconds."""
    return ToolOutput(f"[tool call abandoned: no result after {timeout:g} s]", "timeout")


@dataclass
class Episodes:
    """How a multi-turn episode runs outside training: up to `max_turns` model turns, the
    tool calls of each turn run by `env` concurrently on `workers` threads, each abandoned
    ("timeout") after `tool_timeout` seconds."""

    env: ToolEnv
    messages: ToolMessages
    max_turns: int
    tool_timeout: float = 30.0
    workers: int = 4

    def run(
        self, engine, prompt_tokens: list[list[int]], *, seed: int, sampling: SamplingSettings
    ) -> list[Sample]:
        """One episode per prompt row (`sampling.n` rows per prompt, prompt-major), finished.

        Turn t decodes every episode still going in one `engine.generate` call with seed
        `seed` (t = 0: the single-turn call's draws) or `turn_seed(seed, t)`.
        """
        rows = sampling.repeat(prompt_tokens)
        one = replace(sampling, n=1)  # the rows are repeated here
        samples = [Sample(i, i, i, list(p)) for i, p in enumerate(rows)]
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="spo-eval-tool")
        try:
            turn = 0
            while ready := [s for s in samples if s.ready]:
                rollouts = engine.generate(
                    [s.context() for s in ready], seed=turn_seed(seed, turn), sampling=one
                )
                apply_turns(ready, rollouts, version=0, env=self.env, max_turns=self.max_turns)
                calling = [s for s in ready if s.pending is not None]
                futures = [pool.submit(safe_run, self.env, s.pending) for s in calling]
                deadline = time.monotonic() + self.tool_timeout
                for s, future in zip(calling, futures, strict=True):
                    try:
                        output = future.result(timeout=max(deadline - time.monotonic(), 0.0))
                    except FutureTimeout:
                        future.cancel()
                        output = abandoned(self.tool_timeout)
                    apply_tool(s, output, self.messages)
                turn += 1
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return samples


def turn_seed(seed: int, turn: int) -> int:
    """The generation seed of turn `turn` of an evaluation episode (turn 0: `seed`)."""
    return seed if turn == 0 else seed * 1_000_003 + 7_919 * turn


def sample_texts(
    engine,
    prompt_tokens: list[list[int]],
    *,
    seed: int,
    sampling: SamplingSettings,
    episodes: Episodes | None = None,
) -> tuple[list[str], list[Sample] | None]:
    """What the policy answers: `sampling.n` texts per prompt (prompt-major), the text the
    verifier scores — the completion, or with `episodes` (tool use) each episode's last
    model turn — and the episodes themselves (None without a tool)."""
    if episodes is None or episodes.max_turns <= 1:
        return engine.generate(prompt_tokens, seed=seed, sampling=sampling).texts, None
    done = episodes.run(engine, prompt_tokens, seed=seed, sampling=sampling)
    return [s.final_text for s in done], done


def python_episodes(
    tokenizer,
    *,
    max_turns: int,
    tool_role: str,
    tool_timeout: float,
    workers: int,
    output_chars: int = 2048,
) -> Episodes:
    """The sandboxed ```python tool of a run as `Episodes` (its `env` and tool `messages`
    serve the training scheduler too); each tool message is clipped to `output_chars`
    characters. Raises `spo.tools.sandbox.SandboxError` when the sandbox cannot be set up
    and ValueError when the chat template cannot hold tool messages."""
    runner = ToolRunner(
        max_turns, tool_role=tool_role, timeout_s=tool_timeout, max_output_chars=output_chars
    )
    messages = ToolMessages(tokenizer, role=tool_role)
    # the backstop: the sandbox itself kills a call at tool_timeout
    return Episodes(PythonTool(runner), messages, max_turns, tool_timeout + 30.0, workers)
