"""`spo simulate`: agentic throughput simulation, group-based vs group-free (library:
`spo.sim`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from spo.sim.model import (
    LATENCIES,
    Latency,
    SimConfig,
    SimError,
    SimResult,
    simulate,
    sweep_straggler_frac,
)
from spo.sim.paper import format_paper, paper_example
from spo.sim.plots import plot_paper, plot_result


def format_result(result: SimResult) -> str:
    """The setting, one row per policy, and the speed-up with its CI."""
    cfg = result.config
    pct = f"{cfg.ci_level:.0%}"
    lines = [
        f"latency: {cfg.latency.describe()}",
        f"batch {cfg.batch}, group size {cfg.group_size}, over-sampling {cfg.oversample:g}x "
        f"-> {cfg.launched} samples launched per step ({cfg.launched // cfg.group_size} "
        f"groups, keep {cfg.batch // cfg.group_size})",
        f"{cfg.trials} trials, seed {cfg.seed}, {pct} CI ({cfg.ci}); slot-time fractions: "
        "useful + idle + discarded = 1, wasted = idle + discarded",
        "",
        f"{'policy':<12} {'time to batch, s: mean [' + pct + ' CI]':<31} {'median':>7} "
        f"{'p90':>7} {'samples/s':>9} {'useful':>7} {'idle':>6} {'discarded':>9} "
        f"{'wasted':>6}",
    ]
    for name, s in result.policies.items():
        mean = f"{s.time_mean:.1f} [{s.time_ci[0]:.1f}, {s.time_ci[1]:.1f}]"
        lines.append(
            f"{name:<12} {mean:<31} {s.time_median:7.1f} {s.time_p90:7.1f} "
            f"{s.samples_per_s:9.3f} {s.useful:7.1%} {s.idle:6.1%} {s.discarded:9.1%} "
            f"{s.wasted:6.1%}"
        )
    lo, hi = result.speedup_ci
    lines += [
        "",
        f"speed-up (mean group-based / mean group-free time): {result.speedup:.2f}x "
        f"[{pct} CI {lo:.2f}, {hi:.2f}]; median per-trial ratio "
        f"{result.speedup_median_per_trial:.2f}x",
    ]
    return "\n".join(lines)


def format_sweep(sweep: list[SimResult]) -> str:
    """One row per straggler fraction: both mean times, speed-up, wasted slot-time."""
    lines = [
        f"{'stragglers':>10} {'group-based s':>14} {'group-free s':>13} {'speed-up':>9} "
        f"{'wasted: group-based':>20} {'group-free':>11}"
    ]
    for r in sweep:
        g, f = r.policies["group-based"], r.policies["group-free"]
        lines.append(
            f"{r.config.latency.straggler_frac:>10.1%} {g.time_mean:>14.1f} "
            f"{f.time_mean:>13.1f} {r.speedup:>8.2f}x {g.wasted:>20.1%} "
            f"{f.wasted:>11.1%}"
        )
    return "\n".join(lines)


DEFAULT_SWEEP = "0:0.5:0.025"


EPILOG = """\
Model: one rollout phase of an on-policy step. OVERSAMPLE x BATCH samples start at t=0,
one per slot. group-based keeps the BATCH/G groups that finish first (a group finishes
with its slowest sample); group-free keeps the first BATCH samples. The rest is aborted.
Slot-time wasted = idle at the batch barrier + spent on aborted samples. See
docs/simulate.md.

examples:
  spo simulate --paper                          # the paper's 486 s vs 112 s, 4.35x
  spo simulate                                  # lognormal matched to the example
  spo simulate --dist tool --tool-calls 6 --alpha 1.2 --json sim.json
  spo simulate --sigma 0.3 --straggler-frac 0.1 --plot sim.png
