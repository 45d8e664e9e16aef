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

import base64
import html
import json
import math
import time
from pathlib import Path

import numpy as np

from spo.study.plots import COLORS, curve, figure, legend, no_data, png, wall_unit
from spo.study.runs import RunData, flatten, load_run, mean_step_times


def fig_metric_rows(runs, panels, *, x="samples", wall=None) -> bytes:
    """One panel per (key, title, ylabel); every run overlaid."""
    fig, axes = figure(len(panels))
    scale, unit = wall or (1.0, "")
    for ax, (keys, title, ylabel) in zip(axes, panels, strict=True):
        keys = [keys] if isinstance(keys, str) else keys
        found = False
        for run in runs:
            for key, style in zip(keys, ("-", "--", ":"), strict=False):
                found |= curve(ax, run, key, x, scale, style)
        if not found:
            no_data(ax, "data (" + ", ".join(keys) + ")")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("samples" if x == "samples" else f"training wall-clock ({unit})")
    legend(fig, axes, runs)
    return png(fig)


def fig_reward(runs) -> bytes:
    wall = wall_unit(runs)
    fig, axes = figure(2)
    for ax, x in zip(axes, ("samples", "wall_seconds"), strict=True):
        for run in runs:
            curve(ax, run, "reward/mean", x, wall[0] if x != "samples" else 1.0)
        ax.set_ylabel("mean training reward")
        ax.set_xlabel("samples" if x == "samples" else f"training wall-clock ({wall[1]})")
    axes[0].set_title("reward vs samples", fontsize=10)
    axes[1].set_title("reward vs wall-clock", fontsize=10)
    legend(fig, axes, runs)
    return png(fig)


def fig_heldout(runs) -> bytes:
    scale, unit = wall_unit(runs)
    fig, axes = figure(2)
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
            no_data(ax, "held-out eval (run `spo eval RUN_DIR` or train with eval_every)")
    axes[0].set_title("held-out accuracy vs samples (solid greedy, dashed sampled)", fontsize=10)
    axes[1].set_title("held-out accuracy vs wall-clock", fontsize=10)
    if any_points:
        axes[0].legend(fontsize=7, frameon=False)
    return png(fig)


def fig_tracker_history(runs) -> bytes:
    fig, axes = figure(4)
    for run in runs:
        curve(axes[0], run, "tracker/value_mean")
        curve(axes[1], run, "tracker/count_mean")
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
            no_data(ax, "checkpoints yet")
    legend(fig, axes, runs)
    return png(fig)


def _hist(ax, run: RunData, hist: dict, label: str) -> None:
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"], float)
    if counts.sum() <= 0:
        return
    ax.stairs(100 * counts / counts.sum(), edges, color=run.color, lw=1.6, label=label)


def fig_tracker_state(runs) -> bytes:
    fig, axes = figure(4)
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
        no_data(axes[0], "checkpoint")
    if not axes[2].patches:
        no_data(axes[2], "ρ (rho=drift only)")
    if len(axes[3].lines) == 1:
        no_data(axes[3], "calibration (spo eval RUN --calibration 8)")
    else:
        axes[3].legend(fontsize=7, frameon=False)
    legend(fig, axes[:1], runs)
    return png(fig)


def fig_time(runs) -> bytes:
    fig, axes = figure(2, height=max(2.6, 0.55 * len(runs) + 1.6))
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
        curve(axes[1], run, "throughput/samples_per_s")
    axes[1].set_title("throughput", fontsize=10)
    axes[1].set_ylabel("samples / s")
    axes[1].set_xlabel("samples")
    return png(fig)


TOOL_PANELS = [
    ("tools/episodes_with_calls", "episodes that call the tool", "share of episodes"),
    ("tools/episodes_code_ok", "episodes whose code all ran", "share of episodes"),
    ("tools/turns_per_episode", "model turns per episode", "turns"),
    ("rollout/engine_idle_fraction", "rollout engine idle (waiting on tools)", "share of time"),
]


def tool_section(runs: list[RunData]) -> list[tuple[str, str, bytes]]:
    """The "Tool use" section, for runs with multi-turn tool episodes (`tools/*` keys)."""
    if not any(run.series("tools/turns_per_episode")[0].size for run in runs):
        return []
    return [
        (
            "Tool use",
            "Per training step: share of episodes that called the Python tool, and whose "
            "every call ran without error; model turns per episode; share of rollout time in "
            "which no sample was ready to decode because all waited on a tool. Held-out "
            "accuracy above is measured with the tool (every held-out prompt is an episode).",
            fig_metric_rows(runs, TOOL_PANELS),
        )
    ]


def figures(runs: list[RunData]) -> list[tuple[str, str, bytes]]:
    """(title, caption, png) for every section of the report."""
    wall = wall_unit(runs)
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
        *tool_section(runs),
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
    fig, axes = figure(2)
    for ax, x in zip(axes, ("samples", "wall_seconds"), strict=True):
        for run in runs:
            sc = wall[0] if x != "samples" else 1.0
            curve(ax, run, "adv/variance", x, sc)
            curve(
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
    legend(fig, axes, runs)
    return png(fig)


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
    flat = [flatten(r.config) for r in runs]
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
