"""Measure the revisit divergence D of both ρ estimators and set `tracker.d_half` from it.

spo-spec.md §2: ρ = clip(2^(−D/D_half), ρ_min, ρ_max), and D_half must be set from the
measured D distribution, because D depends on the estimator, the model and the learning
rate (the reference's 0.06 was set for replay on an 8B model at lr 1e-6). With the demo's
d_half = 0.06 on SmolLM2-135M at lr 2e-5 every revisit got ρ_min (issue 19).

The procedure (rerun it whenever the model, learning rate, batch or task changes):

1. Train `--steps` steps of the run's own config (a config file and `key=value` overrides,
   exactly as `spo train` takes them; the lr is `optim.lr=...`) with `tracker.rho=replay`.
   Every step records, for each sample whose prompt was visited before (a revisit):
   - D_replay: the replay estimator's D (the response stored at the last visit re-scored:
     token-mean |Δ log p|), as the trainer computes it;
   - D_drift: the drift estimator's D (the sum of per-step policy drift since the last
     visit), from a drift clock advanced by each step's drift on the whole batch (the
     trainer's `DriftRho` measures it on the first `tracker.drift_sample` sequences: the
     same quantity, sampled).
2. Print the distribution of each (quantiles) and two choices of d_half:
   - median rule (`spo.algo.d_half_for_median`): ρ(median D) = (ρ_min + ρ_max)/2;
   - widest (`spo.algo.d_half_widest`): the window of D values that map inside the
     bounds, [d_half·log2(1/ρ_max), d_half·log2(1/ρ_min)] (a fixed ratio of 3.27 for the
     defaults), placed over the most revisits;
   and, for each choice and for the configured d_half, the share of revisits that would
   get ρ at ρ_min, at ρ_max and strictly inside. The aim (issue 19): less than half the
   revisits at a bound.
3. Train with `tracker.rho=<estimator> tracker.d_half=<median rule>` and check the logged
   `rho/revisit_at_min`, `rho/revisit_at_max` (metrics.jsonl) over the real run: D grows
   with the gap between visits, which a short measuring run only samples at its start,
   and the per-step drift falls after Adam's first steps. `--steps 20 --skip 10` measures
   a later phase (starting from a checkpoint with `model.path=` does not: its optimizer
   is fresh, so its first steps are Adam's first steps again).

The ρ applied during the measuring run (with the configured d_half) changes the tracker
and so which prompts are drawn, not the policy's movement: D does not depend on it.

Run from the repository root (default: the demo config with 128 training prompts, so a
prompt comes back about every second step; about 3 minutes on an idle 2-core machine):

    nice -n 10 .venv/bin/python bench/rho_divergence.py
    .venv/bin/python bench/rho_divergence.py configs/demo.yaml optim.lr=1e-5 --steps 12

Writes bench/results/rho_divergence.json (`--out`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time

import numpy as np
from common import RESULTS, command, load_avg, machine, write_json

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
DEFAULT_OVERRIDES = ["task.train_size=128", "eval_every=0"]


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    import resource

    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(config: str | None, overrides: list[str], steps: int) -> dict:
    """Train `steps` steps with rho=replay; per step the revisits' D (replay and drift)."""
    from spo.algo import DriftTracker
    from spo.train.config import load_config
    from spo.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            config,
            [*overrides, "tracker.rho=replay", "log.progress=false", f"run_dir={tmp}/run"],
        )
        trainer = Trainer(cfg)
        clock = DriftTracker(trainer.tracker.num_prompts)
        observe = trainer.spo.observe
        seen: list[dict] = []

        def spy(keys, rewards, *, step, rho=None, divergence=None):
            idx = np.asarray(keys, dtype=np.int64)
            step_drift = trainer.spo.drift.total - clock.total  # ReplayRho advanced the clock
            clock.advance(step_drift)
            revisit = trainer.tracker.seen(idx)
            seen.append(
                {
                    "step": step,
                    "revisits": int(revisit.sum()),
                    "samples": int(idx.size),
                    "step_drift": step_drift,
                    "replay": np.asarray(divergence, dtype=np.float64)[revisit].tolist(),
                    "drift": clock.divergence(idx)[revisit].tolist(),
                    "reward_mean": float(np.mean(np.asarray(rewards, dtype=np.float64))),
                }
            )
            clock.mark(idx)
            return observe(keys, rewards, step=step, rho=rho, divergence=divergence)

        trainer.spo.observe = spy
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        try:
            for _ in range(steps):
                trainer.train_step()
                s = seen[-1]
                print(
                    f"step {s['step']}: reward {s['reward_mean']:.3f}, {s['revisits']} revisits, "
                    f"drift {s['step_drift']:.4f}, median D replay "
                    f"{np.median(s['replay']) if s['replay'] else float('nan'):.4f} "
                    f"drift {np.median(s['drift']) if s['drift'] else float('nan'):.4f}",
                    flush=True,
                )
        finally:
            trainer.close()
        t = cfg.tracker
        return {
            "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(_cpu_seconds() - cpu0, 1),  # this process + reward workers
            "config": {
                "lr": cfg.optim.lr,
                "samples_per_step": cfg.samples_per_step,
                "train_prompts": len(trainer.train_examples),
                "updates_per_step": cfg.optim.updates_per_step,
                "model": cfg.model.path,
                "task": cfg.task.name,
                "rho_min": t.rho_min,
                "rho_max": t.rho_max,
                "d_half": t.d_half,
            },
            "steps": seen,
        }


