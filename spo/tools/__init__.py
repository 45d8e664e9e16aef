"""Tool-call protocol for multi-turn tool-integrated reasoning (the model-free half).

The model writes Python in a fenced block; the runtime runs it in the sandbox
(`spo.tools.sandbox.run_python`) and appends the output as a tool message; the model continues,
up to `max_turns` model turns (the SPO paper's agentic setting uses 8):

    user ─► assistant (text + ```python block) ─► tool (output) ─► assistant ─► … ─► answer

- `extract_code(text)`: the body of the **last** ```python (or ```py) block of a turn, or
  None. Last, because a turn that revises its code ends with the version it means to run
  (and an engine that stops generation at the end of a block leaves exactly one). None if
  that last block is not closed: code cut off by the token limit is not a program, and
  running an earlier block instead would answer a question the model no longer asks.
  Fences must start a line. Plain ``` blocks are not code: models also use them to quote
  output.
- `format_tool_output(result)`: the tool message — stdout, then stderr (tracebacks), then a
  bracketed status line when the run failed ("[exit code 1]", "[killed: wall-clock time
  limit reached after 5.0 s]"), clipped to `max_chars` keeping head and tail.
- `tool_outcome(result)`: the run in one word, for metrics: "ok" (exit status 0),
  "error" (the code raised or exited non-zero), "timeout" (wall-clock or CPU limit),
  "killed" (the sandbox stopped it for output, memory or a signal). `OUTCOMES` lists them.
- `ToolRunner(max_turns=8, **sandbox_kwargs).run(messages, generate)`: the loop. It stops
  when a model turn has no code block ("answer") or after `max_turns` model turns
  ("max_turns"; the code of that last turn is not run — nobody would read its output).

The transcript is kept per turn (role, text, and for model turns whatever `generate`
returned), so the trainer can tokenise turn by turn, take the generated token ids and
log-probs of model turns as they were sampled (no re-tokenisation drift), and mask tool
and prompt turns out of the loss (`Turn.generated` is False for them). `generate` may
return a str or any object with a `.text` attribute (e.g. an engine output carrying token
ids and log-probs), which is kept as `Turn.generation`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spo.tools.sandbox import SandboxResult, resolve_isolation, run_python

__all__ = [
    "OUTCOMES",
    "ToolRunner",
    "Transcript",
    "Turn",
    "extract_code",
    "format_tool_output",
    "tool_outcome",
]

OUTCOMES = ("ok", "error", "timeout", "killed")

# An opening fence at the start of a line, tagged python/py (any case), the code, and a
# closing fence at the start of a line.
_CODE_BLOCK = re.compile(
    r"^[ \t]*```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)^[ \t]*```[ \t]*$",
    re.DOTALL | re.MULTILINE | re.IGNORECASE,
)
_OPENING_FENCE = re.compile(
    r"^[ \t]*```[ \t]*(?:python3?|py)[ \t]*\r?$", re.MULTILINE | re.IGNORECASE
)
_SANDBOX_KWARGS = set(inspect.signature(run_python).parameters) - {"code"}

Message = Mapping[str, str]
Generate = Callable[[list[dict[str, str]]], Any]


def extract_code(text: str) -> str | None:
    """The last complete fenced ```python block in `text` (its body), or None if there is none."""
    blocks = list(_CODE_BLOCK.finditer(text))
    openings = list(_OPENING_FENCE.finditer(text))
    if not blocks or openings[-1].start() > blocks[-1].start():
        return None  # no block, or the last one is cut off: not a program to run
    code = blocks[-1].group(1)
    return code if code.strip() else None


def format_tool_output(result: SandboxResult, max_chars: int = 2048) -> str:
    """The tool message for one run: output, errors, and a status line when it failed."""
    if max_chars < 64:
        raise ValueError(f"max_chars must be >= 64, got {max_chars}")
    parts = [s.rstrip("\n") for s in (result.stdout, result.stderr) if s.strip()]
    note = _status_note(result)
    text = _clip("\n".join(parts), max_chars)
    if note is not None:
        return f"{text}\n[{note}]" if text else f"[{note}]"
    return text or "(no output)"


def tool_outcome(result: SandboxResult) -> str:
    """One of `OUTCOMES` for a sandbox run (see the module docstring)."""
    if result.killed_reason in ("timeout", "cpu"):
        return "timeout"
    if result.killed_reason is not None:
        return "killed"
    return "ok" if result.exit_code == 0 else "error"


def _status_note(result: SandboxResult) -> str | None:
    reason = result.killed_reason
    if reason == "timeout":
        return f"killed: wall-clock time limit reached after {result.duration_s:.1f} s"
    if reason == "cpu":
        return "killed: CPU time limit reached"
    if reason == "output":
        return "killed: too much output"
    if reason == "memory":
        return "failed: memory limit exceeded"
    if reason == "signal":
        return f"killed by signal {-(result.exit_code or 0)}"
    if result.exit_code not in (0, None):
        return f"exit code {result.exit_code}"
    return None


def _clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    marker = "\n[... {} characters omitted ...]\n"
    budget = max_chars - len(marker.format(len(text)))
    head, tail = budget - budget // 2, budget // 2
    return text[:head] + marker.format(len(text) - head - tail) + text[len(text) - tail :]


@dataclass
class Turn:
    """One message of a transcript.

    role: "system", "user", "assistant" or the tool role ("tool" by default).
    text: the message content exactly as the model saw or produced it.
    generated: True for model turns (trainable tokens); False for prompt and tool turns.
    generation: for model turns, what `generate` returned (a str or an engine output).
    result: for tool turns, the sandbox result behind the text.
    """

    role: str
    text: str
    generated: bool = False
    generation: Any = None
    result: SandboxResult | None = None


@dataclass
class Transcript:
    """A finished multi-turn episode.

    turns: prompt messages, then alternating model and tool turns.
    stop_reason: "answer" (the last model turn had no code block) or "max_turns".
    """

    turns: list[Turn]
    stop_reason: str
    prompt_turns: int = 0
    tool_results: list[SandboxResult] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        """Chat messages ({"role", "content"}) for a chat template."""
        return [{"role": t.role, "content": t.text} for t in self.turns]

    @property
    def final_text(self) -> str:
        """The last model turn: where a verifier looks for the answer."""
        return next((t.text for t in reversed(self.turns) if t.generated), "")

    @property
    def model_turns(self) -> int:
        return sum(t.generated for t in self.turns)

    @property
    def tool_outcomes(self) -> list[str]:
        """`tool_outcome` of each tool call, in order."""
        return [tool_outcome(r) for r in self.tool_results]

    @property
    def tool_time_s(self) -> float:
        """Wall-clock seconds spent in the sandbox."""
        return sum(r.duration_s for r in self.tool_results)


class ToolRunner:
    """Runs the model ⇄ Python-tool loop for one prompt at a time (stateless, thread-safe).

    max_turns: most model turns per episode (>= 1).
    tool_role: role of tool messages; some chat templates want "user" or "ipython".
    max_output_chars: clip of each tool message (`format_tool_output`).
    **sandbox_kwargs: passed to `run_python` (timeout_s, memory_mb, isolation, ...). The
        isolation is resolved here, once, so a machine without a sandbox fails at start-up
        with SandboxError rather than at the first tool call.
    """

    def __init__(
        self,
        max_turns: int = 8,
        *,
        tool_role: str = "tool",
        max_output_chars: int = 2048,
        **sandbox_kwargs: Any,
    ):
        if not isinstance(max_turns, int) or max_turns < 1:
            raise ValueError(f"max_turns must be an int >= 1, got {max_turns!r}")
        unknown = set(sandbox_kwargs) - _SANDBOX_KWARGS
        if unknown:
            raise TypeError(
                f"unknown sandbox option(s) {sorted(unknown)}; valid: {sorted(_SANDBOX_KWARGS)}"
            )
        self.max_turns = max_turns
        self.tool_role = tool_role
        self.max_output_chars = max_output_chars
        self.sandbox_kwargs = dict(sandbox_kwargs)
        self.sandbox_kwargs["isolation"] = resolve_isolation(
            sandbox_kwargs.get("isolation", "auto"),
            sandbox_kwargs.get("allow_unsafe", False),
            sandbox_kwargs.get("python"),
        )

    @property
    def isolation(self) -> str:
        return self.sandbox_kwargs["isolation"]

    def execute(self, code: str) -> SandboxResult:
        """Run one code block in the sandbox with this runner's limits."""
        return run_python(code, **self.sandbox_kwargs)

    def run(self, messages: str | Sequence[Message], generate: Generate) -> Transcript:
        """Alternate `generate(messages)` and code execution until an answer or `max_turns`.

        messages: the prompt, a str (one user message) or chat messages with "role" and
            "content". `generate` receives the whole conversation so far as a new list of
            {"role", "content"} dicts each turn and returns the model's next message.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        turns = [Turn(str(m["role"]), str(m["content"])) for m in messages]
        transcript = Transcript(turns=turns, stop_reason="max_turns", prompt_turns=len(turns))
        for turn in range(self.max_turns):
            output = generate([{"role": t.role, "content": t.text} for t in turns])
            text = _text_of(output)
            turns.append(Turn("assistant", text, generated=True, generation=output))
            code = extract_code(text)
            if code is None:
                transcript.stop_reason = "answer"
                break
            if turn == self.max_turns - 1:
                break
            result = self.execute(code)
            transcript.tool_results.append(result)
            tool_text = format_tool_output(result, self.max_output_chars)
            turns.append(Turn(self.tool_role, tool_text, result=result))
        return transcript


def _text_of(output: Any) -> str:
    if isinstance(output, str):
        return output
    text = getattr(output, "text", None)
    if not isinstance(text, str):
        raise TypeError(
            f"generate must return a str or an object with a str .text, got {type(output).__name__}"
        )
    return text
