"""Stable prompt keys for a verl RL dataset (what the tracker is indexed by).

verl gives every submitted prompt a fresh random `uid` and its dataset returns
`extra_info.index`, defaulting a missing one to 0. Neither a uid nor a row position
survives a restart, a reshuffle or an edited file, so the key of a row is:

- `extra_info.index`, when every row has one and no two rows share it (the usual verl
  preprocessing scripts write it), else
- a content hash of the prompt: the first 16 hex digits of sha256 over the prompt
  messages, the ground truth and any images/videos/data source of the row. Rows with the
  same content share a key (they are the same prompt to the tracker); the first such row
  is the one sent to rollout.

Works on verl's `RLHFDataset` (reads its columns without tokenising) and on any dataset
whose items are dicts with verl's fields (reads every item: slower).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Hashable
from typing import Any

logger = logging.getLogger(__name__)

CONTENT_FIELDS = ("data_source", "reward_model", "images", "videos", "audios")


def prompt_keys(dataset, prompt_key: str = "prompt") -> tuple[list[Hashable], str]:
    """One key per row of `dataset` -> (keys (N,), "index" or "content")."""
    rows = _rows(dataset, prompt_key)
    if not rows:
        raise ValueError("the verl training dataset has no rows; give a non-empty data.train_files")
    indices = [_index(row) for row in rows]
    if all(i is not None for i in indices) and len(set(indices)) == len(indices):
        return indices, "index"
    missing = sum(i is None for i in indices)
    logger.warning(
        "spo: extra_info.index is %s in the training data; keying prompts by content hash",
        f"missing in {missing} rows" if missing else "repeated",
    )
    return [content_key(row, prompt_key) for row in rows], "content"


def content_key(row: dict, prompt_key: str = "prompt") -> str:
    """sha256 of the row's prompt and scoring content, first 16 hex digits."""
    payload = {"prompt": row.get(prompt_key)}
    payload.update({f: row[f] for f in CONTENT_FIELDS if row.get(f) is not None})
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rows(dataset, prompt_key: str) -> list[dict]:
    frame = getattr(dataset, "dataframe", None)
    if frame is not None and prompt_key in getattr(frame, "column_names", ()):
        columns = [
            c for c in (prompt_key, "extra_info", *CONTENT_FIELDS) if c in frame.column_names
        ]
        data = {c: frame[c] for c in columns}  # one column read each, no tokenising
        return [{c: data[c][i] for c in columns} for i in range(len(frame))]
    return [dict(dataset[i]) for i in range(len(dataset))]


def _index(row: dict) -> Hashable | None:
    extra = row.get("extra_info")
    index = extra.get("index") if isinstance(extra, dict) else None
    if index is None or isinstance(index, float | bool):
        return None  # absent, or not a usable id (a float NaN from a sparse column)
    if hasattr(index, "item"):  # numpy / torch scalar -> a plain, picklable Python value
        index = index.item()
    return index if isinstance(index, int | str) else None


def _jsonable(value: Any):
    if isinstance(value, bytes | bytearray):
        return hashlib.sha256(value).hexdigest()
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)
