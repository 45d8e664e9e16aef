"""Tool-call protocol: code extraction, tool messages, and the multi-turn loop (fake model)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest

from spo.tools import ToolRunner, Transcript, extract_code, format_tool_output, tool_outcome
from spo.tools.sandbox import SandboxResult, available_isolation

# Loop tests run real code: isolated where this machine can, unisolated (harmless, fixed
# snippets) where it cannot, so they pass on any machine.
ISOLATED = any(reason is None for reason in available_isolation().values())
SANDBOX = {"isolation": "auto"} if ISOLATED else {"isolation": "none", "allow_unsafe": True}


def fence(code: str, tag: str = "python") -> str:
    return f"```{tag}\n{code}\n```"


def result(stdout="", stderr="", exit_code=0, reason=None, duration_s=0.1) -> SandboxResult:
    return SandboxResult(
        stdout=stdout,
        stderr=stderr,
        exit_code=exit_code,
        timed_out=reason in ("timeout", "cpu"),
        killed_reason=reason,
        truncated=False,
        duration_s=duration_s,
        isolation="none",
    )


# ------------------------------------------------------------------------- extract_code


def test_extract_code_takes_the_last_complete_python_block():
    text = f"First try:\n{fence('x = 1')}\nOops, fixed:\n{fence('x = 2', 'py')}\nDone."
    assert extract_code(text) == "x = 2\n"
    assert extract_code(fence("print(3)", "Python3")) == "print(3)\n"
    assert extract_code("  ```python  \r\nprint(4)\r\n  ```") == "print(4)\r\n"


@pytest.mark.parametrize(
    "text",
    [
        "no code here, the answer is 42",
        fence("print(1)", ""),  # untagged: not code
        fence("console.log(1)", "js"),
        fence("   \n"),  # empty block
        "inline ```python print(1)``` is not a block",
        f"{fence('x = 1')}\nand now\n```python\nprint(x",  # last block cut off
    ],
)
def test_extract_code_none(text):
    assert extract_code(text) is None


def test_extract_code_keeps_backticks_inside_strings():
    code = 's = "```"\nprint(s)'
    assert extract_code(fence(code)) == code + "\n"


# ------------------------------------------------------------------- format_tool_output


def test_format_plain_output():
    assert format_tool_output(result("42\n")) == "42"
    assert format_tool_output(result()) == "(no output)"


def test_format_error_shows_traceback_and_exit_code():
    text = format_tool_output(result("partial\n", "Traceback ...\nZeroDivisionError\n", 1))
    assert text == "partial\nTraceback ...\nZeroDivisionError\n[exit code 1]"


@pytest.mark.parametrize(
    ("reason", "exit_code", "note"),
    [
        ("timeout", None, "[killed: wall-clock time limit reached after 5.0 s]"),
        ("cpu", -24, "[killed: CPU time limit reached]"),
        ("output", None, "[killed: too much output]"),
        ("memory", 1, "[failed: memory limit exceeded]"),
        ("signal", -11, "[killed by signal 11]"),
    ],
)
def test_format_kill_notes(reason, exit_code, note):
    assert format_tool_output(result(exit_code=exit_code, reason=reason, duration_s=5.0)) == note


@pytest.mark.parametrize(
    ("exit_code", "reason", "outcome"),
    [
        (0, None, "ok"),
        (1, None, "error"),
        (None, "timeout", "timeout"),
        (-24, "cpu", "timeout"),
        (None, "output", "killed"),
        (1, "memory", "killed"),
        (-11, "signal", "killed"),
    ],
)
def test_tool_outcome(exit_code, reason, outcome):
    assert tool_outcome(result(exit_code=exit_code, reason=reason)) == outcome


def test_format_clips_head_and_tail():
    long = "".join(f"{i:04d}\n" for i in range(1000))
    text = format_tool_output(result(long), max_chars=200)
    assert len(text) <= 200
    assert text.startswith("0000\n0001\n") and text.endswith("0998\n0999")
    assert "characters omitted" in text
    with pytest.raises(ValueError, match="max_chars"):
        format_tool_output(result("x"), max_chars=10)


# ----------------------------------------------------------------------------- the loop


class ScriptedModel:
    """A fake `generate`: returns its replies in order and records what it was shown."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.seen: list[list[dict[str, str]]] = []

    def __call__(self, messages):
        self.seen.append(messages)
        return self.replies.pop(0)


def runner(**kw) -> ToolRunner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ToolRunner(**{**SANDBOX, **kw})


def test_loop_runs_code_and_feeds_output_back():
    model = ScriptedModel(
        f"Let me compute.\n{fence('print(123456789 * 987654321)')}",
        "The product is 121932631112635269.",
    )
    tr = runner().run("What is 123456789 * 987654321?", model)
    assert isinstance(tr, Transcript) and tr.stop_reason == "answer"
    assert [t.role for t in tr.turns] == ["user", "assistant", "tool", "assistant"]
    assert [t.generated for t in tr.turns] == [False, True, False, True]
    assert tr.turns[2].text == "121932631112635269"
    assert tr.turns[2].result is tr.tool_results[0] and tr.tool_results[0].ok
    # The second model call saw the whole conversation, tool output included.
    assert model.seen[1] == tr.messages()[:3]
    assert tr.final_text == "The product is 121932631112635269."
    assert tr.prompt_turns == 1 and tr.model_turns == 2 and tr.tool_time_s > 0


def test_loop_stops_at_max_turns_without_running_the_last_code():
    model = ScriptedModel(*[fence(f"print({i})") for i in range(3)])
    tr = runner(max_turns=3).run(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], model
    )
    assert tr.stop_reason == "max_turns" and tr.model_turns == 3
    assert [t.role for t in tr.turns] == ["system", "user"] + ["assistant", "tool"] * 2 + [
        "assistant"
    ]
    assert [t.text for t in tr.turns if t.role == "tool"] == ["0", "1"]
    assert len(tr.tool_results) == 2 and tr.prompt_turns == 2


def test_loop_reports_failures_to_the_model_and_continues():
    model = ScriptedModel(
        fence("1 / 0"),
        fence("while True:\n    pass"),
        "I give up.",
    )
    tr = runner(timeout_s=1.0).run("go", model)
    errors = [t.text for t in tr.turns if t.role == "tool"]
    assert "ZeroDivisionError" in errors[0] and errors[0].endswith("[exit code 1]")
    assert errors[1].startswith("[killed: wall-clock time limit reached")
    assert tr.stop_reason == "answer" and tr.final_text == "I give up."
    assert tr.tool_outcomes == ["error", "timeout"]  # from the real sandbox runs


def test_loop_keeps_engine_outputs_and_custom_tool_role():
    @dataclass
    class Output:
        text: str
        token_ids: list[int]

    outs = [Output(fence("print('hi')"), [1, 2]), Output("bye", [3])]
    tr = runner(tool_role="ipython").run("go", ScriptedModel(*outs))
    assert [t.generation for t in tr.turns if t.generated] == outs
    assert [t.role for t in tr.turns] == ["user", "assistant", "ipython", "assistant"]


def test_loop_rejects_bad_setup_and_bad_model_output():
    with pytest.raises(ValueError, match="max_turns"):
        runner(max_turns=0)
    with pytest.raises(TypeError, match=r"unknown sandbox option\(s\) \['timeout'\]"):
        runner(timeout=3)
    with pytest.raises(TypeError, match="generate must return a str"):
        runner().run("go", ScriptedModel(42))


def test_runner_resolves_isolation_up_front():
    r = runner()
    assert r.isolation in ("bwrap", "namespaces", "none")
    assert r.execute("print('x')").isolation == r.isolation
