"""Summary of a `spo compare` study: OUT/summary.json, plots, report page, markdown.

Reads only the files a study commits of each run (`spo.study.runs.COMMITTED`: metrics.jsonl,
diagnostics.jsonl, run.json, calibration_eval.json; the checkpoints only as a fallback), so
it can be rerun at any time, also from a fresh clone (`spo compare ... --summarize-only`).

Per arm, over its finished seeds, every number is aggregated as mean, std (ddof = 1,
null for one seed), min, max and n:
- final held-out metrics: the in-training eval at the last step (greedy, avg@k, pass@j,
  maj@k, per difficulty), and the initial policy's (step 0);
- curves vs samples and vs training wall-clock: seeds are aligned on the steps all of
  them logged (same eval_every, so the same samples); the wall-clock of a point is the
  mean over seeds. The offline-init ablation's samples axis includes its init samples;
- the learning-signal shares per step (GRPO: degenerate groups; all: |A| ≤ 1e-4, ≤ 0.02)
  over training, and their means over the whole run / its first and last quarter;
- the variance of the unnormalised advantage per step (`adv/variance`: r − v̂ for SPO,
  r for SPO without baseline; `adv/variance_nondegenerate`: GRPO's r − group mean on
  non-degenerate groups), averaged over the run (GRPO's steps weighted by their
  non-degenerate share: a step whose groups are all degenerate contributes nothing);
- the final tracker's frontier / sampler ESS and its calibration against fresh samples
  (Brier and its Murphy terms, skill against the tracker's mean v̂, AUC, Spearman);
- paired differences between SPO and every other arm, seed by seed (seed s of both arms
  shares the prompts, the initial policy and the eval prompts): mean and the 95%
  Student-t interval mean ± t(0.975, n − 1)·sd/√n over the n common finished seeds. With
  n = 2 or 3 the interval is wide (t = 12.7, 4.3): it says how little a few seeds show.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

import numpy as np

from spo.algo.algorithms import ALGORITHMS
from spo.study.machinery import (
    MACHINERY_CURVES,
    fig_machinery,
    heldout_points,
    paired_machinery,
    paired_wallclock,
    run_machinery,
)
from spo.study.plots import arm_colors, figure, no_data, png
from spo.study.stats import finite as _finite
from spo.study.stats import t_interval
from spo.train.diagnostics import write_json

TRAIN_CURVES = (
    "reward/mean",
    "adv/degenerate_fraction",
    "adv/abs_le_1e-4",
    "adv/abs_le_0.02",
    "adv/variance",
    "adv/variance_nondegenerate",
    *MACHINERY_CURVES,
)
SIGNAL = ("adv/degenerate_fraction", "adv/abs_le_1e-4", "adv/abs_le_0.02")
TRACKER = ("frontier_seen", "value_mean_seen", "seen_fraction")
CALIBRATION = (
    "brier",
    "reliability",
    "resolution",
    "uncertainty",
    "reference",
    "brier_reference",
    "brier_skill",
    "auc",
    "auc_ceiling",
    "spearman",
    "pearson",
    "ece",
    "value_mean",
    "rate_mean",
)
PAIRED_REFERENCE = "spo"


# ----------------------------------------------------------------------- aggregation
def aggregate(values) -> dict:
    """mean, std (ddof=1; None below two values), min, max, n over the finite values."""
    v = np.asarray([x for x in values if _finite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else None,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def paired_differences(arms: dict, reference: str = PAIRED_REFERENCE) -> dict:
    """{arm: {metric: t_interval of reference − arm over common seeds, plus seeds, diffs}}
    for the final held-out metrics (no `/` in the key) of each arm's finished runs."""
    if reference not in arms:
        return {}

    def finals(arm: str) -> dict[int, dict]:
        return {r["seed"]: r.get("final") or {} for r in arms[arm]["runs"] if r.get("final")}

    ref = finals(reference)
    out = {}
    for arm in arms:
        if arm == reference:
            continue
        mine = finals(arm)
        seeds = sorted(set(ref) & set(mine))
        keys = sorted({k for s in seeds for k in ref[s] if "/" not in k and k in mine[s]})
        rows = {}
        for key in keys:
            diffs = [ref[s][key] - mine[s][key] for s in seeds]
            rows[key] = {**t_interval(diffs), "seeds": seeds, "diffs": diffs}
        if rows:
            out[arm] = rows
    return out


