"""The user-data path: a messy file as people have them, the file-task defaults (every row
trains, a small proportional held-out share), 1-based line numbers in every message,
task.skip_bad_rows, and the one console line at start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spo.tasks import TaskError, content_id, load_task

GOOD = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(30)]
MIXED = [  # (line, text) after the 30 good lines
    json.dumps({"prompt": "What is 0 plus 0?", "answer": "0"}),  # line 31: duplicate of 1
    json.dumps({"prompt": "😀 What is 3+3? 🚀", "answer": "6"}, ensure_ascii=False),  # emoji
    json.dumps({"prompt": "三加三等于多少？", "answer": "六"}, ensure_ascii=False),  # CJK
    json.dumps({"prompt": "כמה זה 5 ועוד 5?", "answer": "10"}, ensure_ascii=False),  # RTL
    json.dumps({"prompt": "missing answer"}),  # line 35
    json.dumps({"prompt": "null answer", "answer": None}),  # line 36
    json.dumps({"prompt": "", "answer": "1"}),  # line 37: empty prompt
    json.dumps({"prompt": "numeric answer", "answer": 42}),
    json.dumps({"prompt": "extra columns", "answer": "x", "source": "web", "level": 3}),
    '{"prompt": "broken", "answer": ',  # line 40: invalid JSON
]


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def mixed_file(tmp_path: Path, *, blank: tuple[int, ...] = ()) -> str:
    """The mixed file; lines in `blank` emptied (blank lines are skipped, numbers kept)."""
    lines = [json.dumps(r) for r in GOOD] + MIXED
    lines = ["" if n in blank else x for n, x in enumerate(lines, 1)]
    return write_lines(tmp_path / "mixed.jsonl", lines)


def test_strict_default_names_the_first_bad_line_one_based(tmp_path):
    with pytest.raises(TaskError) as err:
        load_task(mixed_file(tmp_path))
    assert "line 40 is not valid JSON" in str(err.value) and "skip_bad_rows" in str(err.value)
    with pytest.raises(TaskError) as err:
        load_task(mixed_file(tmp_path, blank=(40,)))
    msg = str(err.value)
    assert "mixed.jsonl line 35: 'answer' is missing" in msg and "\n" not in msg, msg
    with pytest.raises(TaskError, match="line 36: 'answer' is empty"):
        load_task(mixed_file(tmp_path, blank=(35, 40)))
    with pytest.raises(TaskError, match="line 37: 'prompt' must be non-empty"):
        load_task(mixed_file(tmp_path, blank=(35, 36, 40)))


def test_skip_bad_rows_keeps_everything_usable_and_counts(tmp_path):
    task = load_task(mixed_file(tmp_path), skip_bad_rows=True)
    info = task.info
    assert info["rows"] == 40 and info["duplicates"] == 1 and info["skipped"] == 4
    assert any("line 35, line 36, line 37, line 40" in w for w in info["warnings"]), info
    examples = {ex.prompt: ex for ex in task.train + task.test}
    assert len(examples) == 30 + 5  # 30 good + emoji, CJK, RTL, numeric, extra columns
    assert examples["😀 What is 3+3? 🚀"].answer == "6"
    assert examples["三加三等于多少？"].answer == "六"
    assert examples["כמה זה 5 ועוד 5?"].id == content_id("כמה זה 5 ועוד 5?", "10")
    assert examples["numeric answer"].answer == "42"
    assert dict(examples["extra columns"].meta) == {"source": "web", "level": 3}
    # the default held-out share of a file: min(128, 10%) -> 3 of 35
    assert len(task.test) == 3 and len(task.train) == 32
    assert "task " in task.summary() and "32 training / 3 held-out prompts" in task.summary()
    assert "1 duplicates dropped, 4 bad rows skipped" in task.summary()


@pytest.mark.parametrize(("rows", "train", "test"), [(2000, 1872, 128), (241, 217, 24)])
def test_file_defaults_use_every_row(tmp_path, rows, train, test):
    lines = [json.dumps({"prompt": f"q{i}", "answer": str(i)}) for i in range(rows)]
    task = load_task(write_lines(tmp_path / "big.jsonl", lines))
    assert (len(task.train), len(task.test)) == (train, test)
    assert not {e.id for e in task.train} & {e.id for e in task.test}


def test_tiny_file_still_trains_with_a_warning(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "answer": str(i)}) for i in range(5)]
    task = load_task(write_lines(tmp_path / "tiny.jsonl", lines))
    assert len(task.train) == 5 and task.test == []
    assert len(task.info["warnings"]) == 1 and "too few to hold out" in task.info["warnings"][0]


def test_test_path_default_takes_all_of_it(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", [json.dumps(r) for r in GOOD])
    test = write_lines(tmp_path / "test.jsonl", [json.dumps(r) for r in GOOD[:7]])
    task = load_task(train, test_path=test)
    assert (len(task.train), len(task.test)) == (23, 7)


def test_procedural_tasks_keep_their_sizes():
    task = load_task("arithmetic")
    assert (len(task.train), len(task.test)) == (256, 128)
    assert "rows" not in task.info
    with pytest.raises(TaskError, match="does not take skip_bad_rows"):
        load_task("arithmetic", skip_bad_rows=True)


def test_row_numbers_in_csv_and_json_are_one_based(tmp_path):
    csv_path = tmp_path / "a.csv"
    csv_path.write_text('prompt,answer\n"two\nlines",1\nok,2\n,3\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"a\.csv line 5: 'prompt'"):
        load_task(str(csv_path), test_size=0)
    json_path = tmp_path / "a.json"
    json_path.write_text(json.dumps([{"prompt": "a", "answer": "1"}, {"prompt": "b"}]))
    with pytest.raises(TaskError, match=r"a\.json row 2: 'answer' is missing"):
        load_task(str(json_path), test_size=0)


def test_same_explicit_id_twice_is_a_duplicate_not_an_error(tmp_path):
    row = json.dumps({"id": "a", "prompt": "p", "answer": "1"})
    other = json.dumps({"id": "b", "prompt": "q", "answer": "2"})
    task = load_task(write_lines(tmp_path / "ids.jsonl", [row, row, other]), test_size=0)
    assert len(task.train) == 2 and task.info["duplicates"] == 1
    clash = json.dumps({"id": "a", "prompt": "other", "answer": "3"})
    with pytest.raises(TaskError, match="duplicate id 'a' \\(line 2"):
        load_task(write_lines(tmp_path / "clash.jsonl", [row, clash]), test_size=0)


def test_train_prints_one_task_line_and_the_warning(tmp_path, tiny_model_dir, capsys):
    from spo.cli import main

    args = [
        f"model.path={tiny_model_dir}",
        f"task.name={mixed_file(tmp_path)}",
        "task.skip_bad_rows=true",
        "steps=1",
        "samples_per_step=4",
        "rollout.max_new_tokens=4",
        "reward.workers=0",
        "log.tensorboard=false",
        "log.progress=false",
        f"run_dir={tmp_path / 'run'}",
    ]
    assert main(["train", *args]) == 0
    out, err = capsys.readouterr()
    task_lines = [line for line in out.splitlines() if line.startswith("task ")]
    assert len(task_lines) == 1, out
    assert task_lines[0].endswith(
        "32 training / 3 held-out prompts (from 40 rows; 1 duplicates dropped, 4 bad rows skipped)"
    )
    assert sum(line.startswith("warning: skipped 4 bad rows") for line in err.splitlines()) == 1


def test_eval_without_held_out_prompts_is_one_line(tmp_path, tiny_model_dir, capsys):
    from spo.cli import main

    lines = [json.dumps({"prompt": f"q{i}", "answer": str(i)}) for i in range(5)]
    args = [
        f"model.path={tiny_model_dir}",
        f"task.name={write_lines(tmp_path / 'tiny.jsonl', lines)}",
        "eval_every=1",
        f"run_dir={tmp_path / 'run'}",
    ]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("warning:") and "too few to hold out" in err[0]
    assert err[-1].startswith("spo: error: eval_every=1 but task") and len(err) == 2
