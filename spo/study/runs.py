"""Reading finished (or running) run directories: metrics, config, held-out points,
calibration; nothing here loads a model.

What a study commits of each run (checkpoints and TensorBoard files are git-ignored, see
.gitignore): `COMMITTED` — config.yaml, metrics.jsonl (every step, in-training eval rows
included), diagnostics.jsonl (tracker scalars per checkpoint), calibration_eval.json
(`spo eval --calibration` output), train.log and `run.json`, the small per-run record
`write_run_summary` makes when a run is done: status, steps, init samples, the final
checkpoint's tracker diagnostics and calibration. Everything `spo compare --summarize-only`
and `spo report` read is found in these files first (`study_state`, `final_diagnostics`,
`final_calibration`); the checkpoints are only a fallback, so a fresh clone rebuilds every
table and plot. Studies committed before run.json existed are read from diagnostics.jsonl
and calibration_eval.json instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spo.study.plots import COLORS

RUN_SUMMARY = "run.json"
CALIBRATION_EVAL = "calibration_eval.json"
COMMITTED = (
    "config.yaml",
    "metrics.jsonl",
    "diagnostics.jsonl",
    CALIBRATION_EVAL,
    "train.log",
    RUN_SUMMARY,
)

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
    if run.tracker is None:  # no checkpoint here (a fresh clone): the committed records
        run.tracker = _committed_diagnostics(path)
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
    """The newest calibration of a run: eval.json, a checkpoint's, or the committed ones."""
    ev = _read_json(path / "eval.json") or {}
    if ev.get("calibration"):
        return ev["calibration"]
    for c in reversed(ckpts):
        found = _read_json(c / "calibration.json")
        if found:
            return found
    return _committed_calibration(path)


# ------------------------------------------------------------ committed study files
def read_run_summary(run_dir: Path) -> dict | None:
    """RUN/run.json (see the module docstring), None if absent or unreadable."""
    found = _read_json(Path(run_dir) / RUN_SUMMARY)
    return found if isinstance(found, dict) else None


def write_run_summary(run_dir: Path, steps: int, **fields) -> dict:
    """Write RUN/run.json for a run whose final checkpoint (`steps`) exists: status,
    steps, `fields` (arm, algo, seed, init_samples), and the final checkpoint's
    diagnostics.json and calibration.json (rescored to the current keys)."""
    from spo.train.checkpoint import checkpoint_name
    from spo.train.diagnostics import write_json

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / checkpoint_name(steps)
    diag = _read_json(ckpt / "diagnostics.json")
    record = {
        "status": "finished",
        "steps": int(steps),
        **fields,
        "diagnostics": diag,
        "calibration": _rescored(_read_json(ckpt / "calibration.json"), diag),
    }
    write_json(run_dir / RUN_SUMMARY, record)
    return record


def _metrics_step(run_dir: Path) -> int:
    from spo.train.logging import read_metrics

    steps = [r.get("step", 0) for r in read_metrics(run_dir / "metrics.jsonl")]
    return max((s for s in steps if isinstance(s, int)), default=0)


def study_state(run_dir: Path, steps: int) -> str:
    """finished / partial / new, from the checkpoints or, without them, committed files:
    run.json says finished at `steps`, or (older studies) metrics.jsonl reached `steps`
    and diagnostics.jsonl has that step's row (the trainer writes it with the checkpoint)."""
    from spo.train.diagnostics import read_diagnostics_log

    run_dir = Path(run_dir)
    state = run_state(run_dir, steps)
    if state == "finished":
        return state
    record = read_run_summary(run_dir) or {}
    if record.get("status") == "finished" and record.get("steps") == steps:
        return "finished"
    if _metrics_step(run_dir) >= steps and any(
        r["step"] == steps for r in read_diagnostics_log(run_dir)
    ):
        return "finished"
    return state


def final_diagnostics(run_dir: Path, steps: int) -> dict | None:
    """The tracker diagnostics at `steps`: run.json, the checkpoint, calibration_eval.json,
    or (scalars only) diagnostics.jsonl's row."""
    from spo.train.checkpoint import checkpoint_name
    from spo.train.diagnostics import read_diagnostics_log

    run_dir = Path(run_dir)
    found = (read_run_summary(run_dir) or {}).get("diagnostics")
    if found:
        return found
    found = _read_json(run_dir / "checkpoints" / checkpoint_name(steps) / "diagnostics.json")
    if found:
        return found
    results = (_read_json(run_dir / CALIBRATION_EVAL) or {}).get("results") or []
    for r in results:
        if r.get("step") == steps and r.get("diagnostics"):
            return r["diagnostics"]
    row = next((r for r in read_diagnostics_log(run_dir) if r["step"] == steps), None)
    if row is None:
        return None
    diag = {k: v for k, v in row.items() if not k.startswith("sampler_")}
    diag["sampler"] = {k[8:]: v for k, v in row.items() if k.startswith("sampler_")}
    return diag


def final_calibration(run_dir: Path, steps: int) -> dict | None:
    """The calibration at `steps` with the current keys: run.json, the checkpoint's
    calibration.json or calibration_eval.json (older records rescored)."""
    from spo.train.checkpoint import checkpoint_name

    run_dir = Path(run_dir)
    found = (read_run_summary(run_dir) or {}).get("calibration")
    if found:
        return found
    cal = _read_json(run_dir / "checkpoints" / checkpoint_name(steps) / "calibration.json")
    cal = cal or (_read_json(run_dir / CALIBRATION_EVAL) or {}).get("calibration")
    if not cal or cal.get("step", steps) != steps:
        return None
    return _rescored(cal, final_diagnostics(run_dir, steps))


def _committed_diagnostics(run_dir: Path) -> dict | None:
    """The newest tracker diagnostics of run.json or calibration_eval.json."""
    found = (read_run_summary(run_dir) or {}).get("diagnostics")
    if found:
        return found
    results = (_read_json(run_dir / CALIBRATION_EVAL) or {}).get("results") or []
    return next((r["diagnostics"] for r in reversed(results) if r.get("diagnostics")), None)


def _committed_calibration(run_dir: Path) -> dict | None:
    record = read_run_summary(run_dir) or {}
    if record.get("calibration"):
        return record["calibration"]
    ev = _read_json(run_dir / CALIBRATION_EVAL) or {}
    cal = ev.get("calibration")
    if not cal:
        return None
    diag = next(
        (r.get("diagnostics") for r in ev.get("results", []) if r.get("step") == cal.get("step")),
        None,
    )
    return _rescored(cal, diag)


def _rescored(cal: dict | None, diag: dict | None) -> dict | None:
    """`cal` with the current keys; the reference is the tracker's mean v̂ over its seen
    prompts at that step (what `spo eval --calibration` uses)."""
    from spo.train.diagnostics import rescore_calibration

    if not cal:
        return None
    ref = (diag or {}).get("value_mean_seen")
    return rescore_calibration(cal, reference=ref if isinstance(ref, int | float) else None)


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
