"""Metric sinks of a run: metrics.jsonl (the source of truth), TensorBoard, optional wandb.

`metrics.jsonl` gets one JSON object per step, flushed and fsync'ed as it is written, so a
killed run keeps every completed step. On resume the file is cut back to the checkpoint's
step: steps replayed after a crash are never logged twice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class RunWriteError(ValueError):
    """The run directory cannot be written (full disk, I/O error); one line for the user."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only records with step <= last_step (and drop a torn last line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _append(fh, records: list[dict], *, ascii_only: bool = True) -> None:
    """Append JSON lines, flushed and fsync'ed; a full disk is one clear line, not a trace."""
    try:
        fh.write("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records))
        fh.flush()
        os.fsync(fh.fileno())
    except OSError as e:
        raise RunWriteError(
            f"cannot write {fh.name} ({e.strerror}); free space and continue with "
            "`spo train --resume RUN_DIR` (steps after the last checkpoint are redone)"
        ) from None


class RunLogger:
    """Append metrics to RUN_DIR/metrics.jsonl and mirror them to TensorBoard / wandb."""

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        config: dict | None = None,
    ):
        self.path = run_dir / "metrics.jsonl"
        self._fh = open(self.path, "a")  # noqa: SIM115 - kept open for the run
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                self._tb = None
        if wandb:
            try:
                import wandb as wandb_module

                self._wandb = wandb_module.init(project="spo-rl", dir=str(run_dir), config=config)
            except ImportError:
                print("log.wandb=true but wandb is not installed; logging to metrics.jsonl only")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        _append(self._fh, [record])
        numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
