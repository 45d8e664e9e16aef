"""Metric sinks of a run: metrics.jsonl (the source of truth), samples.jsonl (what the
model wrote), TensorBoard, optional wandb.

`metrics.jsonl` gets one JSON object per step, flushed and fsync'ed as it is written, so a
killed run keeps every completed step. `samples.jsonl` gets `log.samples_per_step` rows per
training step and per in-training evaluation: step, split (train | eval), prompt id,
prompt, completion, reward, and for training rows the advantage and v̂ (the tracker's
value before this step's update). Rows are chosen at evenly spaced batch positions (no RNG,
so logging never changes a run). On resume both files are cut back to the checkpoint's
step: steps replayed after a crash are never logged twice.

After `log.constant_reward_warning` steps in a row in which every reward was 0 (or every
reward was 1), one console warning names the likely causes and the samples file.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
TB_SAMPLES = 3  # rows of each step's samples shown as TensorBoard text


class RunWriteError(ValueError):
    """The run directory cannot be written (full disk, I/O error); one line for the user."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def reset_logs(run_dir: Path, last_step: int | None) -> None:
    """At start: cut metrics/samples back to `last_step` (resume) or remove them (fresh)."""
    for name in (METRICS, SAMPLES):
        path = run_dir / name
        if last_step is not None:
            truncate_metrics(path, last_step)
        elif path.exists():
            path.unlink()  # only reachable for a run dir without checkpoints


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


def sample_positions(batch: int, n: int) -> list[int]:
    """`n` evenly spaced positions in a batch of `batch` (all when n >= batch)."""
    if n <= 0 or batch <= 0:
        return []
    if n >= batch:
        return list(range(batch))
    return sorted({round(i * (batch - 1) / max(n - 1, 1)) for i in range(n)})


def sample_row(
    step: int,
    split: str,
    example,
    completion: str,
    reward: float,
    advantage: float | None = None,
    value: float | None = None,
    transcript: list[dict] | None = None,
) -> dict:
    """One samples.jsonl row (advantage and v̂ only for training rows). Multi-turn episodes
    also get "transcript": every model turn and tool message after the prompt, the tool
    output as the model saw it, with its outcome (`spo.rollout.multiturn.Sample.transcript`);
    "completion" is then the final model turn, where the verifier looked."""
    row = {
        "step": step,
        "split": split,
        "prompt_id": example.id,
        "prompt": example.prompt,
        "completion": completion,
        "reward": float(reward),
        "advantage": None if advantage is None else float(advantage),
        "value": None if value is None else float(value),
    }
    if transcript is not None:
        row["transcript"] = transcript
    return row


class ConstantRewardWatch:
    """Counts steps in a row whose rewards are all 0 (or all 1); says so once, at `after`."""

    def __init__(self, after: int, samples_path: Path):
        self.after, self.samples_path = after, samples_path
        self.streak, self.kind, self.warned = 0, None, False

    def update(self, reward_mean: float | None) -> str | None:
        kind = None if reward_mean is None else {0.0: "0", 1.0: "1"}.get(reward_mean)
        if kind is None:
            self.streak = 0
        elif kind == self.kind:
            self.streak += 1
        else:
            self.streak = 1
        self.kind = kind
        if self.warned or not self.after or self.streak < self.after:
            return None
        self.warned = True
        causes = (
            "the task is too hard for this model, or the verifier does not match the answer "
            "format the model writes"
            if kind == "0"
            else "the task is too easy for this model, or the verifier accepts any answer"
        )
        return (
            f"warning: every reward was {kind} for {self.streak} steps in a row: likely "
            f"{causes}; see what the model writes in {self.samples_path}"
        )


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
        constant_reward_warning: int = 0,
    ):
        self.path = run_dir / METRICS
        self._fh = open(self.path, "a")  # noqa: SIM115 - kept open for the run
        self.samples_path = run_dir / SAMPLES
        self._samples = open(self.samples_path, "a", encoding="utf-8")  # noqa: SIM115
        self._watch = ConstantRewardWatch(constant_reward_warning, self.samples_path)
        for record in read_metrics(self.path):  # a resumed run continues its streak
            self._watch.update(record.get("reward/mean"))
        self._watch.warned = self._watch.streak >= constant_reward_warning > 0
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
        if "reward/mean" in metrics:
            warning = self._watch.update(metrics["reward/mean"])
            if warning is not None:
                print(warning, file=sys.stderr, flush=True)

    def log_samples(self, rows: list[dict]) -> None:
        """Append rows to samples.jsonl; a few go to TensorBoard as a text table."""
        if not rows:
            return
        _append(self._samples, rows, ascii_only=False)
        if self._tb is not None:
            for split in dict.fromkeys(r["split"] for r in rows):
                shown = [r for r in rows if r["split"] == split][:TB_SAMPLES]
                self._tb.add_text(f"samples/{split}", _markdown(shown), shown[0]["step"])
            self._tb.flush()

    def close(self) -> None:
        self._fh.close()
        self._samples.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _markdown(rows: list[dict]) -> str:
    """Rows as a Markdown table (TensorBoard renders text summaries as Markdown)."""

    def cell(value: Any) -> str:
        text = "" if value is None else (f"{value:.3f}" if isinstance(value, float) else value)
        return str(text).replace("|", "\\|").replace("\n", "<br>")

    cols = ["prompt", "completion", "reward", "advantage", "value"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
