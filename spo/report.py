"""`spo report`: one self-contained HTML page of plots from one or more run directories.

Reads only files a run already has — `metrics.jsonl` (one record per step),
`config.yaml`, `eval.json` (from `spo eval RUN`), `demo_result.json` (from `spo demo`),
`diagnostics.jsonl` and the checkpoints' tracker state — and never loads a model, so it
takes seconds and can run while training goes on. Several runs are overlaid in one
colour each (label: algorithm · directory name) for side-by-side comparison, e.g. SPO vs
GRPO with the same samples per step.

Held-out accuracy merges every source a run has: in-training eval (`eval/*` in
metrics.jsonl), per-checkpoint `spo eval` and the demo's before/after. avg@k estimates
the per-sample accuracy whatever k is, so points with different k share one curve.
Wall-clock is training time (`wall_seconds`: generation + scoring + updates + tracker),
evaluation excluded. Plots are matplotlib PNGs (Agg, no display) embedded as base64: the
page has no external resources and can be mailed or attached as it is.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TIME_PARTS = (
    ("time/generate", "generate"),
    ("time/score", "score"),
    ("time/train", "train"),
    ("time/tracker", "tracker"),
)
COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
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

    from spo.diagnostics import checkpoint_diagnostics, read_diagnostics_log
    from spo.train.checkpoint import STATE_FILES, CheckpointError, intact_checkpoints
    from spo.train.config import ConfigError
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
    from spo.diagnostics import scalar_row

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


# ---------------------------------------------------------------------------- plotting
def smooth(y: np.ndarray) -> np.ndarray:
    """EMA over about a fifteenth of the series (bias-corrected, so the start is not 0)."""
    if y.size < 4:
        return y
    alpha = 2.0 / (max(2, y.size // 15) + 1)
    out, acc, norm = np.empty_like(y), 0.0, 0.0
    for i, v in enumerate(y):
        acc = (1 - alpha) * acc + alpha * v
        norm = (1 - alpha) * norm + alpha
        out[i] = acc / norm
    return out


def _wall_unit(runs: list[RunData]) -> tuple[float, str]:
    top = max((r.metrics[-1].get("wall_seconds") or 0.0) for r in runs)
    return (60.0, "min") if top > 300 else (1.0, "s")


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", color="#888", transform=ax.transAxes)


def _curve(
    ax,
    run: RunData,
    key: str,
    x: str = "samples",
    scale: float = 1.0,
    style: str = "-",
    label: str | None = None,
) -> bool:
    xs, ys = run.series(key, x)
    if not xs.size:
        return False
    xs = xs / scale
    if xs.size >= 8:
        ax.plot(xs, ys, style, color=run.color, alpha=0.2, lw=0.8)
    ax.plot(
        xs,
        smooth(ys),
        style,
        color=run.color,
        lw=1.8,
        label=label or run.label,
        marker="o" if xs.size < 8 else None,
        ms=3,
    )
    return True


FIG_WIDTH = 13.0  # inches at 100 dpi: every figure is as wide as the page, same font size


def _figure(n: int, height: float = 3.4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_WIDTH, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _legend(fig, axes, runs: list[RunData]) -> None:
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if len(handles) > 1 or len(runs) > 1:
        axes[0].legend(handles.values(), handles.keys(), fontsize=8, frameon=False)


def fig_metric_rows(runs, panels, *, x="samples", wall=None) -> bytes:
    """One panel per (key, title, ylabel); every run overlaid."""
    fig, axes = _figure(len(panels))
    scale, unit = wall or (1.0, "")
    for ax, (keys, title, ylabel) in zip(axes, panels, strict=True):
        keys = [keys] if isinstance(keys, str) else keys
        found = False
        for run in runs:
            for key, style in zip(keys, ("-", "--", ":"), strict=False):
                found |= _curve(ax, run, key, x, scale, style)
        if not found:
            _no_data(ax, "data (" + ", ".join(keys) + ")")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("samples" if x == "samples" else f"training wall-clock ({unit})")
    _legend(fig, axes, runs)
    return _png(fig)


def fig_reward(runs) -> bytes:
    wall = _wall_unit(runs)
    fig, axes = _figure(2)
    for ax, x in zip(axes, ("samples", "wall_seconds"), strict=True):
        for run in runs:
            _curve(ax, run, "reward/mean", x, wall[0] if x != "samples" else 1.0)
        ax.set_ylabel("mean training reward")
        ax.set_xlabel("samples" if x == "samples" else f"training wall-clock ({wall[1]})")
    axes[0].set_title("reward vs samples", fontsize=10)
    axes[1].set_title("reward vs wall-clock", fontsize=10)
    _legend(fig, axes, runs)
    return _png(fig)


def fig_heldout(runs) -> bytes:
    scale, unit = _wall_unit(runs)
    fig, axes = _figure(2)
    any_points = False
    for ax, x in zip(axes, ("samples", "wall"), strict=True):
        for run in runs:
            for key, style, name in (("greedy", "-o", "greedy"), ("sampled", "--s", "avg@k")):
                pts = [
                    (p[x], p[key])
                    for p in run.heldout
                    if p.get(key) is not None and p.get(x) is not None
                ]
                if pts:
                    any_points = True
                    xs, ys = np.asarray(pts, float).T
                    ax.plot(
                        xs / (scale if x == "wall" else 1.0),
                        100 * ys,
                        style,
                        color=run.color,
                        ms=4,
                        lw=1.6,
                        label=f"{run.label} {name}",
                    )
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_xlabel("samples" if x == "samples" else f"training wall-clock ({unit})")
    if not any_points:
        for ax in axes:
            _no_data(ax, "held-out eval (run `spo eval RUN_DIR` or train with eval_every)")
    axes[0].set_title("held-out accuracy vs samples (solid greedy, dashed sampled)", fontsize=10)
    axes[1].set_title("held-out accuracy vs wall-clock", fontsize=10)
    if any_points:
        axes[0].legend(fontsize=7, frameon=False)
    return _png(fig)


def fig_tracker_history(runs) -> bytes:
    fig, axes = _figure(4)
    for run in runs:
        _curve(axes[0], run, "tracker/value_mean")
        _curve(axes[1], run, "tracker/count_mean")
        d = run.diagnostics_log
        for ax, key in ((axes[2], "frontier_seen"), (axes[3], "sampler_ess_fraction")):
            pts = [(r["samples"], r[key]) for r in d if r.get(key) is not None]
            if pts:
                xs, ys = np.asarray(pts, float).T
                ax.plot(xs, 100 * ys, "-o", color=run.color, ms=3, label=run.label)
    titles = (
        "mean v̂ of each step's prompts",
        "mean N of each step's prompts",
        "frontier: % of seen prompts with 0.1 ≤ v̂ ≤ 0.9",
        "sampler ESS (% of prompts)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("samples")
        if not ax.lines:
            _no_data(ax, "checkpoints yet")
    _legend(fig, axes, runs)
    return _png(fig)


def _hist(ax, run: RunData, hist: dict, label: str) -> None:
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"], float)
    if counts.sum() <= 0:
        return
    ax.stairs(100 * counts / counts.sum(), edges, color=run.color, lw=1.6, label=label)


def fig_tracker_state(runs) -> bytes:
    fig, axes = _figure(4)
    for run in runs:
        if run.tracker is None:
            continue
        h = run.tracker["histograms"]
        label = f"{run.label} (step {run.tracker['step']})"
        _hist(axes[0], run, h.get("value_seen", h["value"]), label)
        _hist(axes[1], run, h["count"], label)
        if "rho" in h:
            _hist(axes[2], run, h["rho"], label)
        cal = run.calibration
        if cal:
            bins = [b for b in cal["bins"] if b["count"]]
            axes[3].plot(
                [b["value_mean"] for b in bins],
                [b["rate_mean"] for b in bins],
                "-o",
                color=run.color,
                ms=4,
                label=f"{run.label}: Brier {cal['brier']:.3f}, ECE {cal['ece']:.3f}",
            )
    axes[3].plot([0, 1], [0, 1], ":", color="#888", lw=1)
    axes[3].set_xlim(0, 1)
    axes[3].set_ylim(0, 1)
    meta = (
        ("histogram of v̂ (seen prompts)", "v̂", "% of prompts"),
        ("histogram of N = α+β (all prompts; prior N = 1)", "N", "% of prompts"),
        ("ρ each seen prompt would get now (drift)", "ρ", "% of prompts"),
        ("calibration: v̂ vs fresh pass rate", "v̂ (bin mean)", "fresh pass rate"),
    )
    for ax, (title, xl, yl) in zip(axes, meta, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    if not axes[0].patches and not axes[0].lines:
        _no_data(axes[0], "checkpoint")
    if not axes[2].patches:
        _no_data(axes[2], "ρ (rho=drift only)")
    if len(axes[3].lines) == 1:
        _no_data(axes[3], "calibration (spo eval RUN --calibration 8)")
    else:
        axes[3].legend(fontsize=7, frameon=False)
    _legend(fig, axes[:1], runs)
    return _png(fig)


def mean_step_times(run: RunData) -> dict[str, float]:
    """Mean seconds per step of each phase (generate, score, train, tracker)."""
    out = {}
    for key, name in TIME_PARTS:
        ys = run.series(key)[1]
        out[name] = float(ys.mean()) if ys.size else 0.0
    return out


def fig_time(runs) -> bytes:
    fig, axes = _figure(2, height=max(2.6, 0.55 * len(runs) + 1.6))
    ax = axes[0]
    part_colors = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")
    for i, run in enumerate(runs):
        left = 0.0
        for (name, secs), c in zip(mean_step_times(run).items(), part_colors, strict=True):
            ax.barh(i, secs, left=left, color=c, label=name if i == 0 else None)
            left += secs
        ax.text(left, i, f" {left:.2f}s", va="center", fontsize=8)
    ax.set_yticks(range(len(runs)), [r.label for r in runs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean seconds per step")
    ax.set_title("step-time breakdown", fontsize=10)
    ax.legend(fontsize=8, frameon=False, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    for run in runs:
        _curve(axes[1], run, "throughput/samples_per_s")
    axes[1].set_title("throughput", fontsize=10)
    axes[1].set_ylabel("samples / s")
    axes[1].set_xlabel("samples")
    return _png(fig)


def figures(runs: list[RunData]) -> list[tuple[str, str, bytes]]:
    """(title, caption, png) for every section of the report."""
    wall = _wall_unit(runs)
    return [
        (
            "Training reward",
            "Mean reward of each step's samples (thin: raw; thick: smoothed).",
            fig_reward(runs),
        ),
        (
            "Held-out accuracy",
            "Greedy (solid) and sampled avg@k (dashed) on the held-out "
            "prompts, against samples and training wall-clock.",
            fig_heldout(runs),
        ),
        (
            "Samples without learning signal",
            "Share of samples whose unnormalised advantage is ~0 (|A| ≤ 1e-4, ≤ 0.02), and for "
            "group algorithms the share in groups whose rewards are all equal (spec §8).",
            fig_metric_rows(
                runs,
                [
                    ("adv/abs_le_1e-4", "|A| ≤ 1e-4", "share of samples"),
                    ("adv/abs_le_0.02", "|A| ≤ 0.02", "share of samples"),
                    (
                        "adv/degenerate_fraction",
                        "degenerate groups (GRPO etc.)",
                        "share of samples",
                    ),
                ],
            ),
        ),
        (
            "Advantage variance",
            "Variance of the unnormalised advantage r − baseline (dashed: non-degenerate "
            "groups only), against samples and wall-clock.",
            _fig_adv_var(runs, wall),
        ),
        (
            "Value tracker over training",
            "v̂ and N of the prompts drawn each step; at each checkpoint, the share of seen "
            "prompts on the learnability frontier and the priority sampler's Kish ESS "
            "(w ∝ sqrt(v̂(1−v̂)) + ε).",
            fig_tracker_history(runs),
        ),
        (
            "Value tracker at the newest checkpoint",
            "Distribution of v̂, N and the pending forgetting factor ρ; reliability diagram of "
            "v̂ against a fresh empirical pass rate (dotted: perfect calibration).",
            fig_tracker_state(runs),
        ),
        (
            "Where the time goes",
            "Mean seconds per step by phase (evaluation excluded) and throughput.",
            fig_time(runs),
        ),
    ]


def _fig_adv_var(runs, wall) -> bytes:
    fig, axes = _figure(2)
    for ax, x in zip(axes, ("samples", "wall_seconds"), strict=True):
        for run in runs:
            sc = wall[0] if x != "samples" else 1.0
            _curve(ax, run, "adv/variance", x, sc)
            _curve(
                ax,
                run,
                "adv/variance_nondegenerate",
                x,
                sc,
                "--",
                label=f"{run.label} (non-degenerate)",
            )
        ax.set_ylabel("Var(A)")
        ax.set_xlabel("samples" if x == "samples" else f"training wall-clock ({wall[1]})")
    _legend(fig, axes, runs)
    return _png(fig)


# ------------------------------------------------------------------------------- HTML
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


KEY_SETTINGS = (
    "algo",
    "model.path",
    "task.name",
    "steps",
    "samples_per_step",
    "group_size",
    "optim.lr",
    "rollout.temperature",
    "tracker.rho",
    "seed",
)
IGNORED_DIFF = ("run_dir", "resume", "log.progress", "log.tensorboard", "log.wandb")


def config_rows(runs: list[RunData]) -> list[tuple[str, list]]:
    """Settings worth showing: key settings, plus every key on which the runs differ."""
    flat = [_flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    diff = [
        k for k in keys if k not in IGNORED_DIFF and len({json.dumps(f.get(k)) for f in flat}) > 1
    ]
    shown = [k for k in KEY_SETTINGS if any(k in f for f in flat)]
    shown += [k for k in diff if k not in shown]
    return [(k, [f.get(k, "—") for f in flat]) for k in shown]


def _fmt_pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def summary_rows(run: RunData) -> dict[str, str]:
    """One line of the summary table."""
    m = run.metrics
    n_tail = max(1, len(m) // 10)
    rewards = [r["reward/mean"] for r in m[-n_tail:] if r.get("reward/mean") is not None]
    wall = m[-1].get("wall_seconds") or 0.0
    last = run.heldout[-1] if run.heldout else {}
    first = run.heldout[0] if run.heldout else {}
    held = "—"
    if last:
        held = f"{_fmt_pct(last.get('greedy'))} / {_fmt_pct(last.get('sampled'))}"
        if first is not last:
            held = f"{_fmt_pct(first.get('greedy'))} / {_fmt_pct(first.get('sampled'))} → " + held
    cal = run.calibration
    return {
        "run": run.label,
        "steps": str(m[-1].get("step", len(m))),
        "samples": str(m[-1].get("samples", "—")),
        "train time": f"{wall / 60:.1f} min",
        "s / step": f"{wall / max(1, len(m)):.2f}",
        "samples / s": f"{(m[-1].get('samples') or 0) / wall:.2f}" if wall else "—",
        "final reward (last 10%)": f"{np.mean(rewards):.3f}" if rewards else "—",
        "held-out greedy / sampled": held,
        "frontier": _fmt_pct((run.tracker or {}).get("frontier_seen")),
        "calibration Brier / ECE": f"{cal['brier']:.3f} / {cal['ece']:.3f}" if cal else "—",
    }


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1320px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin:28px 0 4px}
.sub{color:#666;font-size:13px}p.cap{color:#555;font-size:13px;margin:2px 0 8px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f6f6}img{width:100%;height:auto;border:1px solid #eee}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
code{font-size:12px}
"""


