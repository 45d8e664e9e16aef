"""The built-in arithmetic task: determinism, disjoint splits, difficulty spread, verifier."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from spo.tasks import TaskError, load_task
from spo.tasks.arithmetic import LEVELS, MIXES, arithmetic_verify, parse_difficulty

PROMPT = re.compile(r"What is (\d+) ([-+*]) (\d+)\? Reply with only the number\.")


def arithmetic(**kwargs):
    return load_task("arithmetic", **{"train_size": 256, "test_size": 128, **kwargs})


def test_deterministic_given_the_seed():
    a, b = arithmetic(seed=3), arithmetic(seed=3)
    assert a.train == b.train and a.test == b.test
    assert arithmetic(seed=4).test != a.test


def test_splits_are_disjoint_and_ids_unique():
    task = arithmetic(train_size=400, test_size=200, difficulty="all")
    train_ids = [ex.id for ex in task.train]
    test_ids = [ex.id for ex in task.test]
    assert len(set(train_ids)) == 400 and len(set(test_ids)) == 200
    assert not set(train_ids) & set(test_ids)
    assert not {ex.prompt for ex in task.train} & {ex.prompt for ex in task.test}


def test_held_out_set_does_not_depend_on_train_size():
    assert arithmetic(train_size=10).test == arithmetic(train_size=300).test
    assert arithmetic(train_size=50).train == arithmetic(train_size=300).train[:50]


def test_answers_are_correct():
    task = arithmetic(difficulty="all", train_size=300)
    for ex in task.train + task.test:
        a, op, b = PROMPT.fullmatch(ex.prompt).groups()
        assert int(ex.answer) == eval(
            f"{a} {op} {b}"
        )  # the prompt regex allows only digits and one operator
        assert arithmetic_verify(f"The answer is {ex.answer}.", ex) == 1.0


def test_default_mix_has_a_spread_of_difficulties():
    task = arithmetic()
    for split in (task.train, task.test):
        levels = Counter(ex.meta["level"] for ex in split)
        assert set(levels) == set(MIXES["default"])
        assert max(levels.values()) - min(levels.values()) <= 1  # dealt round-robin
        assert {ex.meta["difficulty"] for ex in split} == {
            i for i, lvl in enumerate(LEVELS, 1) if lvl.name in MIXES["default"]
        }


def test_small_levels_run_out_gracefully_and_then_error():
    task = arithmetic(difficulty="add1,add2", train_size=600, test_size=100)
    levels = Counter(ex.meta["level"] for ex in task.train)
    assert levels["add1"] == 100 - 50  # half of the 100 one-digit sums were held out
    with pytest.raises(TaskError, match="distinct problems"):
        arithmetic(difficulty="add1", train_size=80, test_size=40)


def test_difficulty_presets_lists_and_ranks():
    assert parse_difficulty(None) == MIXES["default"]
    assert parse_difficulty("hard") == MIXES["hard"]
    assert parse_difficulty("add1, 1") == ("add1", LEVELS[0].name)
    task = arithmetic(difficulty="mul1", train_size=40, test_size=20)
    assert {ex.meta["level"] for ex in task.train} == {"mul1"}
    with pytest.raises(TaskError, match="unknown arithmetic difficulty 'impossible'"):
        arithmetic(difficulty="impossible")
    with pytest.raises(TaskError, match="unknown arithmetic difficulty '99'"):
        arithmetic(difficulty="99")


@pytest.mark.parametrize(
    ("reply", "answer", "reward"),
    [
        ("The answer is 1,234.", "1234", 1.0),
        ("1234", "1234", 1.0),
        ("12 + 3 = 15", "15", 1.0),
        ("15\n\nI hope that helps! 2", "15", 0.0),  # the last number counts
        ("-12", "-12", 1.0),
        ("The result is −12.", "-12", 1.0),
        ("7 - 19 = -12", "-12", 1.0),
        ("12", "-12", 0.0),
        ("15.0", "15", 1.0),
        ("15.5", "15", 0.0),
        ("fifteen", "15", 0.0),
        ("", "15", 0.0),
    ],
)
def test_verifier_hand_cases(reply, answer, reward):
    task = arithmetic(train_size=1, test_size=1)
    example = task.train[0].__class__(id="x", prompt="q", answer=answer)
    assert task.verifier(reply, example) == reward


def test_extract_answer():
    task = arithmetic(train_size=1, test_size=1)
    assert task.extract_answer("So 1,000 + 234 = 1,234.") == "1234"
    assert task.extract_answer("I don't know") is None


def test_rejects_options_it_does_not_use():
    with pytest.raises(TaskError, match="reward_fn"):
        arithmetic(reward_fn="exact")
    with pytest.raises(TaskError, match="train_size must be at least 1"):
        arithmetic(train_size=0)
