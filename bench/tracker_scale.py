"""Scale benchmark of the SPO tracker state (issue 3, deliverable 4).

Measures, for 10 million prompts: bytes per prompt of `ValueTracker` and of
`DriftTracker`, the median time to `update` 2,048 ids, and the median time to `draw`
2,048 distinct ids from 10 million with `PrioritySampler`. Targets: <= 16 bytes/prompt,
update <= 5 ms, draw <= 0.5 s. Writes bench/results/tracker_scale.json.

Run from the repository root:

    .venv/bin/python bench/tracker_scale.py            # ~1 minute, ~1 GB peak RAM
    .venv/bin/python bench/tracker_scale.py --num-prompts 1000000 --out /tmp/small.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
import tracemalloc

import numpy as np
from common import RESULTS, command, machine, write_json

from spo.algo import DriftTracker, PrioritySampler, ValueTracker, rho_from_divergence

TARGETS = {"bytes_per_prompt": 16.0, "update_ms": 5.0, "draw_s": 0.5}


def _median_ms(fn, reps: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": round(statistics.median(times), 4),
        "min_ms": round(min(times), 4),
        "max_ms": round(max(times), 4),
        "reps": reps,
    }


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _peak_alloc_bytes(fn) -> int:
    """Peak extra bytes numpy/Python allocate while `fn` runs (tracemalloc, untimed)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return int(peak - base)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-prompts", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--update-reps", type=int, default=200)
    ap.add_argument("--draw-reps", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "tracker_scale.json"))
    args = ap.parse_args(argv)
    P, B = args.num_prompts, args.batch
    rng = np.random.default_rng(args.seed)
    machine_start = machine(
        "cpu", "cpu_count", "load_avg_1m_at_start", "platform", "python", "numpy", "torch",
        "git_commit",
    )  # fmt: skip
    t_start = time.perf_counter()

    # ---- memory: array bytes and resident-set growth while building the state
    rss0 = _rss_bytes()
    tracker = ValueTracker(P)
    rss1 = _rss_bytes()
    drift = DriftTracker(P)
    rss2 = _rss_bytes()
    memory = {
        "value_tracker_bytes_per_prompt": tracker.nbytes / P,
        "value_tracker_arrays": "alpha float32, beta float32, last_step int32",
        "drift_tracker_bytes_per_prompt": drift.nbytes / P,
        "drift_tracker_arrays": "visit_total float32",
        "value_tracker_rss_growth_bytes_per_prompt": (
            round((rss1 - rss0) / P, 3) if rss0 is not None else None
        ),
        "drift_tracker_rss_growth_bytes_per_prompt": (
            round((rss2 - rss1) / P, 3) if rss1 is not None else None
        ),
    }

    # A realistic state: every prompt offline-initialised, a 10% slice already trained on.
    tracker.init_from_counts(np.arange(P), rng.integers(0, 9, P), np.full(P, 8))
    seen = rng.choice(P, P // 10, replace=False)
    tracker.update(seen, rng.integers(0, 2, seen.size).astype(np.float32), 0.9, step=0)
    drift.advance(0.01)
    drift.mark(seen)

    # ---- update 2,048 distinct ids (the SPO case) and 256 prompts x 8 (the GRPO case)
    id_batches = [rng.choice(P, B, replace=False) for _ in range(16)]
    rewards = rng.integers(0, 2, B).astype(np.float32)
    rho_B = rng.uniform(0.875, 0.96, B)
    it = iter(range(10**9))

    def update_distinct():
        tracker.update(id_batches[next(it) % 16], rewards, rho_B, step=1)

    def update_grouped():
        ids = np.repeat(id_batches[next(it) % 16][: B // 8], 8)
        tracker.update(ids, rewards, rho_B, step=1)

    def tracker_step():  # everything a trainer does with the state after the policy update
        ids = id_batches[next(it) % 16]
        drift.advance(0.004)
        rho = rho_from_divergence(drift.divergence(ids))
        drift.mark(ids)
        tracker.update(ids, rewards, rho, step=1)

    def read_baseline():
        tracker.value(id_batches[next(it) % 16])

    timings = {
        "update_distinct": _median_ms(update_distinct, args.update_reps),
        "update_256x8_duplicates": _median_ms(update_grouped, args.update_reps),
        "tracker_step_drift_rho_update": _median_ms(tracker_step, args.update_reps),
        "value_read": _median_ms(read_baseline, args.update_reps),
    }

    # ---- draw 2,048 of P
    values = tracker.values()
    sampler = PrioritySampler(seed=args.seed)
    uniform = PrioritySampler(seed=args.seed, mode="uniform")
    timings["values_all"] = _median_ms(tracker.values, args.draw_reps)
    timings["draw_priority"] = _median_ms(lambda: sampler.draw(values, B), args.draw_reps)
    timings["values_plus_draw_priority"] = _median_ms(
        lambda: sampler.draw(tracker.values(), B), args.draw_reps
    )
    timings["draw_uniform"] = _median_ms(lambda: uniform.draw(values, B), args.draw_reps)
    timings["state_dict"] = _median_ms(tracker.state_dict, 3)
    memory["draw_priority_peak_extra_bytes"] = _peak_alloc_bytes(lambda: sampler.draw(values, B))

    bytes_pp = memory["value_tracker_bytes_per_prompt"]
    update_ms = timings["update_distinct"]["median_ms"]
    draw_s = timings["draw_priority"]["median_ms"] / 1e3
    result = {
        "benchmark": "tracker_scale",
        "command": command(__file__, argv),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_start,
        "num_prompts": P,
        "batch": B,
        "targets": TARGETS,
        "measured": {
            "bytes_per_prompt": bytes_pp,
            "update_ms": update_ms,
            "draw_s": round(draw_s, 4),
        },
        "pass": {
            "bytes_per_prompt": bytes_pp <= TARGETS["bytes_per_prompt"],
            "update_ms": update_ms <= TARGETS["update_ms"],
            "draw_s": draw_s <= TARGETS["draw_s"],
        },
        "memory": memory,
        "timings": timings,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    result["all_pass"] = all(result["pass"].values())
    out = write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("measured", "pass", "all_pass")}, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
