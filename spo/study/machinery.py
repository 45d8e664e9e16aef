"""Does SPO's machinery work? The study numbers of issue 19, from committed metrics only.

Per run (`run_machinery`, from metrics.jsonl rows and the final calibration record):
- **variance reduction, within the run**: the pooled ratio Σ_t Var_t(r − b) / Σ_t Var_t(r)
  of the per-step batch variances (`var/residual`, `var/reward`; b = the baseline the
  algorithm subtracts, read before the update: v̂₋₁, group mean, leave-one-out, V₋₁, 0)
  over the whole run and its first / last quarter. < 1: the baseline removes variance in
  the batches it was used on; pooled rather than a mean of per-step ratios so that steps
  with almost no reward variance do not dominate;
- **the oracle bound at the end**: 1 − Var_x(p)/Var(r) (`spo.study.oracle`) of the fresh
  calibration samples of the final policy on the training prompts: the ratio a perfect
  per-prompt baseline would reach on that policy (only where calibration ran);
- **ρ on revisits** (the ρ that discounts an existing estimate): its mean and the shares at
  ρ_min, at ρ_max and strictly inside, each step weighted by its revisit count
  (1 − `rho/first_visit_share`), and the median over steps of the per-step median D;
- **PPO clipping**: the mean over steps of the share of tokens whose ratio was clipped
  (`train/clip_fraction`) and dual-clipped, the mean approx. KL and the largest ratio.

Across runs, seed by seed (seed s of every arm shares its prompts and initial policy):
`paired_machinery` gives arm − SPO of the per-run numbers above (how an ablation moves
the variance ratio, ρ, the clip share), and `paired_wallclock` SPO − arm at **equal
training wall-clock**:
both runs' held-out curves (eval points vs training seconds, evaluation excluded) are read
by linear interpolation at the time the faster of the two finished, and the per-seed time
ratio arm ÷ SPO. Intervals: Student-t over seeds (`spo.study.summary.t_interval`).
"""

from __future__ import annotations

import math

import numpy as np

from spo.study.plots import arm_colors, figure, no_data, png, smooth
from spo.study.stats import finite as _finite

MACHINERY_CURVES = (
    "var/reward",
    "var/residual",
    "var/ratio",
    "rho/revisit_mean",
    "rho/revisit_at_min",
    "rho/revisit_at_max",
    "train/clip_fraction",
    "train/approx_kl",
)
BOUND_KEYS = ("rho_at_min", "rho_at_max", "rho_inside")
# per-run numbers compared seed by seed with SPO's (`paired_machinery`)
PAIRED_MACHINERY = (
    "var_ratio_pooled",
    "var_ratio_pooled_last_quarter",
    "rho_revisit_mean",
    "rho_inside",
    "clip_fraction",
    "approx_kl",
    "ratio_max",
)


def _quarter(rows: list[dict], lo: float, hi: float) -> list[dict]:
    a = int(lo * len(rows))
    return rows[a : max(a + 1, math.ceil(hi * len(rows)))]


def pooled_ratio(rows: list[dict]) -> float | None:
    """Σ var/residual ÷ Σ var/reward over the rows that log both (None without variance)."""
    pts = [
        (r["var/residual"], r["var/reward"])
        for r in rows
        if _finite(r.get("var/residual")) and _finite(r.get("var/reward"))
    ]
    total = sum(v for _, v in pts)
    return sum(res for res, _ in pts) / total if total > 0 else None