def aggregate_dicts(dicts: list[dict]) -> dict:
    """{key: aggregate over the dicts that have it} for every numeric key."""
    keys = sorted({k for d in dicts for k, v in d.items() if _finite(v)})
    return {k: aggregate([d.get(k) for d in dicts]) for k in keys}


def align_curves(runs: list[list[dict]], keys, *, x_offset: float = 0.0) -> dict:
    """Per-step curves of several seeds on the steps where every seed logged each key.

    runs: one list of metric records (with step, samples, wall_seconds) per seed.
    Returns {key: {step, samples, wall_seconds, mean, std, min, max}} (lists), samples
    shifted by x_offset, wall_seconds the mean over seeds; keys nobody logged are absent.
    """
    out = {}
    for key in keys:
        by_step = [{r["step"]: r for r in rows if _finite(r.get(key))} for rows in runs]
        if not by_step or not all(by_step):
            continue
        steps = sorted(set.intersection(*(set(d) for d in by_step)))
        if not steps:
            continue
        curve: dict = {"step": steps, "samples": [], "wall_seconds": []}
        stats: dict[str, list] = {"mean": [], "std": [], "min": [], "max": []}
        for s in steps:
            rows = [d[s] for d in by_step]
            curve["samples"].append(float(rows[0].get("samples", 0)) + x_offset)
            curve["wall_seconds"].append(
                float(np.mean([r.get("wall_seconds") or 0.0 for r in rows]))
            )
            agg = aggregate([r[key] for r in rows])
            for k in stats:
                stats[k].append(agg[k])
        out[key] = {**curve, **stats}
    return out


def _mean_over(rows: list[dict], key: str, lo: float = 0.0, hi: float = 1.0) -> float | None:
    """Mean of `key` over the steps in the [lo, hi) fraction of the run."""
    ys = [r[key] for r in rows if _finite(r.get(key))]
    if not ys:
        return None
    a, b = int(lo * len(ys)), max(int(lo * len(ys)) + 1, math.ceil(hi * len(ys)))
    return float(np.mean(ys[a:b]))


def _nondegenerate_variance(rows: list[dict]) -> dict:
    """Run mean of GRPO's per-step variance on non-degenerate groups, each step weighted by
    its non-degenerate share (a step whose groups are all degenerate logs 0 and has none)."""
    key, share = "adv/variance_nondegenerate", "adv/degenerate_fraction"
    pts = [(r[key], 1.0 - r[share]) for r in rows if _finite(r.get(key)) and _finite(r.get(share))]
    weight = sum(w for _, w in pts)
    return {key: sum(v * w for v, w in pts) / weight} if weight > 0 else {}


# ----------------------------------------------------------------------- one run
def _eval_metrics(record: dict) -> dict:
    return {k[5:]: v for k, v in record.items() if k.startswith("eval/") and _finite(v)}


