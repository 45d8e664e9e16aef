"""Few-shot prefixes (`task.fewshot`): parsing lists, conversations and files, one-line
errors for bad input, the arithmetic_tool default (a worked example that is true), and the
one chat rule (`chat_kwargs`) that maps tool turns to `rollout.tool_role`."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from spo.cli import main
from spo.tasks import TaskError, load_task
from spo.tasks.arithmetic_tool import FEWSHOT
from spo.tasks.fewshot import parse_fewshot
from spo.tools import extract_code
from spo.train.config import ConfigError, chat_kwargs, load_config, task_kwargs

ONE = [
    {"role": "user", "content": "2 + 2?"},
    {"role": "assistant", "content": "```python\nprint(2 + 2)\n```"},
    {"role": "tool", "content": "4"},
    {"role": "assistant", "content": "4"},
]
TWO = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]


def test_messages_conversations_and_files_give_the_same_prefix(tmp_path):
    want = tuple(ONE + TWO)
    assert parse_fewshot(ONE + TWO) == want  # one conversation of several exchanges
    assert parse_fewshot([ONE, TWO]) == want  # two conversations
    assert parse_fewshot([{"messages": ONE}, {"messages": TWO}]) == want
    (tmp_path / "a.json").write_text(json.dumps([ONE, TWO]))
    assert parse_fewshot(str(tmp_path / "a.json")) == want
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(m) for m in ONE + TWO) + "\n\n")
    assert parse_fewshot(str(tmp_path / "b.jsonl")) == want  # a message per line
    (tmp_path / "c.jsonl").write_text(f"{json.dumps(ONE)}\n{json.dumps({'messages': TWO})}\n")
    assert parse_fewshot(str(tmp_path / "c.jsonl")) == want  # a conversation per line
    assert parse_fewshot([]) == ()
    # extra keys are dropped: only role and content reach the chat template
    assert parse_fewshot([{**TWO[0], "name": "x"}, TWO[1]]) == tuple(TWO)


@pytest.mark.parametrize(
    "value, message",
    [
        ([{"role": "system", "content": "x"}], "role 'system' is not one of user, assistant"),
        ([{"role": "assistant", "content": "x"}], "starts with a user message"),
        ([{"role": "user", "content": "x"}], "ends with an assistant message"),
        ([TWO[0], {"role": "tool", "content": "4"}], "'tool' message cannot follow a 'user'"),
        ([TWO[0], {"role": "assistant", "content": 3}], "message 2: a message is"),
        ([ONE, "text"], "conversation"),
        (7, "must be a list of chat messages or a .json/.jsonl path"),
    ],
)
def test_bad_fewshot_is_one_clear_error(value, message):
    with pytest.raises(TaskError, match=message):
        parse_fewshot(value)


def test_bad_fewshot_files(tmp_path):
    with pytest.raises(TaskError, match=r"cannot read task\.fewshot file .*No such file"):
        parse_fewshot(str(tmp_path / "missing.jsonl"))
    with pytest.raises(TaskError, match=r"must end in \.json or \.jsonl"):
        parse_fewshot(str(tmp_path / "shots.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TWO[0]) + "\n{oops\n")
    with pytest.raises(TaskError, match=r"bad.jsonl:2: not valid JSON"):
        parse_fewshot(str(bad))
    (tmp_path / "d.json").write_text('{"role": "user"}')
    with pytest.raises(TaskError, match="must hold a JSON list"):
        parse_fewshot(str(tmp_path / "d.json"))


def test_cli_reports_bad_fewshot_in_one_line(tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", f"task.fewshot={tmp_path / 'none.jsonl'}"])
    line = err.getvalue().strip()
    assert code == 2
    assert line.startswith("spo: error: cannot read task.fewshot file") and "\n" not in line
    with pytest.raises(ConfigError, match="role 'robot'"):
        load_config(None, ["task.fewshot=[{role: robot, content: x}]"])


def test_arithmetic_tool_default_is_a_true_worked_example():
    task = load_task("arithmetic_tool", train_size=4, test_size=4, seed=0)
    assert task.fewshot == FEWSHOT
    assert len(FEWSHOT) == 8  # two examples
    for question, code_turn, tool, answer in (FEWSHOT[:4], FEWSHOT[4:]):
        expression = question["content"].removeprefix("What is ").removesuffix("?")
        code = extract_code(code_turn["content"])
        assert code == f"print({expression})\n"
        assert code_turn["content"].startswith("```python")  # the model copies the first line
        # the tool turn is what the sandbox would print, the answer what the verifier wants
        assert tool["content"] == str(eval(expression, {"__builtins__": {}}))
        assert answer["content"] == tool["content"]
        assert not any(ex.prompt == question["content"] for ex in task.train + task.test)
    # other built-in tasks bring none: their prompts do not change
    assert load_task("arithmetic", train_size=4, test_size=4, seed=0).fewshot == ()


def test_chat_kwargs_is_the_one_rule():
    def kwargs(*overrides):
        cfg = load_config(None, list(overrides))
        return chat_kwargs(cfg, load_task(**task_kwargs(cfg)))

    tool = kwargs("task.name=arithmetic_tool")
    assert tool["fewshot"] == list(FEWSHOT) and tool["system_prompt"]
    as_user = kwargs("task.name=arithmetic_tool", "rollout.tool_role=user")["fewshot"]
    assert [m["role"] for m in as_user] == ["user", "assistant", "user", "assistant"] * 2
    assert kwargs("task.name=arithmetic_tool", "task.fewshot=[]")["fewshot"] == []
    assert kwargs()["fewshot"] == [] and kwargs()["system_prompt"] is None
    own = kwargs('task.fewshot=[{role: user, content: "Say hi."}, {role: assistant, content: hi}]')
    assert own["fewshot"] == TWO
    assert "fewshot" not in task_kwargs(load_config(None, []))


PRESET = Path(__file__).resolve().parents[2] / "configs" / "demo-agentic.yaml"


def test_agentic_demo_preset_validates_and_uses_the_tool_prefix():
    cfg = load_config(str(PRESET))
    assert cfg.task.name == "arithmetic_tool" and cfg.rollout.max_turns > 1
    assert cfg.rollout.mode == "async" and cfg.algo == "spo"
    kw = chat_kwargs(cfg, load_task(**task_kwargs(cfg)))
    assert kw["fewshot"] == list(FEWSHOT) and "```python" in kw["system_prompt"]
    # the tool-free reference run of the same preset validates too
    assert load_config(str(PRESET), ["rollout.max_turns=1"]).rollout.max_turns == 1
    makefile = (PRESET.parents[1] / "Makefile").read_text()
    assert "spo demo configs/demo-agentic.yaml" in makefile


def test_agentic_demo_preset_trains_a_step_on_the_tiny_model(tiny_model_dir, tmp_path):
    from spo.tools.sandbox import available_isolation

    if all(reason is not None for reason in available_isolation().values()):
        pytest.skip(f"no isolated sandbox level works here: {available_isolation()}")
    small = [
        f"model.path={tiny_model_dir}",
        "steps=1",
        "samples_per_step=4",
        "rollout.batch_size=4",
        "rollout.max_new_tokens=8",
        "optim.micro_batch_size=4",
        "task.train_size=8",
        "task.test_size=2",
        "eval_size=2",
        "reward.workers=0",
        "log.tensorboard=false",
        "log.progress=false",
        f"run_dir={tmp_path / 'run'}",
    ]
    assert main(["train", str(PRESET), *small]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert any("tools/turns_per_episode" in r for r in rows)
