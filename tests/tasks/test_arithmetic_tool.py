"""The built-in arithmetic_tool task: correct answers, disjoint stable splits, tool prompt."""

from __future__ import annotations

import pytest

from spo.tasks import TaskError, load_task


def test_answers_splits_and_system_prompt():
    task = load_task("arithmetic_tool", train_size=40, test_size=10, seed=3)
    assert len(task.train) == 40 and len(task.test) == 10
    assert not {e.id for e in task.train} & {e.id for e in task.test}
    for ex in task.train + task.test:
        expression = ex.prompt.removeprefix("What is ").removesuffix("?")
        a, op, b, *rest = expression.split()
        value = {"*": int(a) * int(b), "+": int(a) + int(b)}[op]
        if rest:
            value = value + int(rest[1]) if rest[0] == "+" else value - int(rest[1])
        assert ex.answer == str(value)
        assert task.verifier(f"The answer is {value}", ex) == 1.0
        assert task.verifier(f"{value + 1}", ex) == 0.0
    assert "```python" in task.system_prompt
    # the held-out set does not depend on train_size; the same seed gives the same task
    assert load_task("arithmetic_tool", train_size=5, test_size=10, seed=3).test == task.test


def test_rejects_options_of_other_tasks():
    with pytest.raises(TaskError, match="difficulty"):
        load_task("arithmetic_tool", difficulty="hard")
