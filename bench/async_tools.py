"""Measured (not simulated) throughput of tool-integrated rollouts: sync-group GRPO vs async
GRPO (group barriers) vs async single-stream SPO, in one run (issue 8, deliverable 5).

Every arm is the real trainer (`spo.train.trainer.Trainer`: rollout scheduler, decoding,
scoring, PPO updates, tracker) on a tiny random Llama, with one change: the tool is a
`SleepTool` that sleeps instead of running code. Each sample makes 1-3 tool calls; a call
sleeps a seeded heavy-tailed time: lognormal (median `--median` s, sigma `--sigma`), and
with probability `--straggler-frac` x `--straggler-mult` (a straggler). The tool's latency
dominates, as in agentic RL, so the arms differ by how they wait:

- sync GRPO: each step issues its groups and waits for all of their samples (every tool
  call of every member);
- async GRPO: a pool of `in_flight` samples in whole groups, a group admitted when all its
  members have finished;
- async SPO: the same pool, single samples admitted as they finish.

Reported per arm: trained samples/s over the whole run (rollout + training), the rollout
engine's idle fraction (share of rollout wall time with no sample ready to decode), and
the ratios against sync GRPO. Tool calls run on `--tool-workers` threads (they only
sleep), the model on one torch thread: a few minutes on one core.

    python bench/async_tools.py            # writes bench/results/async_tools.json + .md
    python bench/async_tools.py --steps 3 --out /tmp/quick.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, command, machine, write_json

from spo.train.config import load_config
from spo.train.trainer import Trainer
from tests.conftest import build_tiny_model

ARMS = {
    "sync_grpo": {"algo": "grpo", "rollout.mode": "sync"},
    "async_grpo": {"algo": "grpo", "rollout.mode": "async"},
    "async_spo": {"algo": "spo", "rollout.mode": "async"},
}


class SleepTool:
    """A tool call per turn for the sample's first 1-3 turns; each call sleeps a seeded
    lognormal time, x `straggler_mult` with probability `straggler_frac`."""

    def __init__(self, args):
        self.args = args

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.args.seed, *key])

    def call(self, sample, text):
        calls = 1 + int(self._rng(sample.uid).integers(3))
        return f"{sample.uid}:{sample.tool_calls}" if sample.tool_calls < calls else None

    def run(self, call: str) -> str:
        uid, turn = (int(x) for x in call.split(":"))
        rng = self._rng(uid, turn + 1)
        a = self.args
        latency = a.median * float(np.exp(a.sigma * rng.standard_normal()))
        if rng.random() < a.straggler_frac:
            latency *= a.straggler_mult
        time.sleep(latency)
        return f"slept {latency:.2f} s"


def task_files(tmp: Path) -> dict[str, str]:
    data = tmp / "data.jsonl"
    rows = [{"prompt": f"Compute item {i}.", "answer": str(i)} for i in range(256)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = tmp / "reward.py"
    reward.write_text(
        "def reward(completion, answer):\n    return sum(c.isalpha() for c in completion[:8]) / 8\n"
    )
    return {"data": str(data), "reward": f"{reward}:reward"}


def run_arm(name: str, args, model_dir: Path, files: dict, tmp: Path) -> dict:
    overrides = {
        "model.path": str(model_dir),
        "task.name": files["data"],
        "task.reward_fn": files["reward"],
        "task.train_size": 250,
        "task.test_size": 4,
        "steps": args.steps,
        "samples_per_step": args.samples_per_step,
        "group_size": args.group_size,
        "rollout.max_new_tokens": 8,
        "rollout.batch_size": 64,
        "rollout.max_turns": 4,
        "rollout.in_flight": 2 * args.samples_per_step,
        "rollout.max_staleness": 2,
        "rollout.tool_workers": args.tool_workers,
        "reward.workers": 0,
        "tracker.rho": "constant",
        "log.tensorboard": False,
        "log.progress": False,
        "checkpoint_every": 10**6,
        "optim.micro_batch_size": 16,
        "eval_size": 4,
        "seed": args.seed,
        "threads": 1,
        "run_dir": str(tmp / name),
        **ARMS[name],
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    trainer = Trainer(cfg)
    trainer.scheduler.env = SleepTool(args)
    trainer.save_checkpoint = lambda: None  # measure rollouts + training, not disk writes
    rollout_idle = []
    try:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            m = trainer.train_step()
            rollout_idle.append(m["rollout/engine_idle_fraction"])
        wall = time.perf_counter() - t0
        totals = dict(trainer.scheduler.totals)
    finally:
        trainer.close()
    samples = args.steps * args.samples_per_step
    return {
        "wall_s": wall,
        "samples": samples,
        "samples_per_s": samples / wall,
        "rollout_wall_s": totals["wall"],
        "engine_idle_s": totals["idle"],
        "engine_decode_s": totals["decode"],
        "engine_idle_fraction": totals["idle"] / totals["wall"],
        "engine_idle_fraction_per_step": rollout_idle,
        "tool_calls": totals["tool_calls"],
        "train_s": wall - totals["wall"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples-per-step", type=int, default=32)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--median", type=float, default=0.2, help="median tool latency (s)")
    p.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma")
    p.add_argument("--straggler-frac", type=float, default=0.05)
    p.add_argument("--straggler-mult", type=float, default=10.0)
    p.add_argument("--tool-workers", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "async_tools.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = build_tiny_model(tmp / "model")
        files = task_files(tmp)
        for name in ARMS:
            results[name] = run_arm(name, args, model_dir, files, tmp)
            r = results[name]
            print(
                f"{name:11s} {r['samples_per_s']:6.2f} samples/s  wall {r['wall_s']:6.1f} s  "
                f"engine idle {r['engine_idle_fraction']:.1%}  tool calls {r['tool_calls']}"
            )
    base = results["sync_grpo"]["samples_per_s"]
    ratios = {f"{n}_vs_sync_grpo": results[n]["samples_per_s"] / base for n in ARMS}
    print(
        "samples/s vs sync GRPO: "
        + ", ".join(f"{n} {ratios[f'{n}_vs_sync_grpo']:.2f}x" for n in ARMS)
    )
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine("platform", "processor", "cpus", "load_avg_1m_at_end", "torch"),
        "command": command(__file__),
        "settings": vars(args) | {"model": "tiny random Llama (tests/conftest.py)"},
        "results": results,
        "ratios": ratios,
    }
    path = write_json(args.out, out)
    path.with_suffix(".md").write_text(markdown(out))
    print(f"wrote {path} and {path.with_suffix('.md')}")


def markdown(out: dict) -> str:
    s = out["settings"]
    lines = [
        "# Async tool rollouts, measured (issue 8)",
        "",
        f"{out['date']}, {out['machine']['cpus']} CPUs, torch {out['machine']['torch']}; "
        f"load average at the end {out['machine']['load_avg_1m_at_end']:.2f}.",
        "",
        f"Real trainer, tiny random Llama, {s['steps']} steps x {s['samples_per_step']} "
        f"samples, group size {s['group_size']}, async pool {2 * s['samples_per_step']} "
        f"samples; each sample makes 1-3 tool calls, each sleeping lognormal(median "
        f"{s['median']} s, sigma {s['sigma']}), {s['straggler_frac']:.0%} stragglers "
        f"x{s['straggler_mult']:g}.",
        "",
        "| arm | samples/s | vs sync GRPO | wall s | rollout s | train s | engine idle |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in out["results"].items():
        lines.append(
            f"| {name} | {r['samples_per_s']:.2f} | {out['ratios'][f'{name}_vs_sync_grpo']:.2f}x "
            f"| {r['wall_s']:.1f} | {r['rollout_wall_s']:.1f} | {r['train_s']:.1f} "
            f"| {r['engine_idle_fraction']:.1%} |"
        )
    lines += ["", "Command:", "", "```", out["command"].strip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
