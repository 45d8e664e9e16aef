"""Offline tracker estimates (spec §3): the file written by `spo init-values`.

A parquet table with one row per prompt: `prompt_id` (the task's stable id), `successes`,
`trials`, `value` (= successes/trials, for reading) and `prompt`. Rows are matched to a
task by `prompt_id`, never by position, so the file stays valid when the dataset is
reordered or grows; it can be reused by every later run on the same prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ValuesFileError(ValueError):
    """An unusable values file; the message is one line for the user."""


COLUMNS = ("prompt_id", "successes", "trials")


def write_values(
    path: str | Path,
    prompt_ids: list[str],
    successes: np.ndarray,
    trials: np.ndarray,
    prompts: list[str] | None = None,
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trials = np.asarray(trials, dtype=np.float64)
    successes = np.asarray(successes, dtype=np.float64)
    table = {
        "prompt_id": pa.array(prompt_ids, pa.string()),
        "successes": pa.array(successes),
        "trials": pa.array(trials),
        "value": pa.array(
            np.divide(successes, trials, out=np.zeros_like(trials), where=trials > 0)
        ),
    }
    if prompts is not None:
        table["prompt"] = pa.array(prompts, pa.string())
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(table), tmp)
    tmp.replace(path)
    return path


def load_values(path: str | Path, prompt_ids: list[str]):
    """Rows of `path` matching `prompt_ids` -> (index into prompt_ids, successes, trials)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ValuesFileError(
            f"values file {str(path)!r} not found; create it with `spo init-values` first"
        )
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises many types for a bad file
        raise ValuesFileError(f"values file {str(path)!r} is not readable parquet ({e})") from e
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValuesFileError(
            f"values file {str(path)!r} lacks columns {missing}; found {table.column_names}"
        )
    position = {pid: i for i, pid in enumerate(prompt_ids)}
    file_ids = table.column("prompt_id").to_pylist()
    succ = table.column("successes").to_numpy().astype(np.float64)
    trials = table.column("trials").to_numpy().astype(np.float64)
    rows = [r for r, pid in enumerate(file_ids) if pid in position]
    idx = np.array([position[file_ids[r]] for r in rows], dtype=np.int64)
    return idx, succ[rows], trials[rows]