def render_html(runs: list[RunData], figs: list[tuple[str, str, bytes]]) -> str:
    esc = html.escape
    rows = [summary_rows(r) for r in runs]
    head = "".join(f"<th>{esc(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>"
        + "".join(
            f"<td><span class='sw' style='background:{run.color}'></span>{esc(v)}</td>"
            if k == "run"
            else f"<td>{esc(v)}</td>"
            for k, v in row.items()
        )
        + "</tr>"
        for run, row in zip(runs, rows, strict=True)
    )
    cfg = config_rows(runs)
    cfg_html = ""
    if cfg:
        cfg_head = "".join(f"<th>{esc(r.label)}</th>" for r in runs)
        cfg_body = "".join(
            f"<tr><td><code>{esc(k)}</code></td>"
            + "".join(f"<td>{esc(str(v))}</td>" for v in vals)
            + "</tr>"
            for k, vals in cfg
        )
        cfg_html = (
            f"<h2>Settings</h2><p class='cap'>Key settings and every setting on which "
            f"the runs differ.</p><table><tr><th>key</th>{cfg_head}</tr>{cfg_body}"
            "</table>"
        )
    sections = "".join(
        f"<h2>{esc(title)}</h2><p class='cap'>{esc(cap)}</p>"
        f"<img alt='{esc(title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        for title, cap, png in figs
    )
    paths = ", ".join(f"<code>{esc(str(r.path))}</code>" for r in runs)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>spo report: {esc(', '.join(r.label for r in runs))}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>spo report</h1><div class='sub'>{paths} · generated "
        f"{esc(time.strftime('%Y-%m-%d %H:%M'))}</div>"
        f"<h2>Summary</h2><table><tr>{head}</tr>{body}</table>{cfg_html}{sections}"
        "</body></html>\n"
    )


