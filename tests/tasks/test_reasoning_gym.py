"""reasoning-gym tasks: load, disjoint deterministic splits, the dataset's own scorer."""

from __future__ import annotations

import pickle

import pytest

from spo.tasks import TaskError, load_task
from spo.tasks.gym import ANSWER_FORMAT

pytest.importorskip("reasoning_gym")


@pytest.mark.parametrize("dataset", ["leg_counting", "basic_arithmetic"])
def test_loads_and_scores_a_correct_answer_one(dataset):
    task = load_task(f"reasoning_gym:{dataset}", train_size=20, test_size=10, seed=1)
    assert task.name == f"reasoning_gym:{dataset}"
    assert len(task.train) == 20 and len(task.test) == 10
    assert not {ex.id for ex in task.train} & {ex.id for ex in task.test}
    ex = task.test[0]
    assert ex.prompt.endswith(ANSWER_FORMAT) and ex.meta["source_dataset"] == dataset
    assert task.verifier(f"Let me think.\n<answer>{ex.answer}</answer>", ex) == 1.0
    assert task.verifier("<answer>definitely wrong</answer>", ex) == 0.0
    assert task.extract_answer(f"<answer>{ex.answer}</answer>") == ex.answer
    verifier = pickle.loads(pickle.dumps(task.verifier))
    assert verifier(f"<answer>{ex.answer}</answer>", ex) == 1.0


def test_deterministic_given_the_seed():
    a = load_task("reasoning_gym:leg_counting", train_size=8, test_size=4, seed=5)
    b = load_task("reasoning_gym:leg_counting", train_size=8, test_size=4, seed=5)
    assert a.train == b.train and a.test == b.test
    assert load_task("reasoning_gym:leg_counting", train_size=8, test_size=4, seed=6).test != a.test


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(TaskError) as err:
        load_task("reasoning_gym:leg_countin", train_size=4, test_size=2)
    message = str(err.value)
    assert "unknown reasoning-gym dataset 'leg_countin'" in message
    assert "did you mean leg_counting" in message and "\n" not in message


def test_rejects_file_options():
    with pytest.raises(TaskError, match="reward_fn"):
        load_task("reasoning_gym:leg_counting", reward_fn="exact")
