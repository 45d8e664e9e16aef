"""Memory of a long spo-rl SPO run: flat RSS over steps, and forgetting-estimator storage (issue 6).

Runs the SPO trainer for `--steps` steps with small settings (16 samples/step, 16 new
tokens: a few minutes on 2 cores) once per forgetting estimator, each in its own
subprocess, and records after every step the process RSS (VmRSS), the peak RSS
(ru_maxrss), the replay store's bytes and prompt count, and the drift tracker's bytes.

The trainer calls glibc's `malloc_trim(0)` after every step (`spo.train.heap`). An arm
`drift+notrim` repeats the drift run with that call disabled: the RSS it adds is memory
the allocator keeps cached (fragmentation from varying batch shapes), not live objects.

Reported per arm:
  heap_live_*             glibc mallinfo2 after each step: bytes in live heap chunks and
                          mmapped blocks (what objects and tensors hold), and its slope;
                          RSS minus live is allocator cache, not a leak
  rss_slope_mib_per_step  least-squares slope of RSS over steps >= --skip (the first steps
                          allocate the optimizer's fp32 masters, moments and caches)
  rss_growth_mib          RSS(last) - RSS(--skip)
  bytes_per_prompt        replay: stored bytes / stored prompts (one response + its
                          log-probs per prompt, grows with response length); drift: the
                          tracker's per-prompt array bytes / prompts (constant 4 B)

Run from the repository root:

    .venv/bin/python bench/memory.py                 # writes bench/results/memory.json
    .venv/bin/python bench/memory.py --steps 20 --rho drift --out /tmp/memory.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from common import (
    RESULTS,
    command,
    heap_mib,
    load_avg,
    load_avgs,
    machine,
    peak_rss_mib,
    rss_mib,
    run_child,
    write_json,
)


def _child(arm: str, steps: int, samples: int, new_tokens: int, run_dir: str) -> dict:
    from spo.train.config import load_config
    from spo.train.trainer import Trainer

    rho, _, notrim = arm.partition("+")
    if notrim:
        import spo.train.trainer

        spo.train.trainer.trim_heap = lambda: None
    cfg = load_config(
        None,
        [
            "algo=spo",
            f"samples_per_step={samples}",
            f"rollout.max_new_tokens={new_tokens}",
            f"tracker.rho={rho}",
            f"steps={steps}",
            f"run_dir={run_dir}",
            "log.progress=false",
            "log.tensorboard=false",
            "checkpoint_every=100000",
        ],
    )
    rss_before_trainer = rss_mib()
    trainer = Trainer(cfg)
    rss_after_init = rss_mib()
    n_prompts = len(trainer.train_examples)
    rows = []
    t0 = time.perf_counter()
    for i in range(steps):
        m = trainer.train_step()
        store = getattr(trainer.rho, "store", None)  # the replay store (rho=replay only)
        live, free = heap_mib()
        rows.append(
            {
                "step": i + 1,
                "rss_mib": round(rss_mib(), 2),
                "peak_rss_mib": round(peak_rss_mib(), 2),
                "heap_live_mib": round(live, 2),
                "heap_free_mib": round(free, 2),
                "step_s": round(m["time/step"], 3),
                "replay_bytes": int(store.nbytes) if store is not None else 0,
                "replay_prompts": len(store) if store is not None else 0,
                "drift_bytes": int(trainer.drift.nbytes),
                "tracker_bytes": int(trainer.tracker.nbytes),
                "reward_mean": m["reward/mean"],
                "completion_length_mean": m["completion/length_mean"],
            }
        )
        if (i + 1) % 10 == 0:
            print(f"  {arm} step {i + 1}: RSS {rows[-1]['rss_mib']:.0f} MiB", flush=True)
    wall = time.perf_counter() - t0
    trainer.close()
    return {
        "rows": rows,
        "num_prompts": n_prompts,
        "rss_before_trainer_mib": rss_before_trainer,
        "rss_after_init_mib": rss_after_init,
        "wall_s": wall,
        "peak_rss_mib": peak_rss_mib(),
    }


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def _summarise(child: dict, skip: int) -> dict:
    rows = child["rows"]
    tail = [r for r in rows if r["step"] >= skip] or rows
    last = rows[-1]
    out = {
        "steps": len(rows),
        "rss_after_init_mib": round(child["rss_after_init_mib"], 1),
        "rss_first_step_mib": rows[0]["rss_mib"],
        "rss_at_skip_mib": tail[0]["rss_mib"],
        "rss_last_mib": last["rss_mib"],
        "rss_min_after_skip_mib": min(r["rss_mib"] for r in tail),
        "rss_max_after_skip_mib": max(r["rss_mib"] for r in tail),
        "rss_slope_mib_per_step": round(
            _slope([r["step"] for r in tail], [r["rss_mib"] for r in tail]), 4
        ),
        "rss_growth_mib": round(last["rss_mib"] - tail[0]["rss_mib"], 2),
        "heap_live_slope_mib_per_step": round(
            _slope([r["step"] for r in tail], [r["heap_live_mib"] for r in tail]), 4
        ),
        "heap_live_growth_mib": round(last["heap_live_mib"] - tail[0]["heap_live_mib"], 2),
        "heap_free_last_mib": last["heap_free_mib"],
        "peak_rss_mib": round(child["peak_rss_mib"], 1),
        "s_per_step": round(child["wall_s"] / len(rows), 2),
        "num_prompts": child["num_prompts"],
        "drift_bytes_per_prompt": last["drift_bytes"] / child["num_prompts"],
        "tracker_bytes_per_prompt": last["tracker_bytes"] / child["num_prompts"],
        "replay_bytes": last["replay_bytes"],
        "replay_prompts": last["replay_prompts"],
        "replay_bytes_per_stored_prompt": (
            last["replay_bytes"] / last["replay_prompts"] if last["replay_prompts"] else 0.0
        ),
        "per_step": rows,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=16, help="samples_per_step")
    ap.add_argument("--new-tokens", type=int, default=16, help="rollout.max_new_tokens")
    ap.add_argument(
        "--rho",
        default="drift,replay,drift+notrim",
        help="comma list of arms: drift, replay, constant; +notrim = without the trainer's "
        "malloc_trim(0) after each step",
    )
    ap.add_argument("--skip", type=int, default=10, help="first step of the RSS slope fit")
    ap.add_argument("--out", default=str(RESULTS / "memory.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--child-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        res = _child(args.child, args.steps, args.samples, args.new_tokens, args.child_dir)
        write_json(args.child_out, res, indent=None)
        return 0

    result: dict = {
        "benchmark": "memory",
        "command": command(__file__, argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine("cpu_count", "platform", "python", "torch"),
        "load_avg_at_start": load_avgs(),
        "settings": {
            "algo": "spo",
            "steps": args.steps,
            "samples_per_step": args.samples,
            "max_new_tokens": args.new_tokens,
            "slope_fit_from_step": args.skip,
        },
        "arms": {},
    }
    for rho in [r.strip() for r in args.rho.split(",") if r.strip()]:
        print(f"{rho}: {args.steps} SPO steps (load {load_avg():.2f})", flush=True)
        child = run_child(
            __file__,
            ["--child", rho, "--steps", str(args.steps), "--samples", str(args.samples),
             "--new-tokens", str(args.new_tokens)],
            prefix=f"memory_{rho}_",
        )  # fmt: skip
        summary = _summarise(child, args.skip)
        summary["load_avg_after"] = child["load_avg_after"]
        result["arms"][rho] = summary
        print(
            f"  RSS {summary['rss_at_skip_mib']:.0f} -> {summary['rss_last_mib']:.0f} MiB, slope "
            f"{summary['rss_slope_mib_per_step']:+.3f} MiB/step, peak {summary['peak_rss_mib']:.0f}"
            f" MiB; live heap slope {summary['heap_live_slope_mib_per_step']:+.3f} MiB/step;"
            f" replay {summary['replay_bytes_per_stored_prompt']:.0f} B/prompt, drift "
            f"{summary['drift_bytes_per_prompt']:.0f} B/prompt"
        )
    write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
