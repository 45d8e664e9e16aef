"""`spo compare CONFIG`: the SPO vs GRPO (and ablations) study command (library:
`spo.study.compare`, `spo.study.summary`, `spo.study.page`)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from spo.study.compare import ABLATIONS, make_plan, run_plan, train_command
from spo.study.runs import run_state

# ----------------------------------------------------------------------------- CLI
EPILOG = """\
Arms: each --algos entry with the config as given, and each --ablation as SPO with some
keys changed (one seed each unless --ablation-seeds). Ablations:
{ablations}

examples:
  spo compare configs/demo.yaml                       # spo, grpo x 3 seeds -> runs/compare-demo
  spo compare configs/demo.yaml threads=1 --seeds 3 --ablations no_baseline,constant_rho,\\
      replay_rho,uniform_sampling,offline_init --out runs/study --markdown docs/results/study.md
  spo compare configs/demo.yaml --out runs/study --summarize-only   # refresh summary/plots

key=value overrides (for every arm) go right after CONFIG, before the --options.
Rerunning the same command skips finished runs and resumes interrupted ones.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG.format(
        ablations="\n".join(
            f"  {k:<18}{' '.join(a.overrides):<24}{a.what}" for k, a in ABLATIONS.items()
        )
    )
    parser.add_argument("config", metavar="CONFIG.yaml", help="the `spo train` config of all arms")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides for every arm (steps=40 ...)"
    )
    parser.add_argument("--algos", default="spo,grpo", help="comma list (default spo,grpo)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per algorithm (default 3)")
    parser.add_argument(
        "--algo-seeds",
        default="",
        metavar="ALGO=N,...",
        help="seeds for some algorithms instead of --seeds (e.g. rloo=3,critic=3)",
    )
    parser.add_argument("--ablations", default="", help="comma list of SPO ablations (see below)")
    parser.add_argument("--ablation-seeds", type=int, default=1, help="seeds per ablation")
    parser.add_argument("--out", metavar="DIR", help="study dir (default runs/compare-<config>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="held-out eval interval (default: steps/4)"
    )
    parser.add_argument("--eval-k", type=int, default=4, help="samples per held-out prompt")
    parser.add_argument(
        "--calibration",
        type=int,
        default=8,
        metavar="N",
        help="fresh samples per training prompt to check SPO trackers at the end (0 = off)",
    )
    parser.add_argument("--calibration-prompts", type=int, default=64, metavar="M")
    parser.add_argument(
        "--init-samples", type=int, default=8, metavar="N0", help="n0 for offline_init"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--summarize-only", action="store_true", help="no training: summarise what is there"
    )
    parser.add_argument("--markdown", metavar="FILE.md", help="also write the study page")
    parser.add_argument(
        "--reading",
        metavar="FILE.md",
        help="hand-written reading of the results, put verbatim near the top of the "
        "--markdown page (kept when the page is regenerated)",
    )
    parser.add_argument(
        "--lr-note",
        default=None,
        help="learning-rate search statement for the page (default: states that one "
        "shared, untuned lr was used when all arms share it)",
    )


def run(args: argparse.Namespace) -> int:
    from spo.study.page import render_markdown
    from spo.study.summary import write_summary
    from spo.train.config import ConfigError

    plan = make_plan(args)
    reading = None
    if args.reading:
        if not args.markdown:
            raise ConfigError("--reading needs --markdown FILE.md (the page it goes into)")
        try:
            reading = Path(args.reading).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --reading {args.reading}: {e}") from None
    if args.dry_run:
        for spec in plan.runs:
            state = run_state(spec.run_dir, plan.steps)
            print(f"# {spec.arm} seed {spec.seed} ({state})")
            print(shlex.join(train_command(plan, spec)))
        return 0
    t0 = time.perf_counter()
    specs = plan.runs if args.summarize_only else run_plan(plan, args.jobs)
    command = ""
    if sys.argv[1:2] == ["compare"]:  # the command that (re)runs the study, not this summary
        argv = [a for a in sys.argv[2:] if a != "--summarize-only"]
        command = shlex.join(["spo", "compare", *argv])
    summary = write_summary(
        plan,
        specs,
        command=command,
        seconds=time.perf_counter() - t0,
        train_commands={
            f"{s.arm}/seed{s.seed}": shlex.join(
                ["spo", "train", str(plan.config), *plan.train_args(s)]
            )
            for s in plan.runs
        },
    )
    print(f"wrote {plan.out / 'summary.json'}, plots and {plan.out / 'report.html'}")
    if args.markdown:
        md = Path(args.markdown)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(render_markdown(summary, md, plan.out, lr_note=args.lr_note, reading=reading))
        print(f"wrote {md}")
    failed = [s for s in specs if s.status == "failed"]
    for s in failed:
        print(f"failed: {s.arm} seed {s.seed}: {s.message}", file=sys.stderr)
    if failed:
        print(
            f"spo: {len(failed)} of {len(specs)} runs failed; rerun the same command to retry",
            file=sys.stderr,
        )
        return 1
    return 0
