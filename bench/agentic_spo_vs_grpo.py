"""Agentic SPO vs GRPO, measured (issue 20): the embedded model with the sandboxed Python
tool on `arithmetic_tool`, async SPO vs sync GRPO vs async GRPO at equal samples.

Every arm trains `configs/demo-agentic.yaml` (the agentic demo preset: embedded
SmolLM2-135M-Instruct in bf16, few-shot tool example, up to 4 model turns, real sandboxed
tool calls) with only these keys changed:

    async_spo    algo=spo  rollout.mode=async    one response per prompt, no group barrier
    sync_grpo    algo=grpo rollout.mode=sync     groups of `group_size`, the step waits
    async_grpo   algo=grpo rollout.mode=async    groups admitted when all members finish

Tool latency is the sandbox's real per-call cost; `--delay-median S` adds, per tool call, a
seeded heavy-tailed sleep (lognormal, median S, sigma `--delay-sigma`) to mimic slow tools
(stated in the results when used). Held-out accuracy *with the tool* (greedy, avg@k: every
held-out prompt is a whole episode) is evaluated in training every `--eval-every` steps
and at the start, so each run gives accuracy vs samples and vs training wall-clock
(`wall_seconds`: evaluation excluded). Per run it also records samples/s of training, the
rollout engine's idle share (wall time in which no sample was ready to decode because every
in-flight sample waited on a tool; `rollout/engine_idle_fraction` weighted by
`rollout/wall`), staleness and the tool-use metrics.

Runs live in `--runs DIR/<arm>-s<seed>` and resume from their checkpoints; each finished
(arm, seed) is added to --out (JSON), so the study resumes where it stopped. `--report`
rewrites the markdown from the JSON (notes after the NOTES marker are kept).
`bench/agentic_spo_vs_grpo.sh` runs two arms at a time side by side, each pinned to its own
core with one thread, so the wall-clock of the two arms of a pair is comparable.

    python bench/agentic_spo_vs_grpo.py --arms async_spo --seeds 0 --cpu 0 --threads 1
    python bench/agentic_spo_vs_grpo.py --report
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
from common import ROOT, load_avgs, machine, regenerate, spread, t_interval

CONFIG = ROOT / "configs" / "demo-agentic.yaml"
OUT = ROOT / "docs" / "results" / "agentic_spo_vs_grpo.json"
OUT_DELAY = ROOT / "docs" / "results" / "agentic_spo_vs_grpo_slow_tools.json"  # --delay-median
ARMS = {
    "async_spo": ["algo=spo", "rollout.mode=async"],
    "sync_grpo": ["algo=grpo", "rollout.mode=sync"],
    "async_grpo": ["algo=grpo", "rollout.mode=async"],
}
LABELS = {"async_spo": "async SPO", "sync_grpo": "sync GRPO", "async_grpo": "async GRPO"}


class DelayedTool:
    """Wraps a tool env: each call first sleeps a seeded lognormal time (median `median` s,
    sigma `sigma`), keyed by (seed, call number), then runs the real tool."""

    def __init__(self, env, median: float, sigma: float, seed: int):
        self.env, self.median, self.sigma, self.seed = env, median, sigma, seed
        self.calls = 0

    def call(self, sample, text):
        return self.env.call(sample, text)

    def run(self, call):
        self.calls += 1  # runs in worker threads; an increment race only reorders delays
        rng = np.random.default_rng([self.seed, self.calls])
        time.sleep(self.median * math.exp(self.sigma * rng.standard_normal()))
        return self.env.run(call)


def overrides(arm: str, seed: int, args) -> list[str]:
    return [
        *ARMS[arm],
        f"seed={seed}",
        f"steps={args.steps}",
        f"eval_every={args.eval_every}",
        f"eval_k={args.eval_k}",
        "eval_start=true",
        f"threads={args.threads}",
        "log.progress=false",
        f"run_dir={args.runs / f'{arm}-s{seed}'}",
        *args.overrides,
    ]


def run_arm(arm: str, seed: int, args) -> dict:
    from spo.train.config import load_config
    from spo.train.trainer import Trainer

    items = overrides(arm, seed, args)
    run_dir = args.runs / f"{arm}-s{seed}"
    if any((run_dir / "checkpoints").glob("step-*")):
        items.append("resume=true")
    cfg = load_config(str(CONFIG), items)
    trainer = Trainer(cfg)
    try:
        if args.delay_median > 0:
            trainer.scheduler.env = DelayedTool(
                trainer.scheduler.env, args.delay_median, args.delay_sigma, seed
            )
        t0 = time.perf_counter()
        trainer.run()
        elapsed = time.perf_counter() - t0
    finally:
        trainer.close()
    return summarize_run(arm, seed, run_dir, cfg, elapsed)


def summarize_run(arm: str, seed: int, run_dir: Path, cfg, elapsed: float) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward/mean" in r]
    evals = [
        {"samples": r["samples"], "wall_seconds": r["wall_seconds"]}
        | {k[5:]: v for k, v in r.items() if k.startswith("eval/") and "=" not in k}
        for r in rows
        if any(k.startswith("eval/") for k in r)
    ]
    wall = np.array([r["rollout/wall"] for r in train])
    idle = np.array([r["rollout/engine_idle_fraction"] for r in train]) * wall
    last = train[-1]

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in train if key in r]))

    return {
        "arm": arm,
        "seed": seed,
        "steps": cfg.steps,
        "samples": last["samples"],
        "eval": evals,
        "train_wall_s": last["wall_seconds"],
        "samples_per_s": last["samples"] / last["wall_seconds"],
        "engine_idle_share": float(idle.sum() / wall.sum()),
        "rollout_share_of_step": float(wall.sum() / sum(r["time/step"] for r in train)),
        "staleness_mean": mean("rollout/staleness_mean"),
        "step_seconds": {  # mean per training step, by phase
            phase: mean(f"time/{phase}") for phase in ("generate", "train", "tracker", "step")
        },
        "in_flight_at_end": last.get("rollout/in_flight", 0.0),  # decoded, never trained
        "reward_by_step": [r["reward/mean"] for r in train],
        "tools": {
            key: mean(key)
            for key in (
                "tools/episodes_with_calls",
                "tools/episodes_code_ok",
                "tools/call_rate",
                "tools/turns_per_episode",
            )
        },
        "tool_calls": float(sum(r["rollout/tool_calls"] for r in train)),
        "degenerate_share": mean("adv/degenerate_fraction") if arm != "async_spo" else None,
        "session_seconds": elapsed,
        "load_avg_at_end": load_avgs(),
    }


# ----------------------------------------------------------------------------- report
_fmt = spread


def _t_interval(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if len(values) < 2:
        return "–"
    mean, half = t_interval(values, scale)
    return f"{mean:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def _paired_runs(runs: list[dict], a: str, b: str) -> list[tuple[dict, dict]]:
    by = {(r["arm"], r["seed"]): r for r in runs}
    seeds = sorted({s for arm, s in by if arm == a} & {s for arm, s in by if arm == b})
    return [(by[(a, s)], by[(b, s)]) for s in seeds]


def _paired(runs: list[dict], a: str, b: str, value) -> list[float]:
    return [value(ra) - value(rb) for ra, rb in _paired_runs(runs, a, b)]


def _at_wall(run: dict, key: str, wall: float) -> float | None:
    """The last held-out `key` measured at or before training wall-clock `wall`."""
    seen = [e[key] for e in run["eval"] if e["wall_seconds"] <= wall + 1e-9 and key in e]
    return seen[-1] if seen else None


def report(data: dict) -> str:
    runs = data["runs"]
    k = f"avg@{data['settings']['eval_k']}"
    s = data["settings"]
    delay = (
        f"plus an added lognormal delay per call (median {s['delay_median']} s, sigma "
        f"{s['delay_sigma']})"
        if s["delay_median"] > 0
        else "no added delay"
    )
    lines = [
        "# Agentic SPO vs GRPO with real tool calls",
        "",
        f"Generated by `{data['command']}` from `docs/results/agentic_spo_vs_grpo.json`; "
        "bench/agentic_spo_vs_grpo.py's docstring lists every setting.",
        "",
        f"- `configs/demo-agentic.yaml` ({s['steps']} steps x {s['samples_per_step']} "
        f"samples, overrides: `{' '.join(s['overrides']) or 'none'}`), embedded "
        "SmolLM2-135M-Instruct, `arithmetic_tool` with the sandboxed Python tool: real "
        f"per-call cost of the sandbox, {delay}.",
        f"- Held-out: {s['eval_size']} test prompts, every one a whole episode with the tool; "
        f"greedy and {k} at temperature 1.0, measured every {s['eval_every']} steps.",
        f"- Machine: {data['machine']}. Two runs at a time, side by side, each pinned to its "
        "own core with one thread (bench/agentic_spo_vs_grpo.sh); the machine was shared "
        "with other work (load averages in the JSON), so compare wall-clock only within a "
        "pair.",
        "",
        "Values: mean ± std [min–max] over seeds; one number = one seed.",
        "",
        f"| arm | seeds | samples | greedy start | greedy end | {k} start | {k} end | "
        "training min | samples/s | engine idle % | GRPO degenerate % | episodes calling "
        "tool % | code ran ok % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        lines.append(
            f"| {LABELS[arm]} | {len(rs)} | {rs[0]['samples']} | "
            f"{_fmt([r['eval'][0].get('greedy') for r in rs])} | "
            f"{_fmt([r['eval'][-1].get('greedy') for r in rs])} | "
            f"{_fmt([r['eval'][0].get(k) for r in rs])} | "
            f"{_fmt([r['eval'][-1].get(k) for r in rs])} | "
            f"{_fmt([r['train_wall_s'] for r in rs], 1 / 60)} | "
            f"{_fmt([r['samples_per_s'] for r in rs], 1, 2)} | "
            f"{_fmt([r['engine_idle_share'] for r in rs])} | "
            f"{_fmt([r['degenerate_share'] for r in rs])} | "
            f"{_fmt([r['tools']['tools/episodes_with_calls'] for r in rs])} | "
            f"{_fmt([r['tools']['tools/episodes_code_ok'] for r in rs])} |"
        )
    lines += ["", "## Paired by seed (95% t-interval of the mean difference)", ""]
    for a, b in (("async_spo", "sync_grpo"), ("async_spo", "async_grpo")):
        end_g = _paired(runs, a, b, lambda r: r["eval"][-1]["greedy"])
        if not end_g:
            continue
        end_k = _paired(runs, a, b, lambda r: r["eval"][-1][k])
        sps = _paired(runs, a, b, lambda r: math.log(r["samples_per_s"]))
        both = _paired_runs(runs, a, b)
        lines.append(
            f"- {LABELS[a]} − {LABELS[b]} (n = {len(end_g)}), at equal samples: greedy "
            f"{_t_interval(end_g)} pp, {k} {_t_interval(end_k)} pp; samples/s ratio "
            f"{LABELS[a]}/{LABELS[b]}: "
            + ", ".join(f"{math.exp(x):.2f}" for x in sps)
            + f" (geometric mean {math.exp(statistics.mean(sps)):.2f})."
        )
        at_wall = []
        for ra, rb in both:  # the last eval of each at or before the shorter run's end
            wall = min(ra["train_wall_s"], rb["train_wall_s"])
            at_wall.append((_at_wall(ra, k, wall), _at_wall(rb, k, wall), wall))
        lines.append(
            f"  - {k} at equal training wall-clock (each arm's last eval at or before the "
            "shorter run's end), per seed: "
            + "; ".join(
                f"{'–' if x is None else f'{100 * x:.1f}'} vs "
                f"{'–' if y is None else f'{100 * y:.1f}'} at {w / 60:.1f} min"
                for x, y, w in at_wall
            )
            + "."
        )
    timed = [r for r in runs if "step_seconds" in r]
    if timed:
        lines += [
            "",
            "## Where the training time goes (mean seconds per step)",
            "",
            "| arm | seeds | generate (rollouts + tools) | train | tracker / ρ | step | "
            "decoded but untrained at the end |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm in ARMS:
            rs = [r for r in timed if r["arm"] == arm]
            if rs:
                sec = [r["step_seconds"] for r in rs]
                lines.append(
                    f"| {LABELS[arm]} | {len(rs)} | "
                    + " | ".join(
                        _fmt([x[p] for x in sec], 1, 1)
                        for p in ("generate", "train", "tracker", "step")
                    )
                    + f" | {_fmt([r['in_flight_at_end'] for r in rs], 1, 0)} |"
                )
    lines += ["", "## Held-out accuracy with the tool vs samples and wall-clock", ""]
    lines.append(f"| arm | seed | samples | training s | greedy | {k} |")
    lines.append("|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (list(ARMS).index(r["arm"]), r["seed"])):
        for e in r["eval"]:
            lines.append(
                f"| {LABELS[r['arm']]} | {r['seed']} | {e['samples']} | "
                f"{e['wall_seconds']:.0f} | {100 * e['greedy']:.1f} | {100 * e[k]:.1f} |"
            )
    return "\n".join(lines) + "\n"


def write_report(data: dict, out: Path) -> Path:
    """The markdown page beside the results JSON `out`."""
    page = out.with_suffix(".md")
    regenerate(page, report(data))
    return page


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-k", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu", default=None, help="pin to these CPUs (comma-separated)")
    p.add_argument("--delay-median", type=float, default=0.0, help="added tool delay (s)")
    p.add_argument("--delay-sigma", type=float, default=1.0)
    p.add_argument("--runs", type=Path, default=None, help="run dirs (default runs/agentic*)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results JSON (default {OUT.name}, with --delay-median {OUT_DELAY.name}, in "
        "docs/results/; the page is written beside a JSON there)",
    )
    p.add_argument("--merge", type=Path, nargs="*", default=[], help="JSON files to add")
    p.add_argument("--report", action="store_true", help="only rewrite the markdown")
    p.add_argument(
        "--resummarize",
        action="store_true",
        help="recompute each run's summary from its run dir under --runs (after the script "
        "gained fields), keeping its session time and load average",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="for every arm")
    args = p.parse_intermixed_args(argv)  # key=value may follow any --option
    if args.out is None:
        args.out = OUT_DELAY if args.delay_median > 0 else OUT
    if args.runs is None:
        args.runs = ROOT / "runs" / ("agentic_slow_tools" if args.delay_median > 0 else "agentic")
    if args.cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in args.cpu.split(",")})
    data = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    for extra in args.merge:
        have = {(r["arm"], r["seed"]) for r in data["runs"]}
        more = json.loads(extra.read_text())
        data["runs"] += [r for r in more["runs"] if (r["arm"], r["seed"]) not in have]
        for key in ("settings", "machine", "command"):
            data.setdefault(key, more.get(key))
    if args.resummarize:
        from spo.train.config import load_config

        for i, r in enumerate(data["runs"]):
            run_dir = args.runs / f"{r['arm']}-s{r['seed']}"
            if (run_dir / "metrics.jsonl").is_file():
                cfg = load_config(str(run_dir / "config.yaml"), [])
                new = summarize_run(r["arm"], r["seed"], run_dir, cfg, r["session_seconds"])
                data["runs"][i] = new | {"load_avg_at_end": r["load_avg_at_end"]}
        args.out.write_text(json.dumps(data, indent=1))
    elif not args.report and not args.merge:
        from spo.train.config import load_config

        cfg = load_config(str(CONFIG), overrides("async_spo", 0, args))
        m = machine("platform", "cpu_count", "torch")
        data.update(
            command="bash bench/agentic_spo_vs_grpo.sh",
            machine=f"{m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
            f"{args.threads} thread(s) per run",
            settings={
                "steps": args.steps,
                "samples_per_step": cfg.samples_per_step,
                "group_size": cfg.group_size,
                "eval_every": args.eval_every,
                "eval_k": args.eval_k,
                "eval_size": cfg.eval_size,
                "delay_median": args.delay_median,
                "delay_sigma": args.delay_sigma,
                "overrides": args.overrides,
            },
        )
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in args.arms.split(","):
                if any(r["arm"] == arm and r["seed"] == seed for r in data["runs"]):
                    continue
                print(f"== {arm} seed {seed}", flush=True)
                data["runs"].append(run_arm(arm, seed, args))
                data["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(data, indent=1))
    elif args.merge:
        args.out.write_text(json.dumps(data, indent=1))
    if data["runs"] and args.out.resolve().parent == OUT.parent:
        print(write_report(data, args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
