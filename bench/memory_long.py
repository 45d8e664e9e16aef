"""Does live memory keep growing over a long run? 400 SPO steps on a tiny model (issue 6).

`bench/memory.py` runs the real 135M model for 50 steps and sees RSS and glibc's live
heap creep upward by a few MiB per step. 50 steps cannot tell a leak from caches that
fill up, so this runs the same trainer on the tests' tiny random Llama (same code paths:
engine, scoring, log-probs, update, tracker; arithmetic prompts) for `--steps` steps and
records every `--every` steps:

  heap_live_mib    glibc mallinfo2: bytes in live heap chunks + mmapped blocks
  traced_mib       Python-level allocations (tracemalloc: objects, numpy buffers)
  rss_mib          VmRSS

A leak grows linearly without end; a cache (oneDNN's primitive cache, keyed by the
shapes of each call, 1024 entries by default; allocator free lists) grows while new
shapes appear and then stops. The summary gives the live-heap growth over each quarter
of the run, and the largest Python-level allocation growth between the first quarter and
the end (tracemalloc, by traceback).

Run from the repository root (about 5 minutes on one core):

    .venv/bin/python bench/memory_long.py        # writes bench/results/memory_long.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import sys
import tempfile
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=25, help="record every N steps")
    ap.add_argument("--samples", type=int, default=16, help="samples_per_step")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory_long.json"))
    args = ap.parse_args(argv)

    from common import command, heap_mib, machine, rss_mib, write_json
    from conftest import build_tiny_model  # the tests' tiny random Llama

    from spo.train.config import load_config
    from spo.train.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="memory_long_") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model")
        cfg = load_config(
            None,
            [
                f"model.path={model_dir}",
                "algo=spo",
                f"samples_per_step={args.samples}",
                "rollout.max_new_tokens=16",
                f"steps={args.steps}",
                f"run_dir={Path(tmp) / 'run'}",
                "log.progress=false",
                "log.tensorboard=false",
                "checkpoint_every=100000",
                "threads=1",
            ],
        )
        trainer = Trainer(cfg)
        tracemalloc.start(12)
        rows, first_quarter = [], None
        for step in range(1, args.steps + 1):
            trainer.train_step()
            if step % args.every == 0:
                gc.collect()
                live, _ = heap_mib()
                traced = tracemalloc.get_traced_memory()[0] / 2**20
                row = {
                    "step": step,
                    "heap_live_mib": round(live, 2),
                    "traced_mib": round(traced, 3),
                    "rss_mib": round(rss_mib(), 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            if step == args.steps // 4:
                first_quarter = tracemalloc.take_snapshot()
        top = tracemalloc.take_snapshot().compare_to(first_quarter, "traceback")[:3]
        trainer.close()

    q = max(1, len(rows) // 4)
    quarters = [rows[min(len(rows) - 1, (i + 1) * q - 1)]["heap_live_mib"] for i in range(4)]
    growth = [round(quarters[0] - rows[0]["heap_live_mib"], 2)] + [
        round(b - a, 2) for a, b in itertools.pairwise(quarters)
    ]
    result = {
        "benchmark": "memory_long",
        "command": command(__file__, argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine("cpu_count", "platform", "python", "torch"),
        "settings": vars(args),
        "heap_live_growth_mib_per_quarter": growth,
        "traced_mib_first_last": [rows[0]["traced_mib"], rows[-1]["traced_mib"]],
        "top_python_growth": [
            {"size_diff_bytes": s.size_diff, "where": s.traceback.format()[-2:]} for s in top
        ],
        "rows": rows,
    }
    write_json(args.out, result, indent=2)
    print(f"live heap growth per quarter (MiB): {growth}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
