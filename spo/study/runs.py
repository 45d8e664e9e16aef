"""Reading finished (or running) run directories: metrics, config, held-out points,
calibration; nothing here loads a model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spo.study.plots import COLORS

TIME_PARTS = (
    ("time/generate", "generate"),
    ("time/score", "score"),
    ("time/train", "train"),
    ("time/tracker", "tracker"),
)


@dataclass
class RunData:
    """Everything `spo report` reads from one run directory."""

    path: Path
    label: str
    config: dict
    metrics: list[dict]
    heldout: list[dict] = field(default_factory=list)  # {samples, wall, greedy, sampled}
    diagnostics_log: list[dict] = field(default_factory=list)
    tracker: dict | None = None  # newest checkpoint's diagnostics summary
    calibration: dict | None = None
    color: str = COLORS[0]

    def series(self, key: str, x: str = "samples") -> tuple[np.ndarray, np.ndarray]:
        """(x, y) over steps where `key` was logged; x is samples or wall_seconds."""
        pts = [
            (r.get(x), r[key])
            for r in self.metrics
            if isinstance(r.get(key), int | float) and isinstance(r.get(x), int | float)
        ]
        if not pts:
            return np.zeros(0), np.zeros(0)
        xs, ys = zip(*pts, strict=True)
        return np.asarray(xs, float), np.asarray(ys, float)


# ---------------------------------------------------------------------------- loading
def load_run(path: str | Path) -> RunData:
    """Read a run directory; ConfigError (one line) if it is not one."""
    from omegaconf import OmegaConf

    from spo.train.checkpoint import STATE_FILES, CheckpointError, intact_checkpoints
    from spo.train.config import ConfigError
    from spo.train.diagnostics import checkpoint_diagnostics, read_diagnostics_log
    from spo.train.logging import read_metrics

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"run dir {str(path)!r} does not exist")
    metrics = read_metrics(path / "metrics.jsonl")
    if not metrics:
        raise ConfigError(
            f"{str(path)!r} has no metrics.jsonl with steps; pass a directory "
            "written by `spo train` or `spo demo`"
        )
    config = {}
    if (path / "config.yaml").is_file():
        config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
    algo = config.get("algo")
    run = RunData(
        path=path,
        label=f"{algo} · {path.name}" if algo else path.name,
        config=config,
        metrics=metrics,
    )
    run.heldout = _heldout_points(path, metrics)
    # Only the files a report reads are verified (no model, no optimizer): cheap.
    ckpts = intact_checkpoints(path / "checkpoints", only=STATE_FILES)
    run.diagnostics_log = read_diagnostics_log(path)
    logged = {r["step"] for r in run.diagnostics_log}
    from spo.train.diagnostics import scalar_row

    for c in ckpts:  # checkpoints the trainer did not diagnose yet: cheap, no model
        try:
            summary = checkpoint_diagnostics(c)
        except (CheckpointError, KeyError, ValueError):
            continue
        run.tracker = summary
        if summary["step"] not in logged:
            run.diagnostics_log.append(
                scalar_row(summary, step=summary["step"], samples=summary["samples"])
            )
    run.diagnostics_log.sort(key=lambda r: r["step"])
    run.calibration = _calibration(path, ckpts)
    return run


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _sampled(m: dict) -> float | None:
    keys = [k for k in m if k.startswith("avg@") and "/" not in k]
    return m[keys[0]] if keys else None


def _heldout_points(path: Path, metrics: list[dict]) -> list[dict]:
    """Held-out accuracy points from eval.json, demo_result.json and in-training eval.

    At equal samples the first source wins: they are in order of samples per prompt
    (`spo eval` and the demo default to k = 4, in-training eval uses k = 1).
    """
    points: dict[int, dict] = {}

    def add(samples, wall, m: dict, source: str) -> None:
        if samples is None or int(samples) in points:
            return
        g, s = m.get("greedy"), _sampled(m)
        if g is None and s is None:
            return
        points[int(samples)] = {
            "samples": int(samples),
            "wall": wall,
            "greedy": g,
            "sampled": s,
            "source": source,
        }

    ev = _read_json(path / "eval.json") or {}
    for r in ev.get("results", []):
        add(r.get("samples"), r.get("wall_seconds"), r.get("metrics", {}), "spo eval")
    demo = _read_json(path / "demo_result.json") or {}
    if demo.get("before"):
        add(0, 0.0, demo["before"], "demo")
    if demo.get("after"):
        add(
            demo.get("samples", metrics[-1].get("samples")),
            metrics[-1].get("wall_seconds"),
            demo["after"],
            "demo",
        )
    for r in metrics:
        m = {k[5:]: v for k, v in r.items() if k.startswith("eval/")}
        if m:
            add(r.get("samples"), r.get("wall_seconds"), m, "in-training eval")
    return [points[s] for s in sorted(points)]


def _calibration(path: Path, ckpts: list[Path]) -> dict | None:
    ev = _read_json(path / "eval.json") or {}
    if ev.get("calibration"):
        return ev["calibration"]
    for c in reversed(ckpts):
        found = _read_json(c / "calibration.json")
        if found:
            return found
    return None


def mean_step_times(run: RunData) -> dict[str, float]:
    """Mean seconds per step of each phase (generate, score, train, tracker)."""
    out = {}
    for key, name in TIME_PARTS:
        ys = run.series(key)[1]
        out[name] = float(ys.mean()) if ys.size else 0.0
    return out


# ------------------------------------------------------------------------------- HTML
def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolved_config(config: Path, overrides: list[str]) -> dict:
    from spo.train.config import load_config, to_dict

    return flatten(to_dict(load_config(str(config), overrides)))


def run_state(run_dir: Path, steps: int) -> str:
    """finished (checkpoint at `steps`), partial (an earlier checkpoint) or new."""
    from spo.train.checkpoint import checkpoint_name, list_checkpoints

    ckpts = list_checkpoints(run_dir / "checkpoints")
    if any(c.name == checkpoint_name(steps) for c in ckpts):
        return "finished"
    return "partial" if ckpts else "new"