def run_record(run_dir: Path, steps: int) -> dict:
    """What the summary needs from one finished run directory (committed files only)."""
    from spo.study.runs import final_calibration, final_diagnostics
    from spo.train.logging import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in rows if r.get("step", 0) >= 1 and _finite(r.get("reward/mean"))]
    evals = [r for r in rows if _eval_metrics(r)]
    base = next((r for r in evals if r.get("step") == 0), None)
    last = evals[-1] if evals and evals[-1].get("step", 0) > 0 else None
    diag = final_diagnostics(run_dir, steps) or {}
    calib = final_calibration(run_dir, steps) or {}
    tracker = {k: diag.get(k) for k in TRACKER if _finite(diag.get(k))}
    final = _eval_metrics(last) if last else {}
    ess = (diag.get("sampler") or {}).get("ess_fraction")
    if _finite(ess):
        tracker["sampler_ess_fraction"] = ess
    for k, v in (diag.get("visits") or {}).items():  # runs made before visits were counted: none
        if _finite(v):
            tracker[f"visits_{k}"] = v
    return {
        "rows": rows,
        "steps": train[-1]["step"] if train else 0,
        "samples": train[-1].get("samples") if train else 0,
        "train_seconds": train[-1].get("wall_seconds") if train else None,
        "final_step": last.get("step") if last else None,
        "final": final,
        "base": _eval_metrics(base) if base else {},
        "run_mean": {
            **{k: v for k in TRAIN_CURVES if (v := _mean_over(train, k)) is not None},
            **_nondegenerate_variance(train),
        },
        "first_quarter": {
            k: v for k in SIGNAL if (v := _mean_over(train, k, 0.0, 0.25)) is not None
        },
        "last_quarter": {
            k: v for k in SIGNAL if (v := _mean_over(train, k, 0.75, 1.0)) is not None
        },
        "tracker": tracker,
        "calibration": {k: calib[k] for k in CALIBRATION if _finite(calib.get(k))},
        "machinery": run_machinery(train, calib),
        "heldout_points": heldout_points(rows, sorted(k for k in final if "/" not in k)),
    }


def init_samples(spec, per_prompt: int, steps: int) -> int:
    """Offline-init samples of a run: its run.json, else the values file (sum of trials),
    else (older studies, values not committed) per_prompt × the final tracker's prompts,
    which is what `spo init-values --samples per_prompt` draws."""
    from spo.study.runs import final_diagnostics, read_run_summary

    if spec.values is None:
        return 0
    record = read_run_summary(spec.run_dir) or {}
    if isinstance(record.get("init_samples"), int):
        return record["init_samples"]
    if spec.values.is_file():
        import pyarrow.parquet as pq

        return round(float(np.sum(pq.read_table(spec.values, columns=["trials"])["trials"])))
    prompts = (final_diagnostics(spec.run_dir, steps) or {}).get("num_prompts")
    return per_prompt * int(prompts) if _finite(prompts) else 0


