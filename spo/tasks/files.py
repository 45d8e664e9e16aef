"""Dataset tasks: prompts and reference answers from a local file or saved HF dataset.

Readable: `.jsonl`, `.json` (a list of objects, or an object of equal-length columns),
`.parquet`, `.csv`, and a `datasets.save_to_disk` directory (a DatasetDict's "train" split
trains and its "test" split, when present, is held out). Nothing is downloaded.

Ids are the explicit id column when present, else `content_id(prompt, answer)`; rows with
the same content collapse into one prompt (they would share an id). The held-out split is
chosen by a seeded hash of each id, not by row position, so reordering the file changes
neither the split nor any id.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from spo.tasks import Example, Task, TaskError, content_id
from spo.tasks.verifiers import resolve_reward_fn

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
Rows = list[dict[str, Any]]


def looks_like_path(name: str) -> bool:
    """Whether a task name is meant as a file path (rather than a misspelt task name)."""
    return (
        any(sep in name for sep in ("/", "\\"))
        or name.startswith(("~", "."))
        or name.lower().endswith(SUFFIXES)
        or Path(name).exists()
    )


def load_file_task(
    path: str,
    *,
    train_size: int | None,
    test_size: int,
    seed: int,
    prompt_column: str,
    answer_column: str,
    id_column: str,
    test_path: str | None,
    reward_fn: str | None,
) -> Task:
    """Read `path`, build stable ids, split off `test_size` held-out prompts (or read them
    from `test_path`) and pick the verifier named by `reward_fn` (None = math-verify)."""
    verifier, extractor = resolve_reward_fn(reward_fn)
    columns = {"prompt_column": prompt_column, "answer_column": answer_column}
    splits = read_splits(path)
    rows = splits["train"] if "train" in splits else next(iter(splits.values()))
    examples = rows_to_examples(rows, path, id_column=id_column, **columns)

    held_out_rows = read_splits(test_path)["train"] if test_path else splits.get("test")
    if held_out_rows is not None:
        source = test_path or f"{path} (test split)"
        held_out = rows_to_examples(held_out_rows, source, id_column=id_column, **columns)
        test = seeded_order(held_out, seed)[:test_size]
        taken = {ex.id for ex in test} | {content_id(ex.prompt, ex.answer) for ex in test}
        pool = [
            ex
            for ex in examples
            if ex.id not in taken and content_id(ex.prompt, ex.answer) not in taken
        ]
        train_pool = seeded_order(pool, seed)
    else:
        if test_size >= len(examples):
            raise TaskError(
                f"{path} has {len(examples)} prompts, so test_size={test_size} leaves none "
                "for training; lower task.test_size or give task.test_path"
            )
        ordered = seeded_order(examples, seed)
        test, train_pool = ordered[:test_size], ordered[test_size:]

    if train_size is not None and train_size > len(train_pool):
        raise TaskError(
            f"train_size={train_size} but {path} has only {len(train_pool)} training prompts "
            f"({len(examples)} in all, {len(examples) - len(train_pool)} held out); lower "
            "task.train_size or set it to null to use all"
        )
    train = train_pool if train_size is None else train_pool[:train_size]
    return Task(name=path, train=train, test=test, verifier=verifier, extractor=extractor)


def seeded_order(examples: list[Example], seed: int) -> list[Example]:
    """Examples sorted by sha256(seed, id): a shuffle that ignores row order."""

    def key(ex: Example) -> str:
        return hashlib.sha256(f"{seed}\x00{ex.id}".encode()).hexdigest()

    return sorted(examples, key=key)


def rows_to_examples(
    rows: Rows, source: str, *, prompt_column: str, answer_column: str, id_column: str
) -> list[Example]:
    """Validate columns and build Examples with stable ids (see module docstring)."""
    if not rows:
        raise TaskError(f"{source} has no rows; give a dataset with at least one prompt")
    found = list(dict.fromkeys(k for row in rows for k in row))
    for role, column in (("prompt", prompt_column), ("answer", answer_column)):
        if column not in found:
            raise TaskError(
                f"{source} has no {role} column {column!r}; columns found: "
                f"{', '.join(map(repr, found))} (set task.{role}_column)"
            )
    explicit_ids = id_column in found
    if not explicit_ids and id_column != "id":
        raise TaskError(
            f"{source} has no id column {id_column!r}; columns found: "
            f"{', '.join(map(repr, found))} (set task.id_column, or 'id' to hash the content)"
        )

    examples: dict[str, Example] = {}
    for i, row in enumerate(rows):
        prompt = row.get(prompt_column)
        answer = row.get(answer_column)
        if not isinstance(prompt, str) or not prompt.strip():
            raise TaskError(
                f"{source} row {i}: {prompt_column!r} must be non-empty text, got {prompt!r}"
            )
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            raise TaskError(f"{source} row {i}: {answer_column!r} is empty; every row needs one")
        answer = answer if isinstance(answer, str) else _to_text(answer)
        if explicit_ids:
            raw_id = row.get(id_column)
            if raw_id is None or str(raw_id).strip() == "":
                raise TaskError(f"{source} row {i}: id column {id_column!r} is empty")
            ex_id = str(raw_id)
            if ex_id in examples:
                raise TaskError(
                    f"{source} has duplicate id {ex_id!r} (rows with the same "
                    f"{id_column!r}); make the ids unique or drop the id column to hash content"
                )
        else:
            ex_id = content_id(prompt, answer)
            if ex_id in examples:
                continue  # same prompt and answer again: one prompt, one id
        meta = {k: v for k, v in row.items() if k not in (prompt_column, answer_column)}
        examples[ex_id] = Example(id=ex_id, prompt=prompt, answer=answer, meta=meta)
    return list(examples.values())


def _to_text(value: Any) -> str:
    """Non-text answers as text: numbers as written (whole floats lose ".0"), others as JSON."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