def _shares(d_R: np.ndarray, d_half: float, rho_min: float, rho_max: float) -> dict:
    from spo.algo import applied_rho_stats, rho_from_divergence

    rho = rho_from_divergence(d_R, d_half=d_half, rho_min=rho_min, rho_max=rho_max)
    s = applied_rho_stats(rho, rho_min=rho_min, rho_max=rho_max)
    return {
        "d_half": round(d_half, 6),
        "rho_mean": round(s["mean"], 4),
        "at_min": round(s["at_min"], 3),
        "at_max": round(s["at_max"], 3),
        "inside": round(1 - s["at_min"] - s["at_max"], 3),
    }


def summarize(measured: dict, skip: int = 0) -> dict:
    """Per estimator: revisit count, D quantiles and the shares under three d_half choices,
    over the revisits of steps after `skip`."""
    from spo.algo import d_half_for_median, d_half_widest

    c = measured["config"]
    bounds = {"rho_min": c["rho_min"], "rho_max": c["rho_max"]}
    steps = [s for s in measured["steps"] if s["step"] > skip]
    out = {}
    for name in ("replay", "drift"):
        d_R = np.array([d for s in steps for d in s[name]], dtype=np.float64)
        d_R = d_R[d_R > 0]
        if d_R.size == 0:
            out[name] = {"revisits": 0, "note": "no revisit after an update: raise --steps"}
            continue
        out[name] = {
            "revisits": int(d_R.size),
            "quantiles": {
                f"p{int(q * 100)}": round(float(np.quantile(d_R, q)), 6) for q in QUANTILES
            },
            "mean": round(float(d_R.mean()), 6),
            "configured": _shares(d_R, c["d_half"], **bounds),
            "median_rule": _shares(d_R, d_half_for_median(d_R, **bounds), **bounds),
            "widest": _shares(d_R, d_half_widest(d_R, **bounds), **bounds),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default="configs/demo.yaml", help="a spo train config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. optim.lr=1e-5)")
    p.add_argument("--steps", type=int, default=8, help="training steps to measure (default 8)")
    p.add_argument(
        "--skip",
        type=int,
        default=0,
        help="leave out the revisits of the first SKIP steps (Adam's first steps move the "
        "policy most; default 0)",
    )
    p.add_argument("--out", default=str(RESULTS / "rho_divergence.json"))
    args = p.parse_args(argv)
    if not 0 <= args.skip < args.steps:
        p.error(f"--skip must be in [0, --steps); got {args.skip} with --steps {args.steps}")
    load_start = load_avg()
    overrides = [*DEFAULT_OVERRIDES, *args.overrides]
    measured = _measure(args.config, overrides, args.steps)
    summary = summarize(measured, args.skip)
    out = {
        "what": "revisit divergence D of the replay and drift estimators, and d_half choices",
        "command": command(__file__, argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(
            "platform",
            "cpu_count",
            "torch",
            "git_commit",
            load_avg_1m_at_start=load_start,
            load_avg_1m_at_end=load_avg(),
            note="2-core machine shared with other jobs: the time is noisy; D is not",
        ),
        "overrides": overrides,
        "skip": args.skip,
        **measured,
        "summary": summary,
    }
    write_json(args.out, out)
    for name, s in summary.items():
        if not s["revisits"]:
            print(f"{name}: {s['note']}")
            continue
        print(f"{name}: {s['revisits']} revisits, D quantiles {s['quantiles']}")
        for rule in ("configured", "median_rule", "widest"):
            r = s[rule]
            print(
                f"  {rule:12s} d_half {r['d_half']:.5f}: revisits at rho_min {r['at_min']:.0%}, "
                f"at rho_max {r['at_max']:.0%}, inside {r['inside']:.0%}"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
