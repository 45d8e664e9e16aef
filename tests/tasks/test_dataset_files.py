"""Dataset-file tasks: formats, stable ids, splits, math-verify, user verifiers, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spo.tasks import Example, TaskError, content_id, load_task

ROWS = [{"prompt": f"What is {i} squared?", "answer": str(i * i)} for i in range(20)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def ids(examples: list[Example]) -> set[str]:
    return {ex.id for ex in examples}


def test_jsonl_ids_are_content_hashes_and_survive_reordering(tmp_path):
    task = load_task(write_jsonl(tmp_path / "a.jsonl", ROWS), train_size=None, test_size=5)
    assert len(task.train) == 15 and len(task.test) == 5
    assert not ids(task.train) & ids(task.test)
    for ex in task.train + task.test:
        assert ex.id == content_id(ex.prompt, ex.answer)
    shuffled = load_task(
        write_jsonl(tmp_path / "b.jsonl", ROWS[::-1]), train_size=None, test_size=5
    )
    assert shuffled.test == task.test and shuffled.train == task.train
    assert load_task(str(tmp_path / "a.jsonl"), train_size=None, test_size=5, seed=1).test != (
        task.test
    )


def test_train_size_takes_a_prefix_and_keeps_the_test_set(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    small = load_task(path, train_size=4, test_size=5)
    full = load_task(path, train_size=None, test_size=5)
    assert small.train == full.train[:4] and small.test == full.test


def test_explicit_id_column_is_used_and_extra_columns_go_to_meta(tmp_path):
    rows = [{**r, "uid": f"q{i}", "level": i % 3} for i, r in enumerate(ROWS)]
    task = load_task(
        write_jsonl(tmp_path / "a.jsonl", rows), train_size=None, test_size=2, id_column="uid"
    )
    assert ids(task.train + task.test) == {f"q{i}" for i in range(20)}
    ex = next(e for e in task.train if e.id == "q4")
    assert ex.meta == {"uid": "q4", "level": 1} and ex.answer == "16"


def test_duplicate_content_collapses_to_one_prompt(tmp_path):
    task = load_task(
        write_jsonl(tmp_path / "a.jsonl", ROWS + ROWS[:3]), train_size=None, test_size=0
    )
    assert len(task.train) == 20 and task.test == []


def test_other_columns_and_numeric_answers(tmp_path):
    rows = [{"q": f"q{i}", "a": i + 0.0} for i in range(6)]
    task = load_task(
        write_jsonl(tmp_path / "a.jsonl", rows),
        train_size=None,
        test_size=1,
        prompt_column="q",
        answer_column="a",
    )
    assert sorted(ex.answer for ex in task.train + task.test) == [str(i) for i in range(6)]


def test_json_parquet_csv_and_saved_dataset_agree(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    reference = load_task(write_jsonl(tmp_path / "a.jsonl", ROWS), train_size=None, test_size=4)
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    columns = {"prompt": [r["prompt"] for r in ROWS], "answer": [r["answer"] for r in ROWS]}
    (tmp_path / "columns.json").write_text(json.dumps(columns))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    (tmp_path / "a.csv").write_text(
        "prompt,answer\n" + "".join(f"{r['prompt']},{r['answer']}\n" for r in ROWS)
    )
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    for name in ("list.json", "columns.json", "a.parquet", "a.csv", "saved"):
        task = load_task(str(tmp_path / name), train_size=None, test_size=4)
        assert task.train == reference.train and task.test == reference.test, name


def test_saved_dataset_dict_uses_its_test_split(tmp_path):
    import datasets

    held_out = [{"prompt": "What is 1 + 1?", "answer": "2"}]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(held_out)}
    ).save_to_disk(str(tmp_path / "dd"))
    task = load_task(str(tmp_path / "dd"), train_size=None, test_size=10)
    assert [ex.prompt for ex in task.test] == ["What is 1 + 1?"]
    assert len(task.train) == 20


def test_test_path_is_held_out_and_removed_from_train(tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    test_path = write_jsonl(tmp_path / "test.jsonl", ROWS[:3])
    task = load_task(train_path, train_size=None, test_size=100, test_path=test_path)
    assert len(task.test) == 3 and len(task.train) == 17
    assert not ids(task.train) & ids(task.test)


@pytest.mark.parametrize(
    ("reply", "answer", "reward"),
    [
        ("The answer is $0.5$.", r"\frac{1}{2}", 1.0),
        (r"So \boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{1+x}", "x+1", 1.0),
        (r"\boxed{3}", "4", 0.0),
        ("I think it is 42", "42", 1.0),
        ("no answer here", "42", 0.0),
    ],
)
def test_math_verify_is_the_default(tmp_path, reply, answer, reward):
    rows = [{"prompt": "q", "answer": answer}, {"prompt": "r", "answer": "1"}]
    task = load_task(write_jsonl(tmp_path / "m.jsonl", rows), train_size=None, test_size=0)
    example = next(ex for ex in task.train if ex.prompt == "q")
    assert task.verifier(reply, example) == reward


def test_exact_reward_fn(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": "Paris"}])
    task = load_task(path, train_size=None, test_size=0, reward_fn="exact")
    ex = task.train[0]
    assert task.verifier("  Paris\n", ex) == 1.0
    assert task.verifier(r"It is \boxed{Paris}", ex) == 1.0
    assert task.verifier("It is Paris", ex) == 0.0
    assert task.extract_answer("<answer>Paris</answer>") == "Paris"


def test_user_reward_fn_from_file_and_module(tmp_path, monkeypatch):
    (tmp_path / "my_reward.py").write_text(
        "def score(completion, answer):\n    return completion.strip() == answer\n"
    )
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": "7"}])
    by_file = load_task(
        path, train_size=None, test_size=0, reward_fn=f"{tmp_path / 'my_reward.py'}:score"
    )
    assert by_file.verifier(" 7 ", by_file.train[0]) is True
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = load_task(path, train_size=None, test_size=0, reward_fn="my_reward:score")
    assert by_module.verifier("8", by_module.train[0]) is False
    assert by_module.extract_answer("so 7") == "7"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "neither a built-in verifier"),
        (":score", "not a verifier spec"),
        ("/no/such/file.py:score", "does not exist"),
        ("no_such_module_xyz:score", "importing 'no_such_module_xyz' failed"),
        ("json:no_such_function", "has no attribute 'no_such_function'"),
        ("json:__doc__", "is not callable"),
    ],
)
def test_bad_reward_fn_specs(tmp_path, spec, message):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    with pytest.raises(TaskError, match=message):
        load_task(path, train_size=None, test_size=1, reward_fn=spec)


def test_user_module_that_fails_to_import(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('kaput')\n")
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    with pytest.raises(TaskError, match="RuntimeError: kaput"):
        load_task(path, train_size=None, test_size=1, reward_fn=f"{tmp_path / 'broken.py'}:f")


def one_line_error(**kwargs) -> str:
    with pytest.raises(TaskError) as err:
        load_task(**kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_error_cases(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", ROWS)
    msg = one_line_error(name="nonexistent_task")
    assert "unknown task 'nonexistent_task'" in msg and "reasoning_gym:<dataset>" in msg
    assert "does not exist" in one_line_error(name=str(tmp_path / "missing.jsonl"))
    msg = one_line_error(name=good, prompt_column="question", test_size=1)
    assert "no prompt column 'question'" in msg and "'prompt', 'answer'" in msg
    assert "no answer column 'solution'" in one_line_error(
        name=good, answer_column="solution", test_size=1
    )
    assert "no id column 'uid'" in one_line_error(name=good, id_column="uid", test_size=1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "has no rows" in one_line_error(name=str(empty))
    dup = write_jsonl(tmp_path / "dup.jsonl", [{**r, "id": "same"} for r in ROWS[:2]])
    assert "duplicate id 'same'" in one_line_error(name=dup, test_size=0)
    msg = one_line_error(name=good, train_size=50, test_size=5)
    assert "train_size=50" in msg and "only 15 training prompts" in msg
    assert "leaves none for training" in one_line_error(name=good, test_size=20)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{oops\n')
    assert "line 2 is not valid JSON" in one_line_error(name=str(bad))
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "", "answer": "1"}])
    assert "line 1:" in one_line_error(name=blank)
    (tmp_path / "plain_dir").mkdir()
    assert "not a datasets.save_to_disk directory" in one_line_error(
        name=str(tmp_path / "plain_dir")
    )
    (tmp_path / "x.txt").write_text("hello")
    assert "unknown file type '.txt'" in one_line_error(name=str(tmp_path / "x.txt"))
    (tmp_path / "corrupt.parquet").write_bytes(b"not parquet")
    assert "cannot read" in one_line_error(name=str(tmp_path / "corrupt.parquet"))
    assert "does not take difficulty" in one_line_error(name=good, difficulty="easy")
    assert "task name is empty" in one_line_error(name="")