# ----------------------------------------------------------------------- summary
def machine_info() -> dict:
    import os

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def build_summary(plan, specs, *, command: str = "", seconds: float = 0.0, train_commands=None):
    """The summary dict (see the module docstring); `specs` are the plan's runs."""
    from spo.study.runs import resolved_config, study_state

    base_cfg = resolved_config(plan.config, [*plan.overrides, "algo=spo"])
    settings_keys = (
        "model.path",
        "task.name",
        "task.train_size",
        "task.test_size",
        "steps",
        "samples_per_step",
        "group_size",
        "optim.updates_per_step",
        "optim.lr",
        "rollout.temperature",
        "rollout.max_new_tokens",
        "eval_every",
        "eval_k",
        "eval_size",
        "threads",
    )
    arms = {}
    failed = []
    for arm, info in plan.arms.items():
        mine = [s for s in specs if s.arm == arm]
        records, runs = [], []
        for s in mine:
            state = study_state(s.run_dir, plan.steps)
            entry = {"seed": s.seed, "run_dir": str(s.run_dir), "status": state}
            if s.message:
                entry["message"] = s.message
            if state == "finished":
                rec = run_record(s.run_dir, plan.steps)
                records.append(rec)
                entry.update({k: v for k, v in rec.items() if k != "rows"})
            else:
                failed.append(f"{arm}/seed{s.seed}")
            runs.append(entry)
        init = init_samples(mine[0], plan.init_samples, plan.steps) if mine else 0
        cfg = resolved_config(plan.config, plan.train_args(mine[0])) if mine else {}
        arms[arm] = {
            "algo": info["algo"],
            "what": info["what"],
            "overrides": info["overrides"],
            "lr": cfg.get("optim.lr"),
            "seeds": [s.seed for s in mine],
            "n_finished": len(records),
            "init_samples": init,
            "final": aggregate_dicts([r["final"] for r in records]),
            "base": aggregate_dicts([r["base"] for r in records]),
            "train_seconds": aggregate([r["train_seconds"] for r in records]),
            "run_mean": aggregate_dicts([r["run_mean"] for r in records]),
            "first_quarter": aggregate_dicts([r["first_quarter"] for r in records]),
            "last_quarter": aggregate_dicts([r["last_quarter"] for r in records]),
            "tracker": aggregate_dicts([r["tracker"] for r in records]),
            "calibration": aggregate_dicts([r["calibration"] for r in records]),
            "machinery": aggregate_dicts([r["machinery"] for r in records]),
            "heldout_curves": align_curves(
                [
                    [{**r, **_eval_metrics(r)} for r in rec["rows"] if _eval_metrics(r)]
                    for rec in records
                ],
                sorted({k for rec in records for k in rec["final"] if "/" not in k}),
                x_offset=init,
            ),
            "train_curves": align_curves(
                [rec["rows"] for rec in records], TRAIN_CURVES, x_offset=init
            ),
            "runs": runs,
        }
    return {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "train_commands": train_commands or {},
        "config": str(plan.config),
        "overrides": plan.overrides,
        "out": str(plan.out),
        "settings": {k: base_cfg.get(k) for k in settings_keys},
        "calibration_samples": plan.calibration,
        "machine": machine_info(),
        "seconds": seconds,
        "arms": arms,
        "paired": paired_differences(arms),
        "paired_machinery": paired_machinery(arms),
        "paired_wallclock": paired_wallclock(arms, _final_keys(arms)),
        "failed": failed,
    }


def _final_keys(arms: dict) -> list[str]:
    """The overall held-out metrics (greedy, avg@k, ...) any arm has at its end."""
    return sorted({k for a in arms.values() for k in a["final"] if "/" not in k})


def write_summary(plan, specs, **kw) -> dict:
    """summary.json, the plots and report.html in plan.out; returns the summary."""
    summary = build_summary(plan, specs, **kw)
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    images = plots(summary)
    for name, image in images.items():
        (out / name).write_bytes(image)
    summary["plots"] = list(images)
    write_json(out / "summary.json", summary)
    finished = [
        (Path(r["run_dir"]), f"{arm} · seed{r['seed']}")
        for arm, a in summary["arms"].items()
        for r in a["runs"]
        if r["status"] == "finished"
    ]
    if finished:
        from spo.study.report import build_report

        text, _ = build_report([p for p, _ in finished], labels=[lab for _, lab in finished])
        (out / "report.html").write_text(text)
    return summary


# ----------------------------------------------------------------------- plots
def _k(summary: dict) -> int:
    return int(summary["settings"].get("eval_k") or 1)


def _band(ax, xs, curve, color, label, scale=100.0, style="-"):
    mean = np.asarray(curve["mean"], float) * scale
    lo = np.asarray(curve["min"], float) * scale
    hi = np.asarray(curve["max"], float) * scale
    ax.plot(xs, mean, style, color=color, lw=1.8, marker="o", ms=3, label=label)
    ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)


def _label(arm: str, a: dict) -> str:
    return f"{arm} ({a['n_finished']} seed{'s' if a['n_finished'] != 1 else ''})"


