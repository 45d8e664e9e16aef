"""Plots of a simulation result and of the paper example (matplotlib Agg, PNG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spo.sim.model import SimResult
from spo.sim.paper import paper_example

COLORS = {"group-based": "tab:red", "group-free": "tab:blue"}


def plot_result(result: SimResult, sweep: list[SimResult], path: str | Path) -> Path:
    """Three panels: time-to-batch histograms; speed-up and wasted slot-time vs stragglers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cfg = result.config
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(16, 4.8))
    everything = np.concatenate(list(result.ready_PT.values()))
    lo, hi = np.quantile(everything, [0.001, 0.995])
    bins = np.geomspace(lo, hi, 60)
    for name, ready_T in result.ready_PT.items():
        s = result.policies[name]
        ax0.hist(
            ready_T,
            bins=bins,
            histtype="step",
            lw=1.8,
            color=COLORS[name],
            density=False,
            label=f"{name}: mean {s.time_mean:.0f} s",
        )
        ax0.axvline(s.time_mean, color=COLORS[name], ls="--", lw=1)
    ax0.set_xscale("log")
    ax0.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax0.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax0.xaxis.set_minor_formatter(NullFormatter())
    ax0.set_xlabel("time to batch (s, log scale)")
    ax0.set_ylabel(f"trials (of {cfg.trials})")
    ax0.set_title(
        f"time to a batch of {cfg.batch} at {cfg.latency.straggler_frac:.0%} "
        f"stragglers: speed-up {result.speedup:.2f}x"
    )
    ax0.legend(fontsize=9)

    frac_F = np.array([r.config.latency.straggler_frac for r in sweep])
    ci_F2 = np.array([r.speedup_ci for r in sweep])
    ax1.fill_between(
        frac_F, ci_F2[:, 0], ci_F2[:, 1], color="k", alpha=0.15, label=f"{cfg.ci_level:.0%} CI"
    )
    ax1.plot(frac_F, [r.speedup for r in sweep], "k.-", label="mean time ratio")
    ax1.axhline(1, color="gray", lw=0.8)
    ax1.set_xlabel(f"straggler fraction (stragglers x{cfg.latency.straggler_mult:g})")
    ax1.set_ylabel("speed-up of group-free (x)")
    ax1.set_title("speed-up vs straggler fraction")
    ax1.legend(fontsize=9)

    for name, color in COLORS.items():
        ax2.plot(
            frac_F,
            [r.policies[name].wasted for r in sweep],
            ".-",
            color=color,
            label=f"{name}: wasted",
        )
        ax2.plot(
            frac_F,
            [r.policies[name].idle for r in sweep],
            ":",
            color=color,
            label=f"{name}: of which idle",
        )
    ax2.set_ylim(0, 1.3)
    ax2.set_yticks(np.linspace(0, 1, 6))
    ax2.set_xlabel("straggler fraction")
    ax2.set_ylabel("fraction of slot-time")
    ax2.set_title("GPU slot-time wasted (idle + discarded)")
    ax2.legend(fontsize=8, loc="upper center", ncol=2)
    for ax in (ax1, ax2):
        ax.axvline(cfg.latency.straggler_frac, color="gray", ls=":", lw=1)

    base = cfg.latency.describe().split(";")[0]
    fig.suptitle(
        f"{base}; G={cfg.group_size}, batch {cfg.batch}, {cfg.launched} launched, "
        f"{cfg.trials} trials per point",
        fontsize=11,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_paper(path: str | Path) -> Path:
    """Timeline of the 48 assumed sample times, by group, with both batch-ready times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = paper_example()
    time_N = np.asarray(ex["assumed_sample_times"])
    G = ex["group_size"]
    group_T, free_T = ex["group_based_time"], ex["group_free_time"]
    kept_groups = set(np.argsort(ex["group_times_stated"])[: ex["groups_kept"]].tolist())
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for i, t in enumerate(time_N):
        j = i // G
        y = len(time_N) - 1 - i - 0.6 * j
        color = "tab:red" if j in kept_groups else "lightgray"
        ax.barh(y, t, color=color, height=0.8, edgecolor="white", lw=0.3)
        if t <= free_T:
            ax.plot(t, y, "o", color="tab:blue", ms=3.5)
    for j, done in enumerate(ex["group_times_stated"]):
        y = len(time_N) - 1 - (j * G + G - 1) - 0.6 * j
        ax.text(done + 5, y, f"group {j + 1}: {done:g} s (stated)", va="center", fontsize=8)
    ax.axvline(group_T, color="tab:red", ls="--")
    ax.axvline(free_T, color="tab:blue", ls="--")
    ax.text(group_T + 4, len(time_N) + 2.5, f"group-based ready: {group_T:g} s", color="tab:red")
    ax.text(free_T + 4, len(time_N) + 0.5, f"group-free ready: {free_T:g} s", color="tab:blue")
    ax.set_yticks([])
    ax.set_ylim(-5, len(time_N) + 4.5)
    ax.set_xlim(0, max(ex["group_times_stated"]) * 1.28)
    ax.set_xlabel("time (s)")
    ax.set_title(
        f"The paper's example, {ex['launched']} samples: red = the {ex['groups_kept']} groups "
        f"group-based keeps, dots = the {ex['batch']}\nsamples group-free keeps. Group maxima "
        f"and {free_T:g} s are stated; the other per-sample times are assumed.",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