def revisit_rho(rows: list[dict]) -> dict[str, float]:
    """Revisit-weighted ρ statistics (see the module docstring); {} without revisits."""
    pts = []
    for r in rows:
        w = 1.0 - r.get("rho/first_visit_share", float("nan"))
        keys = ("rho/revisit_mean", "rho/revisit_at_min", "rho/revisit_at_max")
        if _finite(w) and w > 0 and all(_finite(r.get(k)) for k in keys):
            pts.append((w, *(r[k] for k in keys)))
    if not pts:
        return {}
    w = np.array([p[0] for p in pts])
    mean, at_min, at_max = (float(np.average([p[i] for p in pts], weights=w)) for i in (1, 2, 3))
    out = {
        "rho_revisit_mean": mean,
        "rho_at_min": at_min,
        "rho_at_max": at_max,
        "rho_inside": max(0.0, 1.0 - at_min - at_max),
    }
    key = "rho/revisit_divergence_median"
    d = [r[key] for r in rows if _finite(r.get(key))]
    if d:
        out["rho_divergence_median"] = float(np.median(d))
    return out


def oracle_end(calibration: dict | None) -> dict[str, float]:
    """Oracle share of the final policy's fresh calibration samples (rates × K), and the
    variance ratio 1 − share a perfect per-prompt baseline would reach; {} without data."""
    from spo.study.oracle import variance_components

    cal = calibration or {}
    rate, k = cal.get("rate"), cal.get("samples_per_prompt")
    if not isinstance(rate, list) or not isinstance(k, int) or k < 2 or len(rate) < 2:
        return {}
    wins = np.rint(np.asarray(rate, dtype=np.float64) * k).astype(int)
    reward_PK = (np.arange(k)[None, :] < wins[:, None]).astype(np.float64)
    share = variance_components(reward_PK)["oracle_share"]
    if not _finite(share):
        return {}
    return {"oracle_share_end": share, "oracle_ratio_end": 1.0 - share}


def run_machinery(train_rows: list[dict], calibration: dict | None = None) -> dict[str, float]:
    """The per-run numbers of the module docstring (keys absent where not logged)."""
    out: dict[str, float] = {}
    quarters = {"": (0, 1), "_first_quarter": (0, 0.25), "_last_quarter": (0.75, 1)}
    for name, (lo, hi) in quarters.items():
        ratio = pooled_ratio(_quarter(train_rows, lo, hi)) if train_rows else None
        if ratio is not None:
            out[f"var_ratio_pooled{name}"] = ratio
    out.update(revisit_rho(train_rows))
    for key, name in (
        ("train/clip_fraction", "clip_fraction"),
        ("train/dual_clip_fraction", "dual_clip_fraction"),
        ("train/approx_kl", "approx_kl"),
    ):
        ys = [r[key] for r in train_rows if _finite(r.get(key))]
        if ys:
            out[name] = float(np.mean(ys))
    ys = [r["train/ratio_max"] for r in train_rows if _finite(r.get("train/ratio_max"))]
    if ys:
        out["ratio_max"] = float(np.max(ys))
    out.update(oracle_end(calibration))
    return out


def heldout_points(rows: list[dict], keys) -> dict[str, list[float]]:
    """{wall_seconds, samples, key...} of the run's held-out evals (step 0 included)."""
    evals = [r for r in rows if any(_finite(r.get(f"eval/{k}")) for k in keys)]
    out: dict[str, list[float]] = {
        "wall_seconds": [float(r.get("wall_seconds") or 0.0) for r in evals],
        "samples": [float(r.get("samples") or 0.0) for r in evals],
    }
    for k in keys:
        out[k] = [r.get(f"eval/{k}") if _finite(r.get(f"eval/{k}")) else None for r in evals]
    return out


def value_at(points: dict, key: str, seconds: float) -> float | None:
    """The held-out `key` at `seconds` of training (linear between eval points)."""
    pts = [(t, v) for t, v in zip(points["wall_seconds"], points.get(key) or [], strict=False)]
    pts = [(t, v) for t, v in pts if _finite(v)]
    if not pts or seconds > pts[-1][0] + 1e-9:
        return None
    ts, vs = zip(*pts, strict=True)
    return float(np.interp(seconds, ts, vs))