def fig_accuracy(summary: dict, x: str) -> bytes:
    k = _k(summary)
    keys = ("greedy", f"avg@{k}", f"maj@{k}")
    fig, axes = figure(len(keys))
    colors = arm_colors(summary)
    wall = x == "wall_seconds"
    top = max(
        (
            c["wall_seconds"][-1]
            for a in summary["arms"].values()
            for c in a["heldout_curves"].values()
        ),
        default=0.0,
    )
    scale, unit = (60.0, "min") if top > 300 else (1.0, "s")
    for ax, key in zip(axes, keys, strict=True):
        for arm, a in summary["arms"].items():
            c = a["heldout_curves"].get(key)
            if c:
                xs = np.asarray(c[x], float) / (scale if wall else 1.0)
                _band(ax, xs, c, colors[arm], _label(arm, a))
        if not ax.lines:
            no_data(ax, f"held-out {key}")
        ax.set_title(f"held-out {key} (mean, min–max band over seeds)", fontsize=10)
        ax.set_ylabel("%")
        ax.set_xlabel(f"training wall-clock ({unit})" if wall else "samples")
    if axes[0].lines:
        axes[0].legend(fontsize=8, frameon=False)
    return png(fig)


def fig_signal(summary: dict) -> bytes:
    titles = {
        "adv/degenerate_fraction": "samples in degenerate groups (group algorithms)",
        "adv/abs_le_1e-4": "samples with |A| ≤ 1e-4",
        "adv/abs_le_0.02": "samples with |A| ≤ 0.02",
    }
    fig, axes = figure(len(SIGNAL))
    colors = arm_colors(summary)
    for ax, key in zip(axes, SIGNAL, strict=True):
        for arm, a in summary["arms"].items():
            c = a["train_curves"].get(key)
            if c:
                _band(ax, np.asarray(c["samples"], float), c, colors[arm], _label(arm, a))
        if not ax.lines:
            no_data(ax, key)
        ax.set_title(titles[key], fontsize=10)
        ax.set_ylabel("% of the step's samples")
        ax.set_xlabel("samples")
    if axes[0].lines:
        axes[0].legend(fontsize=8, frameon=False)
    return png(fig)


def grouped(arm: dict) -> bool:
    """Whether the arm's algorithm draws groups of responses per prompt (ALGORITHMS)."""
    return ALGORITHMS[arm["algo"]].grouped


def variance_key(arm: dict) -> str:
    """Group algorithms: non-degenerate groups only; single stream: every sample."""
    return "adv/variance_nondegenerate" if grouped(arm) else "adv/variance"


def fig_variance(summary: dict) -> bytes:
    fig, axes = figure(1, height=3.0)
    ax = axes[0]
    colors = arm_colors(summary)
    names, means, lo, hi = [], [], [], []
    for arm, a in summary["arms"].items():
        agg = a["run_mean"].get(variance_key(a))
        if not agg or agg["mean"] is None:
            continue
        names.append(f"{arm}\n{'non-degenerate groups' if grouped(a) else 'all samples'}")
        means.append(agg["mean"])
        lo.append(agg["mean"] - agg["min"])
        hi.append(agg["max"] - agg["mean"])
    if names:
        ax.bar(
            range(len(names)),
            means,
            yerr=[lo, hi],
            capsize=4,
            color=[colors[n.split("\n")[0]] for n in names],
        )
        ax.set_xticks(range(len(names)), names, fontsize=8)
    else:
        no_data(ax, "advantage variance")
    ax.set_title(
        "variance of the unnormalised advantage, mean over training (bars: min–max over seeds)",
        fontsize=10,
    )
    ax.set_ylabel("Var(A)")
    return png(fig)


PLOTS = {
    "accuracy_vs_samples.png": lambda s: fig_accuracy(s, "samples"),
    "accuracy_vs_wallclock.png": lambda s: fig_accuracy(s, "wall_seconds"),
    "signal_shares.png": fig_signal,
    "advantage_variance.png": fig_variance,
}


def plots(summary: dict) -> dict[str, bytes]:
    """PLOTS, and machinery.png where some arm logged the within-batch variance ratio."""
    out = {name: make(summary) for name, make in PLOTS.items()}
    if any("var/ratio" in a["train_curves"] for a in summary["arms"].values()):
        out["machinery.png"] = fig_machinery(summary)
    return out