def build_report(
    run_dirs: list[str | Path], labels: list[str] | None = None
) -> tuple[str, list[RunData]]:
    """HTML text of the report for `run_dirs` (and the loaded runs); optional own labels."""
    runs = [load_run(p) for p in run_dirs]
    for i, run in enumerate(runs):
        run.color = COLORS[i % len(COLORS)]
        if labels is not None:
            run.label = labels[i]
    return render_html(runs, figures(runs)), runs


# -------------------------------------------------------------------------------- CLI
EPILOG = """\
examples:
  spo report runs/demo-20260101-120000                 # -> RUN_DIR/report.html
  spo report runs/spo-* runs/grpo-* --out compare.html  # runs overlaid

Held-out accuracy comes from in-training eval (eval_every), `spo eval RUN_DIR` (every
checkpoint) and `spo demo`; calibration from `spo eval RUN_DIR --calibration 8`.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument(
        "--out",
        metavar="FILE.html",
        help="output (default: RUN_DIR/report.html for one run, report.html for several)",
    )


def run(args: argparse.Namespace) -> int:
    text, runs = build_report(args.runs)
    out = (
        Path(args.out)
        if args.out
        else (runs[0].path / "report.html" if len(runs) == 1 else Path("report.html"))
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"wrote {out} ({len(text) / 1e6:.1f} MB, {len(runs)} run(s)); open it in a browser")
    return 0