"""


def _fracs(text: str) -> list[float]:
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            fracs = np.arange(start, stop + step / 2, step).round(10).tolist()
        else:
            fracs = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give START:STOP:STEP (STEP > 0) or a comma-separated list"
        ) from None
    if not fracs or not all(0 <= f <= 1 for f in fracs):
        raise argparse.ArgumentTypeError(f"{text!r}: straggler fractions must be in [0, 1]")
    return fracs


def _fraction(text: str) -> float:
    try:
        num, _, den = text.partition("/")
        return float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a number or a fraction like 4/3"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `spo simulate` options on `parser`."""
    d, c = Latency(), SimConfig()
    parser.epilog = EPILOG
    parser.add_argument(
        "--paper",
        action="store_true",
        help="print the paper's worked example (486 s vs 112 s) and exit",
    )
    g = parser.add_argument_group("latency (seconds per sample)")
    g.add_argument(
        "--dist",
        choices=list(LATENCIES),
        default=d.dist,
        help=f"generation-time distribution (default {d.dist})",
    )
    for flag, text in (
        ("--median", "median of the base time, s"),
        ("--sigma", "lognormal shape, for lognormal and tool"),
        ("--alpha", "Pareto tail index, for pareto and each tool call"),
        ("--tool-calls", "mean tool calls per sample, Poisson"),
        ("--tool-median", "median latency of one tool call, s"),
        ("--straggler-frac", "fraction of samples slowed down"),
        ("--straggler-mult", "slow-down of a straggler"),
    ):
        default = getattr(d, flag[2:].replace("-", "_"))
        g.add_argument(flag, type=float, default=default, help=f"{text} (default {default:g})")
    g = parser.add_argument_group("batch")
    g.add_argument(
        "--group-size",
        "-G",
        type=int,
        default=c.group_size,
        help=f"samples per prompt for group-based (default {c.group_size})",
    )
    g.add_argument(
        "--batch",
        type=int,
        default=c.batch,
        help=f"samples kept per training step (default {c.batch})",
    )
    g.add_argument(
        "--oversample",
        type=_fraction,
        default=c.oversample,
        help=f"launched / kept samples, same for both; a number or a fraction like 4/3 "
        f"(default {c.oversample:g})",
    )
    g = parser.add_argument_group("trials and output")
    g.add_argument(
        "--trials",
        type=int,
        default=c.trials,
        help=f"independent rollout phases (default {c.trials})",
    )
    g.add_argument("--seed", type=int, default=c.seed, help=f"numpy seed (default {c.seed})")
    g.add_argument(
        "--ci",
        choices=["normal", "bootstrap"],
        default=c.ci,
        help=f"confidence intervals (default {c.ci})",
    )
    g.add_argument(
        "--ci-level",
        type=float,
        default=c.ci_level,
        help=f"confidence level (default {c.ci_level:g})",
    )
    g.add_argument(
        "--sweep",
        type=_fracs,
        default=None,
        metavar="FRACS",
        help="also sweep the straggler fraction: START:STOP:STEP or a,b,c "
        f"(with --plot, default {DEFAULT_SWEEP})",
    )
    g.add_argument("--plot", metavar="PATH", help="write a PNG figure")
    g.add_argument("--json", metavar="PATH", help="write the results as JSON")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build and validate a SimConfig from parsed arguments; ValueError on bad input."""
    latency = Latency(
        dist=args.dist,
        median=args.median,
        sigma=args.sigma,
        alpha=args.alpha,
        tool_calls=args.tool_calls,
        tool_median=args.tool_median,
        straggler_frac=args.straggler_frac,
        straggler_mult=args.straggler_mult,
    )
    return SimConfig(
        latency=latency,
        group_size=args.group_size,
        batch=args.batch,
        oversample=args.oversample,
        trials=args.trials,
        seed=args.seed,
        ci=args.ci,
        ci_level=args.ci_level,
    )


def _write_json(path: str, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def run(args: argparse.Namespace) -> int:
    """`spo simulate`: print results; 0 on success, 2 with one error line on bad input."""
    try:
        if args.paper:
            ex = paper_example()
            print(format_paper(ex))
            if args.plot:
                print(f"wrote {plot_paper(args.plot)}")
            if args.json:
                _write_json(args.json, {"paper": ex})
            return 0
        config = config_from_args(args)
        result = simulate(config)
        print(format_result(result))
        fracs = args.sweep or (_fracs(DEFAULT_SWEEP) if args.plot else None)
        sweep = sweep_straggler_frac(config, fracs) if fracs else []
        if args.sweep:
            print("\n" + format_sweep(sweep))
        if args.plot:
            print(f"wrote {plot_result(result, sweep, args.plot)}")
        if args.json:
            payload = result.to_dict()
            if sweep:
                payload["sweep"] = [r.to_dict() for r in sweep]
            _write_json(args.json, payload)
    except SimError as e:
        print(f"spo: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(
            f"spo: error: cannot write {e.filename or 'output'}: {e.strerror or e}", file=sys.stderr
        )
        return 2
    return 0
