"""Atomic, self-describing checkpoints and the search for the newest valid one.

A checkpoint is a directory `RUN_DIR/checkpoints/step_000010/` holding a loadable Hugging
Face model (safetensors + tokenizer, so `spo eval` can read it directly), the optimizer
state (fp32 master weights included), the trainer state (tracker, sampler RNG, step,
counters) as `state.npz` + `state.json`, the resolved config, and a `COMPLETE` marker
written last. It is written into a hidden temp directory, every file fsync'ed, then renamed
into place: a crash (even kill -9) leaves either the old set of checkpoints or the new one,
never a half-written "newest" checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MARKER = "COMPLETE"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line for the user."""


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def save_checkpoint(root: Path, step: int, write: Callable[[Path], None], *, keep: int) -> Path:
    """Write a checkpoint atomically: `write(tmp_dir)` fills it, then it is renamed in place."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    (tmp / MARKER).write_text(json.dumps({"step": step}))
    _fsync_tree(tmp)
    final = root / checkpoint_name(step)
    if final.exists():  # re-saving the same step (e.g. stop signal right after a periodic save)
        trash = root / f".old-{checkpoint_name(step)}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.glob("step_*"):
        try:
            step = int(json.loads((path / MARKER).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # incomplete or foreign directory: never "the newest checkpoint"
        found.append((step, path))
    return [p for _, p in sorted(found)]


def _flatten(tree: dict, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays, scalars = {}, {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            a, s = _flatten(value, f"{name}/")
            arrays.update(a)
            scalars.update(s)
        elif isinstance(value, np.ndarray):
            arrays[name] = value
        else:
            scalars[name] = value
    return arrays, scalars


def _unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def write_state(path: Path, state: dict) -> None:
    """Nested dict of numpy arrays and JSON scalars -> state.npz + state.json (no pickle)."""
    arrays, scalars = _flatten(state)
    np.savez(path / "state.npz", **arrays)
    (path / "state.json").write_text(json.dumps(scalars, indent=1))


def read_state(path: Path) -> dict:
    try:
        with np.load(path / "state.npz", allow_pickle=False) as z:
            flat: dict[str, Any] = {k: z[k] for k in z.files}
        flat.update(json.loads((path / "state.json").read_text()))
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt ({e.__class__.__name__}: {e})") from e
    return _unflatten(flat)
