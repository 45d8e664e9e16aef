"""Plot helpers shared by `spo report` and the `spo compare` study: one figure width and
font size, colours, "no data" panels, PNG bytes (matplotlib Agg, no display)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from spo.study.runs import RunData


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


def wall_unit(runs: list[RunData]) -> tuple[float, str]:
    top = max((r.metrics[-1].get("wall_seconds") or 0.0) for r in runs)
    return (60.0, "min") if top > 300 else (1.0, "s")


def no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", color="#888", transform=ax.transAxes)


def curve(
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


def figure(n: int, height: float = 3.4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_WIDTH, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def legend(fig, axes, runs: list[RunData]) -> None:
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if len(handles) > 1 or len(runs) > 1:
        axes[0].legend(handles.values(), handles.keys(), fontsize=8, frameon=False)


def arm_colors(summary: dict) -> dict[str, str]:
    """One color per arm of a study summary, in arm order."""
    return {arm: COLORS[i % len(COLORS)] for i, arm in enumerate(summary["arms"])}
