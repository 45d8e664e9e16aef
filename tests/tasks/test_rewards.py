"""RewardPool: isolation, timeouts, crashes and reward validation.

The verifiers here are module-level functions of this test module, so the pool's worker
processes import them by name (they inherit the parent's sys.path, which pytest extended
with this directory).
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import time

import numpy as np
import pytest

from spo.tasks import Example, load_task
from spo.tasks.rewards import RewardError, RewardPool, RewardResult, check_reward, verifier_name


def scripted(completion: str, example: Example) -> object:
    """Behaves as the completion says: a number, or sleep / raise / segv / exit / none."""
    if completion == "sleep":
        time.sleep(10**6)
    if completion == "raise":
        raise ValueError("verifier exploded")
    if completion == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if completion == "exit":
        os._exit(3)
    if completion == "none":
        return None
    if completion in ("true", "false"):
        return completion == "true"
    return float(completion)


def examples(n: int) -> list[Example]:
    return [Example(id=f"ex{i}", prompt=f"p{i}", answer=str(i)) for i in range(n)]


@pytest.fixture(scope="module")
def pool():
    with RewardPool(scripted, timeout=1.0, workers=2) as p:
        yield p


def test_scores_in_order_and_bools_become_floats(pool):
    result = pool(["0.25", "true", "false", "1", "0"], examples(5))
    assert isinstance(result, RewardResult)
    assert result.reward_B.dtype == np.float32
    np.testing.assert_array_equal(result.reward_B, [0.25, 1.0, 0.0, 1.0, 0.0])
    assert (result.timeouts, result.errors, result.failures) == (0, 0, [])


def test_sleeping_verifier_times_out_and_pool_keeps_working(pool):
    start = time.monotonic()
    result = pool(["sleep", "0.5"], examples(2))
    assert time.monotonic() - start < 30
    np.testing.assert_array_equal(result.reward_B, [0.0, 0.5])
    assert (result.timeouts, result.errors) == (1, 0)
    assert "ex0" in result.failures[0] and "timed out" in result.failures[0]
    again = pool(["0.75"] * 4, examples(4))
    np.testing.assert_array_equal(again.reward_B, [0.75] * 4)
    assert (again.timeouts, again.errors) == (0, 0)


def test_raising_verifier_is_counted_as_error(pool):
    result = pool(["raise", "1"], examples(2))
    np.testing.assert_array_equal(result.reward_B, [0.0, 1.0])
    assert (result.timeouts, result.errors) == (0, 1)
    assert "verifier exploded" in result.failures[0]


@pytest.mark.parametrize("death", ["segv", "exit"])
def test_dying_worker_is_counted_and_replaced(pool, death):
    result = pool([death, "1"], examples(2))
    np.testing.assert_array_equal(result.reward_B, [0.0, 1.0])
    assert (result.timeouts, result.errors) == (0, 1)
    assert "worker died" in result.failures[0]
    assert pool(["0.5"], examples(1)).reward_B.tolist() == [0.5]


def test_mixed_batch_keeps_good_rewards_in_order(pool):
    texts = ["1", "sleep", "raise", "0.5", "segv", "true", "0"]
    result = pool(texts, examples(len(texts)))
    np.testing.assert_array_equal(result.reward_B, [1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0])
    assert (result.timeouts, result.errors) == (1, 2)


@pytest.mark.parametrize(
    ("text", "shown"),
    [("1.5", "1.5, outside [0, 1]"), ("-0.1", "-0.1"), ("nan", "NaN"), ("none", "NoneType")],
)
def test_invalid_reward_is_an_error_naming_verifier_value_and_example(pool, text, shown):
    with pytest.raises(RewardError) as err:
        pool(["1", text], examples(2))
    message = str(err.value)
    assert f"{scripted.__module__}.scripted" in message and shown in message and "'ex1'" in message
    assert "\n" not in message
    assert pool(["1"], examples(1)).reward_B.tolist() == [1.0]  # still usable


def test_in_process_mode_counts_errors_and_validates():
    with RewardPool(scripted, workers=0) as inline:
        result = inline(["raise", "true", "0.5"], examples(3))
        np.testing.assert_array_equal(result.reward_B, [0.0, 1.0, 0.5])
        assert (result.timeouts, result.errors) == (0, 1)
        with pytest.raises(RewardError):
            inline(["2"], examples(1))


def test_batch_and_arguments_are_checked():
    with RewardPool(scripted, workers=0) as inline, pytest.raises(ValueError, match="examples"):
        inline(["1", "1"], examples(1))
    with pytest.raises(ValueError, match="timeout"):
        RewardPool(scripted, timeout=0)
    with pytest.raises(ValueError, match="workers"):
        RewardPool(scripted, workers=-1)
    closed = RewardPool(scripted, workers=1)
    closed.close()
    closed.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        closed(["1"], examples(1))


def test_check_reward_clips_float_noise_only():
    assert check_reward(1.0 + 1e-9, verifier=scripted, example_id="a") == 1.0
    assert check_reward(np.float64(0.3), verifier=scripted, example_id="a") == pytest.approx(0.3)
    assert check_reward(np.bool_(True), verifier=scripted, example_id="a") == 1.0
    with pytest.raises(RewardError):
        check_reward(math.inf, verifier=scripted, example_id="a")
    with pytest.raises(RewardError):
        check_reward("1", verifier=scripted, example_id="a")


def test_task_verifiers_are_picklable_and_run_in_workers(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(
        '{"prompt": "half?", "answer": "\\\\frac{1}{2}"}\n{"prompt": "q", "answer": "2"}\n'
    )
    math_task = load_task(str(data), train_size=None, test_size=1)
    arith = load_task("arithmetic", train_size=8, test_size=4)
    ex = arith.train[0]
    half = next(e for e in math_task.train + math_task.test if e.prompt == "half?")
    for verifier in (arith.verifier, math_task.verifier):
        assert pickle.loads(pickle.dumps(verifier)) is not None
    with RewardPool(arith.verifier, workers=1) as p:
        assert p([f"It is {ex.answer}.", "no idea"], [ex, ex]).reward_B.tolist() == [1.0, 0.0]
    with RewardPool(math_task.verifier, workers=1) as p:
        assert p(["The answer is $0.5$."], [half]).reward_B.tolist() == [1.0]


def test_verifier_name_is_readable():
    import functools

    assert verifier_name(scripted) == f"{scripted.__module__}.scripted"
    assert verifier_name(functools.partial(scripted, spec="x")).endswith(".scripted(spec='x')")


def test_throughput_after_warm_up_is_well_under_a_second():
    """64 arithmetic completions per batch: workers are reused, so no start-up per call."""
    task = load_task("arithmetic", train_size=64, test_size=8)
    texts = [f"The answer is {ex.answer}." for ex in task.train]
    with RewardPool(task.verifier, workers=2) as p:
        p(texts, task.train)  # warm-up: starts the workers
        start = time.perf_counter()
        for _ in range(3):
            result = p(texts, task.train)
        per_batch = (time.perf_counter() - start) / 3
    assert result.reward_B.tolist() == [1.0] * 64
    assert per_batch < 1.0, f"{per_batch:.3f} s per batch of 64"


def test_unpicklable_verifier_is_refused_up_front():
    with pytest.raises(TypeError, match="module-level function"):
        RewardPool(lambda completion, example: 1.0, workers=1)
    with RewardPool(lambda completion, example: 1.0, workers=0) as inline:  # in-process: fine
        assert inline(["x"], examples(1)).reward_B.tolist() == [1.0]
