"""Dataset tasks: prompts and reference answers from a local file or saved HF dataset.

Readable: `.jsonl`, `.json` (a list of objects, or an object of equal-length columns),
`.parquet`, `.csv`, and a `datasets.save_to_disk` directory (a DatasetDict's "train" split
trains and its "test" split, when present, is held out). Nothing is downloaded.

Ids are the explicit id column when present, else `content_id(prompt, answer)`; rows with
the same content collapse into one prompt (they would share an id) and are counted as
duplicates dropped. The held-out split is chosen by a seeded hash of each id, not by row
position, so reordering the file changes neither the split nor any id.

Defaults for a user's file: every row trains except a small held-out share, min(128, 10%)
of the prompts (none, with a warning, for a file under 10 prompts); `test_path` (or a
saved dataset's "test" split) replaces that share. Every message names the file's 1-based
line (JSONL, CSV) or row (JSON list, parquet, saved dataset). A row without a prompt or
answer is an error, unless `skip_bad_rows` skips it (and invalid JSON lines) and counts it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo.tasks.base import Example, Task, TaskError, content_id
from spo.tasks.verifiers import resolve_reward_fn

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
HELD_OUT_MAX = 128
HELD_OUT_SHARE = 0.10
"""Default held-out prompts of a file without test_path: min(HELD_OUT_MAX, 10%)."""
SKIP_HINT = "or set task.skip_bad_rows=true to skip such rows"


@dataclass
class Table:
    """Rows read from one file or split, with where each came from (for messages)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "line 12" / "row 3", 1-based
    skipped: list[str] = field(default_factory=list)  # unreadable lines (skip_bad_rows)


@dataclass
class RowStats:
    rows: int = 0
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)  # where-labels of rows skipped


def looks_like_path(name: str) -> bool:
    """Whether a task name is meant as a file path (rather than a misspelt task name)."""
    return (
        any(sep in name for sep in ("/", "\\"))
        or name.startswith(("~", "."))
        or name.lower().endswith(SUFFIXES)
        or Path(name).exists()
    )


def default_held_out(n_prompts: int) -> int:
    """min(128, 10% of the prompts), rounded down."""
    return min(HELD_OUT_MAX, int(n_prompts * HELD_OUT_SHARE))


