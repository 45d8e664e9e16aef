"""The markdown study page of a `spo compare` run, rendered from OUT/summary.json.

`spo compare ... --markdown docs/results/spo_vs_grpo.md` writes it; every number on the
page comes from summary.json (mean ± std over seeds, [min–max]), the images are the
study's plots linked relative to the page, and the exact commands, the machine and the
learning-rate search budget are stated so the page can be reproduced and judged.
"""

from __future__ import annotations

import os
from pathlib import Path

from spo.algo.algorithms import ALGORITHMS
from spo.study.summary import grouped, variance_key


def fmt(agg: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    """'83.4 ± 2.1 [80.1–85.9]'; one seed: '83.4'; nothing: '—'."""
    if not agg or agg.get("mean") is None:
        return "—"
    m = f"{agg['mean'] * scale:.{digits}f}"
    if agg.get("n", 0) < 2 or agg.get("std") is None:
        return m
    return (
        f"{m} ± {agg['std'] * scale:.{digits}f} "
        f"[{agg['min'] * scale:.{digits}f}–{agg['max'] * scale:.{digits}f}]"
    )


def _mean(agg: dict | None, scale: float = 100.0) -> str:
    return "—" if not agg or agg.get("mean") is None else f"{agg['mean'] * scale:.1f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _pp(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}"


def interval_cell(row: dict | None, show=_pp) -> str:
    """'+3.2 [−1.0, 7.4]': mean [95% t-interval] of a {mean, lo, hi, n} row, each number
    written by `show` (default: percentage points); one seed: '+3.2 (n = 1)'."""
    if not row or row.get("mean") is None:
        return "—"
    if row.get("lo") is None:
        return f"{show(row['mean'])} (n = {row['n']})"
    return f"{show(row['mean'])} [{show(row['lo'])}, {show(row['hi'])}]"


def paired_cell(row: dict | None) -> str:
    """A paired difference in percentage points (see `interval_cell`)."""
    return interval_cell(row)


def headline(summary: dict, a: str = "spo", b: str = "grpo") -> str:
    """'SPO − GRPO' paired differences of the final held-out metrics with 95% t-intervals."""
    rows = (summary.get("paired") or {}).get(b) if a == "spo" else None
    if not rows:
        return ""
    k = int(summary["settings"].get("eval_k") or 1)
    parts = []
    for key in ("greedy", f"avg@{k}", f"maj@{k}", f"pass@{k}"):
        row = rows.get(key)
        if not row or row.get("mean") is None:
            continue
        covers = row.get("lo") is not None and row["lo"] <= 0 <= row["hi"]
        note = "; the interval includes 0" if covers else ""
        parts.append(f"{key} {paired_cell(row)} pp{note}")
    if not parts:
        return ""
    n = max(r["n"] for r in rows.values())
    return (
        f"Final held-out, {a.upper()} − {b.upper()}, paired by seed (mean, 95% t-interval, "
        f"n = {n} seeds): " + "; ".join(parts) + "."
    )


def paired_table(summary: dict) -> list[str]:
    """Lines of the paired-differences section (empty without pairs)."""
    paired = summary.get("paired") or {}
    if not paired:
        return []
    k = int(summary["settings"].get("eval_k") or 1)
    keys = ("greedy", f"avg@{k}", f"maj@{k}", f"pass@{k}")
    rows = []
    for arm, r in paired.items():
        n = max(x["n"] for x in r.values())
        rows.append([f"spo − {arm}", str(n), *[paired_cell(r.get(key)) for key in keys]])
    return [
        "### Paired differences (pp)",
        "",
        "SPO minus each arm, seed by seed (seed s of every arm shares its prompts, initial "
        "policy and eval prompts): mean and 95% Student-t interval over the n common seeds "
        "(t(0.975, n−1)·sd/√n; n = 1: no interval). With few seeds the interval is wide.",
        "",
        _table(["pair", "n", *keys], rows),
        "",
    ]


def lr_statement(summary: dict, note: str | None) -> str:
    if note:
        return note
    lrs = {a["lr"] for a in summary["arms"].values()}
    if len(lrs) == 1:
        return (
            f"every arm uses the same learning rate, optim.lr = {lrs.pop()}, taken from the "
            "config without a search for any arm: the learning-rate search budget is zero "
            "runs for SPO and zero for GRPO."
        )
    return "Arms use different learning rates: " + ", ".join(
        f"{arm} {a['lr']}" for arm, a in summary["arms"].items()
    )


def _levels(summary: dict, k: int) -> list[str]:
    keys = {key for a in summary["arms"].values() for key in a["final"]}
    levels = {
        key.split("/difficulty=")[1] for key in keys if key.startswith(f"avg@{k}/difficulty=")
    }
    return sorted(levels, key=lambda x: (len(x), x))


def _train_minutes(summary: dict) -> float:
    return (
        sum(r.get("train_seconds") or 0.0 for a in summary["arms"].values() for r in a["runs"]) / 60
    )


def title(summary: dict) -> str:
    """'SPO vs GRPO vs CRITIC: arithmetic with <model>' from the algorithm arms."""
    s = summary["settings"]
    algos = [a for a, x in summary["arms"].items() if x["algo"] == a] or ["spo"]
    names = " vs ".join(a.upper() for a in algos)
    return f"{names}: {s.get('task.name')} with {s.get('model.path')}"


def status_line(summary: dict) -> list[str]:
    """'**Status: partial.** 12 of 30 runs finished; ...' (nothing when all finished)."""
    failed = summary["failed"]
    if not failed:
        return []
    total = sum(len(a["runs"]) for a in summary["arms"].values())
    return [
        f"**Status: partial.** {total - len(failed)} of {total} runs finished; the "
        f"{len(failed)} others are not in any table below (rerun the command at the end to "
        "continue: finished runs are kept, interrupted ones resume).",
        "",
    ]


def reading_section(reading: str | None) -> list[str]:
    """A hand-written reading of the results, kept verbatim (`--reading FILE.md`), so
    regenerating the page keeps it; its numbers must come from the tables below."""
    text = (reading or "").strip()
    if not text:
        return []
    return [text if text.startswith("#") else "## Reading\n\n" + text, ""]


def render_markdown(
    summary: dict, md_path: Path, out_dir: Path, *, lr_note=None, reading: str | None = None
) -> str:
    """The study page; image links are relative to `md_path`."""
    s, arms = summary["settings"], summary["arms"]
    k = int(s.get("eval_k") or 1)
    rel = os.path.relpath(Path(out_dir), Path(md_path).parent)

    def img(name: str, alt: str) -> str:
        return f"![{alt}]({Path(rel, name).as_posix()})"

    total = (s.get("steps") or 0) * (s.get("samples_per_step") or 0)
    m = summary["machine"]
    lines = [
        f"# {title(summary)}",
        "",
        f"Generated by `spo compare` on {summary['created']} from `{summary['out']}/summary.json`; "
        "every number below can be rerun with the commands at the end.",
        "",
        *status_line(summary),
        *reading_section(reading),
        "## Setup",
        "",
        f"- Model `{s.get('model.path')}`, task `{s.get('task.name')}` "
        f"({_size(s.get('task.train_size'))} training prompts, {s.get('eval_size')} of "
        f"{_size(s.get('task.test_size'))} held-out prompts evaluated).",
        f"- Every arm: {s.get('steps')} steps × {s.get('samples_per_step')} samples = "
        f"{total} samples and {s.get('steps') * (s.get('optim.updates_per_step') or 1)} optimizer "
        f"updates; group algorithms draw {s.get('samples_per_step')}/{s.get('group_size')} "
        f"prompts × {s.get('group_size')} responses. Temperature {s.get('rollout.temperature')}, "
        f"≤ {s.get('rollout.max_new_tokens')} new tokens.",
        f"- Held-out eval every {s.get('eval_every')} steps, at step 0 and at the end: one greedy "
        f"response and {k} samples per prompt (avg@{k}, unbiased pass@j, maj@{k}); same eval "
        "seed for all arms of a seed.",
        f"- Learning rate: {lr_statement(summary, lr_note)}",
        f"- Machine: {m.get('platform')}, {m.get('cpu_count')} CPUs"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f", torch {m.get('torch')}, threads={s.get('threads')}; training time summed over "
        f"all runs {_train_minutes(summary):.0f} min (evaluation excluded).",
        "",
        "Values are mean ± std over seeds [min–max]; a single number is one seed.",
        "",
        "## Held-out accuracy (%)",
        "",
    ]
    head = ["arm", "seeds", "greedy", f"avg@{k}", f"pass@{k}", f"maj@{k}", "train time (min)"]
    rows = []
    first = next(iter(arms.values()), None)
    if first and first["base"]:
        b = first["base"]
        rows.append(["initial policy", "", *[fmt(b.get(x)) for x in head[2:6]], ""])
    for arm, a in arms.items():
        rows.append(
            [
                f"**{arm}**",
                str(a["n_finished"]),
                *[fmt(a["final"].get(x)) for x in head[2:6]],
                fmt(a["train_seconds"], scale=1 / 60),
            ]
        )
    lines += [_table(head, rows), ""]
    hl = headline(summary)
    if hl:
        lines += [hl, ""]
    lines += paired_table(summary)
    lines += [
        img("accuracy_vs_samples.png", "held-out accuracy vs samples"),
        "",
        img("accuracy_vs_wallclock.png", "held-out accuracy vs training wall-clock"),
        "",
    ]
    levels = _levels(summary, k)
    if levels:
        lines += [f"Final avg@{k} (%) by difficulty level:", ""]
        lines += [
            _table(
                ["arm", *levels],
                [
                    [arm, *[fmt(a["final"].get(f"avg@{k}/difficulty={lv}")) for lv in levels]]
                    for arm, a in arms.items()
                ],
            ),
            "",
        ]
    lines += [
        "## Samples without learning signal (%)",
        "",
        "Share of each step's samples in degenerate groups (all rewards equal: zero GRPO "
        "advantage) and with |A| ≤ 1e-4 / ≤ 0.02 (unnormalised advantage); whole run, and "
        "in brackets the mean of the first → last quarter of training.",
        "",
    ]
    rows = []
    for arm, a in arms.items():
        cells = []
        for key in ("adv/degenerate_fraction", "adv/abs_le_1e-4", "adv/abs_le_0.02"):
            whole = a["run_mean"].get(key)
            if not whole:
                cells.append("—")
                continue
            early, late = (_mean(a[q].get(key)) for q in ("first_quarter", "last_quarter"))
            cells.append(f"{fmt(whole)} ({early} → {late})")
        rows.append([arm, *cells])
    lines += [
        _table(["arm", "degenerate groups", r"\|A\| ≤ 1e-4", r"\|A\| ≤ 0.02"], rows),
        "",
        img("signal_shares.png", "learning-signal shares over training"),
        "",
        "## Variance of the unnormalised advantage",
        "",
        "Mean over training steps of the batch variance of A before normalisation: r − v̂ "
        "(SPO), r (SPO without baseline), r − group mean on non-degenerate groups (GRPO).",
        "",
    ]
    ref = arms.get("spo", {}).get("run_mean", {}).get("adv/variance")
    rows = []
    for arm, a in arms.items():
        agg = a["run_mean"].get(variance_key(a))
        ratio = "—"
        if agg and ref and ref["mean"]:
            ratio = f"{agg['mean'] / ref['mean']:.2f}"
        which = "non-degenerate groups" if grouped(a) else "all samples"
        rows.append([arm, which, fmt(agg, scale=1.0, digits=4), ratio])
    lines += [
        _table(["arm", "samples", "Var(A)", "÷ SPO"], rows),
        "",
        img("advantage_variance.png", "advantage variance"),
        "",
        *machinery_section(summary, img),
        "## Value tracker at the end",
        "",
        f"Frontier: share of seen prompts with 0.1 ≤ v̂ ≤ 0.9. Calibration of v̂ against "
        f"{summary.get('calibration_samples')} fresh samples per prompt on training prompts of "
        "the final policy: Brier = reliability − resolution + uncertainty (+ a small "
        "within-bin term); reliability is the lag of v̂ behind the policy, resolution how "
        "far v̂ sorts prompts by their fresh pass rate. Skill = 1 − Brier / Brier of the "
        "reference, the tracker's own mean v̂ for every prompt (known without the fresh "
        "samples): > 0 means the per-prompt values add information. AUC: chance that v̂ "
        "ranks a fresh success above a fresh failure (0.5 = none); Spearman with the fresh "
        "per-prompt rate.",
        "",
    ]
    rows = []
    for arm, a in arms.items():
        if not ALGORITHMS[a["algo"]].tracker_baseline:  # v̂ is calibrated for these only
            continue
        t, c = a["tracker"], a["calibration"]
        rows.append(
            [
                arm,
                fmt(t.get("frontier_seen")),
                fmt(t.get("sampler_ess_fraction")),
                *[fmt(c.get(key), 1.0, 4) for key in ("brier", "reliability", "resolution")],
                *[fmt(c.get(key), 1.0, 2) for key in ("brier_skill", "auc", "spearman")],
            ]
        )
    lines += [
        _table(
            [
                "arm",
                "frontier %",
                "sampler ESS %",
                "Brier",
                "reliability",
                "resolution",
                "skill vs mean v̂",
                "AUC",
                "Spearman",
            ],
            rows,
        ),
        "",
        "## Arms",
        "",
        _table(
            ["arm", "overrides", "what", "extra samples"],
            [
                [
                    arm,
                    "`" + " ".join(a["overrides"]) + "`",
                    a["what"],
                    f"{a['init_samples']} (offline init)" if a["init_samples"] else "0",
                ]
                for arm, a in arms.items()
            ],
        ),
        "",
        "## Commands",
        "",
        "```bash",
        summary["command"] or "# (summary written without a recorded command)",
        "```",
        "",
        f"Each run is an ordinary `spo train` run under `{summary['out']}/runs/<arm>/seed<s>` "
        "(its exact command is in summary.json, `train_commands`); "
        f"`{summary['out']}/report.html` overlays all runs (`spo report`).",
    ]
    if summary["failed"]:
        lines += ["", f"**Unfinished runs (excluded):** {', '.join(summary['failed'])}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ machinery (issue 19)
def baseline_of(arm: dict) -> str:
    """What the arm's advantage subtracts (the b of Var(r − b))."""
    algo = ALGORITHMS[arm["algo"]]
    if algo.tracker_baseline:
        return "0 (none)" if "baseline=none" in arm["overrides"] else "tracker v̂₋₁"
    if algo.critic:
        return "critic V₋₁(x)"
    return {"rloo": "leave-one-out mean"}.get(arm["algo"], "group mean")


def seed_cell(arm: dict, key: str, scale: float = 1.0, digits: int = 3) -> str:
    """Mean and 95% t-interval over the arm's seeds of a per-run machinery number."""
    from spo.study.stats import t_interval

    values = [r["machinery"][key] for r in arm["runs"] if key in (r.get("machinery") or {})]
    t = t_interval(values)
    if t["mean"] is None:
        return "—"
    cell = f"{t['mean'] * scale:.{digits}f}"
    if t["lo"] is None:
        return f"{cell} (n = 1)"
    return f"{cell} [{t['lo'] * scale:.{digits}f}, {t['hi'] * scale:.{digits}f}]"


def _ratio_cell(row: dict | None) -> str:
    return interval_cell(row, lambda x: f"{x:.2f}")


def machinery_section(summary: dict, img) -> list[str]:
    """Variance reduction within runs, ρ on revisits, PPO clipping and SPO − arm at equal
    training wall-clock (`spo.study.machinery`); empty for studies that logged none of it."""
    arms = summary["arms"]
    if not any("var_ratio_pooled" in a.get("machinery", {}) for a in arms.values()):
        return []
    k = int(summary["settings"].get("eval_k") or 1)
    lines = [
        "## Does the machinery work?",
        "",
        "### Variance reduction, within each run",
        "",
        "Σ_t Var_t(r − b) / Σ_t Var_t(r) over the run's own batches (b: what the arm's "
        "advantage subtracts, read before the step's update; pooled over steps), mean and "
        "95% t-interval over seeds. Below 1: the baseline removed reward variance. The "
        "oracle bound is 1 − Var_x(p)/Var(r) of the final policy's fresh calibration "
        "samples on the training prompts: what a perfect per-prompt baseline would reach.",
        "",
    ]
    rows = []
    for arm, a in arms.items():
        if "var_ratio_pooled" not in a.get("machinery", {}):
            continue
        rows.append(
            [
                arm,
                baseline_of(a),
                *[
                    seed_cell(a, f"var_ratio_pooled{q}")
                    for q in ("", "_first_quarter", "_last_quarter")
                ],
                seed_cell(a, "oracle_ratio_end"),
            ]
        )
    lines += [
        _table(
            ["arm", "b", "whole run", "first quarter", "last quarter", "oracle bound at end"],
            rows,
        ),
        "",
        img("machinery.png", "variance ratio, revisit rho and clip fraction over training"),
        "",
    ]
    lines += visits_table(arms)
    rows = [
        [
            arm,
            seed_cell(a, "rho_revisit_mean"),
            *[seed_cell(a, key, 100.0, 1) for key in ("rho_at_min", "rho_at_max", "rho_inside")],
            seed_cell(a, "rho_divergence_median"),
        ]
        for arm, a in arms.items()
        if "rho_revisit_mean" in a.get("machinery", {}) and ALGORITHMS[a["algo"]].tracker_baseline
    ]
    if rows:
        lines += [
            "### Does ρ adapt?",
            "",
            "ρ applied when a prompt is revisited (the discount of its existing estimate), "
            "each step weighted by its revisits: mean, % of revisits at ρ_min, at ρ_max and "
            "strictly inside, and the median over steps of the step's median divergence D.",
            "",
            _table(["arm", "mean ρ", "% at ρ_min", "% at ρ_max", "% inside", "median D"], rows),
            "",
        ]
    rows = [
        [
            arm,
            seed_cell(a, "clip_fraction", 100.0, 2),
            seed_cell(a, "dual_clip_fraction", 100.0, 3),
            seed_cell(a, "approx_kl", 1.0, 4),
            seed_cell(a, "ratio_max", 1.0, 2),
        ]
        for arm, a in arms.items()
        if "clip_fraction" in a.get("machinery", {})
    ]
    if rows:
        lines += [
            "### PPO clipping",
            "",
            f"{summary['settings'].get('optim.updates_per_step')} optimizer updates per "
            "batch. Mean over steps of the share of response tokens whose ratio the clip "
            "cut (%), dual-clipped (%), the approx. KL to the sampling policy, and the "
            "largest ratio seen in the run (mean over seeds).",
            "",
            _table(["arm", "clipped %", "dual-clipped %", "approx KL", "max ratio"], rows),
            "",
        ]
    lines += paired_machinery_table(summary)
    paired = summary.get("paired_wallclock") or {}
    if paired:
        keys = [x for x in ("greedy", f"avg@{k}") if any(x in r for r in paired.values())]
        rows = [
            [
                f"spo − {arm}",
                str(len(r["seeds"])),
                _ratio_cell(r.get("time_ratio")),
                *[paired_cell(r.get(x)) for x in keys],
            ]
            for arm, r in paired.items()
        ]
        lines += [
            "### At equal training wall-clock",
            "",
            "Seed by seed: each run's held-out curve read (linearly between eval points) at "
            "the training time at which the faster of the pair finished; SPO minus the arm "
            "in pp, and the arm's training time ÷ SPO's, with 95% t-intervals. Training "
            f"time only (evaluation excluded), threads={summary['settings'].get('threads')} "
            f"per run, {_jobs(summary)} run(s) at a time in the order algorithms first, "
            "seed by seed.",
            "",
            _table(["pair", "n", "time ÷ SPO", *[f"{x} (pp)" for x in keys]], rows),
            "",
        ]
    return lines


# (key, column head, how a difference is written) of the paired machinery table
PAIRED_COLUMNS = (
    ("var_ratio_pooled", "Var ratio, whole run", lambda x: f"{x:+.3f}"),
    ("var_ratio_pooled_last_quarter", "Var ratio, last quarter", lambda x: f"{x:+.3f}"),
    ("rho_revisit_mean", "mean ρ", lambda x: f"{x:+.3f}"),
    ("rho_inside", "% ρ inside (pp)", _pp),
    ("clip_fraction", "clipped % (pp)", lambda x: f"{100 * x:+.2f}"),
    ("approx_kl", "approx KL", lambda x: f"{x:+.4f}"),
    ("ratio_max", "max ratio", lambda x: f"{x:+.2f}"),
)


def paired_machinery_table(summary: dict) -> list[str]:
    """Arm − SPO of the per-run machinery numbers, seed by seed (`paired_machinery`)."""
    paired = summary.get("paired_machinery") or {}
    cols = [c for c in PAIRED_COLUMNS if any(c[0] in r for r in paired.values())]
    if not cols:
        return []
    arms = summary.get("arms") or {}

    def cell(arm: str, key: str, show) -> str:
        a = arms.get(arm)  # ρ only where the tracker is the baseline (as in the ρ table)
        if key.startswith("rho_") and a and not ALGORITHMS[a["algo"]].tracker_baseline:
            return "—"
        return interval_cell(paired[arm].get(key), show)

    rows = [
        [
            f"{arm} − spo",
            str(max(len(x["seeds"]) for x in r.values())),
            *[cell(arm, key, show) for key, _, show in cols],
        ]
        for arm, r in paired.items()
    ]
    return [
        "### Each arm against SPO, seed by seed",
        "",
        "The per-run numbers of the tables above, arm minus SPO over the seeds both ran "
        "(seed s of every arm shares its prompts and initial policy): mean and 95% "
        "t-interval. For an ablation this is what removing that one piece changed. A "
        "dash: not logged, or ρ of an arm whose baseline is not the tracker.",
        "",
        _table(["pair", "n", *[head for _, head, _ in cols]], rows),
        "",
    ]


def visits_table(arms: dict) -> list[str]:
    """Samples drawn per training prompt by the end (runs that counted them)."""
    keys = ("min", "p10", "median", "max")
    rows = [
        [arm, str(a["tracker"]["visits_min"]["n"])]
        + [fmt(a["tracker"].get(f"visits_{k}"), 1.0, 1) for k in keys]
        for arm, a in arms.items()
        if (a.get("tracker") or {}).get("visits_min")
    ]
    if not rows:
        return []
    return [
        "### Visits per training prompt",
        "",
        "Samples drawn per training prompt over the whole run (a group counts its "
        "responses), over the prompts of a run; mean ± std over the seeds that counted "
        "them (runs from before visits were logged have none).",
        "",
        _table(["arm", "seeds", "min", "p10", "median", "max"], rows),
        "",
    ]


def _jobs(summary: dict) -> int:
    """--jobs of the recorded command (1 when absent)."""
    import shlex

    argv = shlex.split(summary.get("command") or "")
    i = argv.index("--jobs") if "--jobs" in argv else -1
    return int(argv[i + 1]) if 0 <= i < len(argv) - 1 and argv[i + 1].isdigit() else 1


def _size(n) -> str:
    """A task size setting as the page says it: null means the task's default."""
    return "the task's default number of" if n is None else str(n)
