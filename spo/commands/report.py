"""`spo report RUN_DIR...`: the HTML page of plots (library: `spo.study.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spo.study.report import build_report

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