def paired_machinery(arms: dict, keys=PAIRED_MACHINERY, reference: str = "spo") -> dict:
    """{arm: {key: t_interval of arm − reference over the seeds where both runs have the
    per-run machinery number `key`, plus "seeds" and "diffs"}}; arms with none left out."""
    from spo.study.stats import t_interval

    if reference not in arms:
        return {}

    def per_seed(arm: str) -> dict[int, dict]:
        return {r["seed"]: r["machinery"] for r in arms[arm]["runs"] if r.get("machinery")}

    ref = per_seed(reference)
    out = {}
    for arm in arms:
        if arm == reference:
            continue
        mine, rows = per_seed(arm), {}
        for key in keys:
            seeds = sorted(
                s
                for s in set(ref) & set(mine)
                if _finite(ref[s].get(key)) and _finite(mine[s].get(key))
            )
            if seeds:
                diffs = [mine[s][key] - ref[s][key] for s in seeds]
                rows[key] = {**t_interval(diffs), "seeds": seeds, "diffs": diffs}
        if rows:
            out[arm] = rows
    return out


def paired_wallclock(arms: dict, keys, reference: str = "spo") -> dict:
    """{arm: {"time_ratio": t_interval of arm ÷ SPO training seconds, key: t_interval of
    SPO − arm at the faster run's final training seconds, "seconds": those times}}."""
    from spo.study.stats import t_interval

    if reference not in arms:
        return {}

    def runs(arm: str) -> dict[int, dict]:
        return {r["seed"]: r for r in arms[arm]["runs"] if r.get("heldout_points")}

    ref = runs(reference)
    out = {}
    for arm in arms:
        if arm == reference:
            continue
        mine = runs(arm)
        seeds = sorted(set(ref) & set(mine))
        if not seeds:
            continue
        row: dict = {"seeds": seeds, "seconds": []}
        ratios, diffs = [], {k: [] for k in keys}
        for s in seeds:
            a, b = ref[s]["heldout_points"], mine[s]["heldout_points"]
            t = min(a["wall_seconds"][-1], b["wall_seconds"][-1])
            row["seconds"].append(t)
            if a["wall_seconds"][-1] > 0:
                ratios.append(b["wall_seconds"][-1] / a["wall_seconds"][-1])
            for k in keys:
                va, vb = value_at(a, k, t), value_at(b, k, t)
                if va is not None and vb is not None:
                    diffs[k].append(va - vb)
        row["time_ratio"] = {**t_interval(ratios), "values": ratios}
        for k in keys:
            row[k] = {**t_interval(diffs[k]), "diffs": diffs[k]}
        out[arm] = row
    return out


# ----------------------------------------------------------------------- plot
def fig_machinery(summary: dict) -> bytes:
    """Three panels over training samples, seed mean per arm (smoothed): the within-batch
    variance ratio Var(r − b)/Var(r), the mean ρ applied on revisits (arms whose baseline
    is the tracker; others run it only to sample prompts), the clip fraction."""
    from spo.algo.algorithms import ALGORITHMS

    panels = (
        ("var/ratio", "Var(r − b) / Var(r) within each batch", 1.0),
        ("rho/revisit_mean", "mean ρ applied on revisits", 1.0),
        ("train/clip_fraction", "tokens clipped by the PPO ratio clip (%)", 100.0),
    )
    fig, axes = figure(len(panels))
    colors = arm_colors(summary)
    for ax, (key, title, scale) in zip(axes, panels, strict=True):
        for arm, a in summary["arms"].items():
            if key.startswith("rho/") and not ALGORITHMS[a["algo"]].tracker_baseline:
                continue
            c = a["train_curves"].get(key)
            if c and len(c["mean"]) > 1:
                y = smooth(np.asarray(c["mean"], float)) * scale
                ax.plot(np.asarray(c["samples"], float), y, color=colors[arm], lw=1.5, label=arm)
        if not ax.lines:
            no_data(ax, key)
        if key == "var/ratio" and ax.lines:
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("samples")
    if axes[0].lines:
        axes[0].legend(fontsize=7, frameon=False)
    return png(fig)