# --- reading -------------------------------------------------------------------------------


def read_splits(path: str) -> dict[str, Rows]:
    """Rows of a file ({"train": rows}) or of each split of a saved dataset directory."""
    p = Path(path).expanduser()
    if not p.exists():
        raise TaskError(
            f"task file {path!r} does not exist; give a path to a .jsonl/.json/.parquet/.csv "
            "file or a datasets.save_to_disk directory"
        )
    try:
        if p.is_dir():
            return _read_saved_dataset(p)
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            return {"train": _read_jsonl(p)}
        if suffix == ".json":
            return {"train": _read_json(p)}
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return {"train": pq.read_table(p).to_pylist()}
        if suffix == ".csv":
            with p.open(newline="", encoding="utf-8") as f:
                return {"train": list(csv.DictReader(f))}
    except TaskError:
        raise
    except Exception as e:  # corrupt or unreadable file: say which and why, in one line
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TaskError(f"cannot read {path!r} ({type(e).__name__}: {reason})") from e
    raise TaskError(
        f"cannot read {path!r}: unknown file type {p.suffix!r}; use one of "
        f"{', '.join(SUFFIXES)} or a datasets.save_to_disk directory"
    )


def _read_jsonl(p: Path) -> Rows:
    rows: Rows = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(
                    f"{p} line {n} is not valid JSON ({e.msg}); fix or remove it"
                ) from None
            if not isinstance(row, dict):
                raise TaskError(f"{p} line {n} is not a JSON object; each line must be one")
            rows.append(row)
    return rows


def _read_json(p: Path) -> Rows:
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(p)  # JSON Lines saved with a .json suffix
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) == 1:
            keys = list(data)
            return [
                dict(zip(keys, values, strict=True)) for values in zip(*data.values(), strict=True)
            ]
    raise TaskError(f"{p} must hold a list of objects or an object of equal-length column lists")


def _read_saved_dataset(p: Path) -> dict[str, Rows]:
    if not any((p / name).exists() for name in ("dataset_dict.json", "state.json")):
        raise TaskError(
            f"{str(p)!r} is a directory but not a datasets.save_to_disk directory; give a "
            "file or a directory written by Dataset.save_to_disk"
        )
    import datasets

    loaded = datasets.load_from_disk(str(p))
    if isinstance(loaded, datasets.DatasetDict):
        if not loaded:
            raise TaskError(f"{str(p)!r} is a DatasetDict with no splits")
        return {split: ds.to_list() for split, ds in loaded.items()}
    return {"train": loaded.to_list()}