def load_file_task(
    path: str,
    *,
    train_size: int | None,
    test_size: int | None,
    seed: int,
    prompt_column: str,
    answer_column: str,
    id_column: str,
    test_path: str | None,
    reward_fn: str | None,
    skip_bad_rows: bool = False,
) -> Task:
    """Read `path`, build stable ids, hold out `test_size` prompts (None = min(128, 10%)),
    or read them from `test_path`, and pick the verifier named by `reward_fn` (None =
    math-verify). Task.info counts rows, duplicates dropped and rows skipped."""
    verifier, extractor = resolve_reward_fn(reward_fn)
    columns = {
        "prompt_column": prompt_column,
        "answer_column": answer_column,
        "id_column": id_column,
        "skip_bad_rows": skip_bad_rows,
    }
    splits = read_splits(path, skip_bad_rows=skip_bad_rows)
    table = splits["train"] if "train" in splits else next(iter(splits.values()))
    examples, stats = rows_to_examples(table, path, **columns)
    warnings: list[str] = []

    held_out_table = (
        read_splits(test_path, skip_bad_rows=skip_bad_rows)["train"]
        if test_path
        else splits.get("test")
    )
    if held_out_table is not None:
        source = test_path or f"{path} (test split)"
        held_out, held_stats = rows_to_examples(held_out_table, source, **columns)
        stats.duplicates += held_stats.duplicates
        stats.skipped += held_stats.skipped
        test = seeded_order(held_out, seed)
        test = test if test_size is None else test[:test_size]
        taken = {ex.id for ex in test} | {content_id(ex.prompt, ex.answer) for ex in test}
        pool = [
            ex
            for ex in examples
            if ex.id not in taken and content_id(ex.prompt, ex.answer) not in taken
        ]
        train_pool = seeded_order(pool, seed)
        if not train_pool:
            raise TaskError(
                f"every prompt of {path} is also in the held-out set {source}; "
                "give a different task.test_path"
            )
    else:
        n = len(examples)
        if test_size is None:
            test_size = default_held_out(n)
            if test_size == 0:
                warnings.append(
                    f"{path} has only {n} prompts, too few to hold out 10%: all of them "
                    "train and none is held out (in-training eval and `spo eval` need "
                    "task.test_path or task.test_size)"
                )
        elif test_size >= n:
            raise TaskError(
                f"{path} has {n} prompts, so test_size={test_size} leaves none "
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
    if stats.skipped:
        stats.skipped.sort(key=lambda where: int(where.split()[-1]))
        shown = ", ".join(stats.skipped[:5]) + (", ..." if len(stats.skipped) > 5 else "")
        warnings.append(
            f"skipped {len(stats.skipped)} bad rows of {path} (no usable prompt or answer, "
            f"or not valid JSON; task.skip_bad_rows=true): {shown}"
        )
    info = {
        "rows": stats.rows,
        "duplicates": stats.duplicates,
        "skipped": len(stats.skipped),
        "warnings": warnings,
    }
    return Task(
        name=path, train=train, test=test, verifier=verifier, extractor=extractor, info=info
    )


def seeded_order(examples: list[Example], seed: int) -> list[Example]:
    """Examples sorted by sha256(seed, id): a shuffle that ignores row order."""

    def key(ex: Example) -> str:
        return hashlib.sha256(f"{seed}\x00{ex.id}".encode()).hexdigest()

    return sorted(examples, key=key)


def rows_to_examples(
    table: Table,
    source: str,
    *,
    prompt_column: str,
    answer_column: str,
    id_column: str,
    skip_bad_rows: bool = False,
) -> tuple[list[Example], RowStats]:
    """Validate columns and build Examples with stable ids (see module docstring)."""
    rows = table.rows
    stats = RowStats(rows=len(rows) + len(table.skipped), skipped=list(table.skipped))
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
    for row, where in zip(rows, table.where, strict=True):
        prompt = row.get(prompt_column)
        answer = row.get(answer_column)
        problem = None
        if not isinstance(prompt, str) or not prompt.strip():
            got = "missing" if prompt_column not in row else f"{prompt!r}"
            problem = f"{prompt_column!r} must be non-empty text, got {got}"
        elif answer is None or (isinstance(answer, str) and not answer.strip()):
            state = "missing" if answer_column not in row else "empty"
            problem = f"{answer_column!r} is {state}; every row needs one"
        if problem is not None:
            if skip_bad_rows:
                stats.skipped.append(where)
                continue
            raise TaskError(f"{source} {where}: {problem} ({SKIP_HINT})")
        answer = answer if isinstance(answer, str) else _to_text(answer)
        if explicit_ids:
            raw_id = row.get(id_column)
            if raw_id is None or str(raw_id).strip() == "":
                raise TaskError(f"{source} {where}: id column {id_column!r} is empty")
            ex_id = str(raw_id)
            if ex_id in examples:
                if (examples[ex_id].prompt, examples[ex_id].answer) == (prompt, answer):
                    stats.duplicates += 1  # the same row twice
                    continue
                raise TaskError(
                    f"{source} has duplicate id {ex_id!r} ({where} and an earlier row with "
                    f"the same {id_column!r}); make the ids unique or drop the id column to "
                    "hash content"
                )
        else:
            ex_id = content_id(prompt, answer)
            if ex_id in examples:
                stats.duplicates += 1  # same prompt and answer again: one prompt, one id
                continue
        meta = {k: v for k, v in row.items() if k not in (prompt_column, answer_column)}
        examples[ex_id] = Example(id=ex_id, prompt=prompt, answer=answer, meta=meta)
    if not examples:
        raise TaskError(
            f"{source}: all {stats.rows} rows were skipped as bad (no prompt or answer); "
            f"check task.prompt_column={prompt_column!r} / task.answer_column={answer_column!r}"
        )
    return list(examples.values()), stats


def _to_text(value: Any) -> str:
    """Non-text answers as text: numbers as written (whole floats lose ".0"), others as JSON."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


# --- reading -------------------------------------------------------------------------------


def read_splits(path: str, *, skip_bad_rows: bool = False) -> dict[str, Table]:
    """Rows of a file ({"train": table}) or of each split of a saved dataset directory."""
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
            return {"train": _read_jsonl(p, skip_bad_rows)}
        if suffix == ".json":
            return {"train": _read_json(p, skip_bad_rows)}
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return {"train": _numbered(pq.read_table(p).to_pylist())}
        if suffix == ".csv":
            return {"train": _read_csv(p)}
    except TaskError:
        raise
    except Exception as e:  # corrupt or unreadable file: say which and why, in one line
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TaskError(f"cannot read {path!r} ({type(e).__name__}: {reason})") from e
    raise TaskError(
        f"cannot read {path!r}: unknown file type {p.suffix!r}; use one of "
        f"{', '.join(SUFFIXES)} or a datasets.save_to_disk directory"
    )


def _numbered(rows: list[dict[str, Any]]) -> Table:
    """Rows without lines of their own (JSON list, parquet, saved dataset): row 1, 2, ..."""
    return Table(rows=rows, where=[f"row {i}" for i in range(1, len(rows) + 1)])


def _read_jsonl(p: Path, skip_bad_rows: bool = False) -> Table:
    table = Table()
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if skip_bad_rows:
                    table.skipped.append(f"line {n}")
                    continue
                raise TaskError(
                    f"{p} line {n} is not valid JSON ({e.msg}); fix or remove it ({SKIP_HINT})"
                ) from None
            if not isinstance(row, dict):
                if skip_bad_rows:
                    table.skipped.append(f"line {n}")
                    continue
                raise TaskError(f"{p} line {n} is not a JSON object; each line must be one")
            table.rows.append(row)
            table.where.append(f"line {n}")
    return table


def _read_csv(p: Path) -> Table:
    table = Table()
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            table.rows.append(row)
            table.where.append(f"line {reader.line_num}")  # a quoted row may span lines
    return table


def _read_json(p: Path, skip_bad_rows: bool = False) -> Table:
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(p, skip_bad_rows)  # JSON Lines saved with a .json suffix
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return _numbered(data)
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) == 1:
            keys = list(data)
            return _numbered(
                [
                    dict(zip(keys, values, strict=True))
                    for values in zip(*data.values(), strict=True)
                ]
            )
    raise TaskError(f"{p} must hold a list of objects or an object of equal-length column lists")


def _read_saved_dataset(p: Path) -> dict[str, Table]:
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
        return {split: _numbered(ds.to_list()) for split, ds in loaded.items()}
    return {"train": _numbered(loaded.to_list())}
