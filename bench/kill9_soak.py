"""kill -9 soak: a run killed with SIGKILL at K random moments and resumed each time ends
exactly where an uninterrupted run ends (issue 15, deliverable 3).

For each rollout mode (sync, async) it trains a reference run straight through, then the
same run as a chain of child processes. Each child resumes the run (`resume=true`; a
fresh start while no checkpoint exists yet, as a user would) and SIGKILLs itself at a
chosen step in one of these moments:

- generate:   inside the engine's generation (at its k-th decoded token, k in 1..4)
- update:     inside the PPO update, right after the first of its 2 optimizer steps
- tracker:    after the update and the forgetting estimate, before `tracker.update`
- ckpt_write: while a checkpoint is written (model + optimizer on disk, state not yet)
- ckpt_seal:  after every file and the manifest are written, before the marker
- random:     a timer at a uniform random time after start (unaligned to any phase)

The target step is up to two checkpoints past the newest one; a kill loses the steps
since the newest checkpoint and the next child redoes them (a kill before the first
checkpoint means a fresh start). At the end the two final checkpoints are compared:
every model tensor bit for bit, every array and scalar of the trainer state (tracker,
sampler RNG, drift, replay, in-flight rollouts; `train_seconds` excepted: wall time), and
every line of metrics.jsonl and samples.jsonl (minus timing keys: time/*, throughput/*,
wall_seconds, rollout/wall, rollout/engine_idle_fraction). The child writes its moment to
stderr before dying, so the result file records what was hit.

    python bench/kill9_soak.py                     # writes bench/results/kill9_soak.json
    python bench/kill9_soak.py --kills 4 --steps 12 --out /tmp/quick.json

The tiny random Llama of the tests (tests/conftest.py) on one torch thread: ~a few
minutes on 2 cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime as dt
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import RESULTS, ROOT, command, machine, write_json

MOMENTS = ("generate", "update", "tracker", "ckpt_write", "ckpt_seal", "random")
TIMING = ("time/", "throughput/", "wall_seconds", "rollout/wall", "rollout/engine_idle_fraction")
REWARD_SRC = '''
def reward(completion, answer):
    """Fraction of the first 8 characters that are ASCII letters: fractional, text-driven."""
    head = completion[:8]
    return sum(c.isascii() and c.isalpha() for c in head) / 8
'''


def overrides(model_dir: Path, data: Path, reward: Path, run_dir: Path, args, mode: str):
    o = {
        "model.path": model_dir,
        "task.name": data,
        "task.reward_fn": f"{reward}:reward",
        "steps": args.steps,
        "samples_per_step": 8,
        "rollout.max_new_tokens": 8,
        "rollout.batch_size": 8,
        "rollout.mode": mode,
        "reward.workers": 0,
        "log.tensorboard": "false",
        "log.progress": "false",
        "checkpoint_every": args.checkpoint_every,
        "keep_checkpoints": 2,
        "optim.micro_batch_size": 4,
        "optim.updates_per_step": 2,
        "optim.lr": 1e-3,
        "eval_every": args.eval_every,
        "eval_size": 4,
        "threads": 1,
        "run_dir": run_dir,
    }
    if mode == "async":
        o.update({"rollout.in_flight": 14, "rollout.batch_size": 4})
    return [f"{k}={v}" for k, v in o.items()]


# --------------------------------------------------------------------------- the child
def _die(moment: str, step: int) -> None:
    print(f"SOAK-KILL {moment} step={step}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def child(argv: list[str]) -> int:
    """Train with the given overrides; SIGKILL this process at (moment, step)."""
    moment, step, delay, *items = argv
    at = int(step)
    from spo.train import checkpoint as ckpt
    from spo.train.config import load_config
    from spo.train.trainer import Trainer

    cfg = load_config(None, items)
    trainer = Trainer(cfg)
    current = lambda: trainer.step + 1  # noqa: E731 - the step being computed

    if moment == "random":
        threading.Timer(float(delay), lambda: _die("random", current())).start()
    elif moment == "generate":
        phase = {"on": False, "calls": 0}
        target_calls = 1 + int(float(delay) * 4)  # the k-th forward pass of generation
        generate = trainer.engine.generate

        def generating(*a, **kw):
            phase["on"], phase["calls"] = current() == at, 0
            try:
                return generate(*a, **kw)
            finally:
                phase["on"] = False

        def decoded() -> None:
            if phase["on"]:
                phase["calls"] += 1
                if phase["calls"] >= target_calls:
                    _die(moment, at)

        import spo.rollout.llama as lean

        lean_step = lean.LlamaDecoder.step

        def step(self, *a, **kw):  # a token of the lean decoder
            decoded()
            return lean_step(self, *a, **kw)

        lean.LlamaDecoder.step = step
        trainer.model.register_forward_hook(lambda *_: decoded())  # HF generate's forward
        trainer.engine.generate = generating
    elif moment == "update":
        step_fn = trainer.optimizer.step

        def optimizer_step(*a, **kw):
            result = step_fn(*a, **kw)
            if current() == at:  # after the first of `updates_per_step` optimizer steps
                _die(moment, at)
            return result

        trainer.optimizer.step = optimizer_step
    elif moment == "tracker":
        update = trainer.tracker.update

        def tracker_update(*a, **kw):
            if current() == at:
                _die(moment, at)
            return update(*a, **kw)

        trainer.tracker.update = tracker_update
    elif moment in ("ckpt_write", "ckpt_seal"):
        name = "write_state" if moment == "ckpt_write" else "_manifest_and_fsync"
        original = getattr(ckpt, name)

        def die_in_checkpoint(*a, **kw):
            if trainer.step >= at:
                _die(moment, trainer.step)
            return original(*a, **kw)

        setattr(ckpt, name, die_in_checkpoint)
    try:
        trainer.run()
    finally:
        trainer.close()
    return 0


# -------------------------------------------------------------------------- the parent
def _train(items: list[str], moment: str = "none", step: int = 0, delay: float = 0.0):
    cmd = [sys.executable, __file__, "--child", moment, str(step), str(delay), *items]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def _checkpoints(run: Path) -> list[int]:
    from spo.train.checkpoint import list_checkpoints, read_state

    return [int(read_state(p)["step"]) for p in list_checkpoints(run / "checkpoints")]


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _same(x, y) -> bool:
    """Equal arrays, bit for bit; NaN = NaN (drift's "never visited")."""
    import numpy as np

    floats = x.dtype.kind == "f" and y.dtype.kind == "f"
    return x.dtype == y.dtype and np.array_equal(x, y, equal_nan=floats)


def compare(a: Path, b: Path, steps: int) -> dict:
    """Differences between the final checkpoints and logs of runs a and b (empty = equal)."""
    import torch
    from safetensors.torch import load_file

    from spo.train.checkpoint import _flatten, checkpoint_name, read_state, verify_checkpoint

    ca, cb = (r / "checkpoints" / checkpoint_name(steps) for r in (a, b))
    out: dict[str, list[str]] = {"weights": [], "state": [], "metrics": [], "samples": []}
    for c in (ca, cb):
        verify_checkpoint(c)
    wa, wb = load_file(ca / "model.safetensors"), load_file(cb / "model.safetensors")
    out["weights"] = [k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
    (arr_a, sc_a), (arr_b, sc_b) = _flatten(read_state(ca)), _flatten(read_state(cb))
    out["state"] += [k for k in arr_a if k not in arr_b or not _same(arr_a[k], arr_b[k])]
    out["state"] += [k for k in sc_a if k != "train_seconds" and sc_a[k] != sc_b.get(k)]
    for name, key in (("metrics.jsonl", "metrics"), ("samples.jsonl", "samples")):
        la, lb = _lines(a / name), _lines(b / name)
        if len(la) != len(lb):
            out[key].append(f"{len(la)} vs {len(lb)} lines")
        for i, (x, y) in enumerate(zip(la, lb, strict=False)):
            keys = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
            if keys:
                out[key].append(f"line {i + 1}: {', '.join(keys)}")
    out["compared"] = {
        "weight_tensors": len(wa),
        "state_arrays": len(arr_a),
        "state_keys": sorted(arr_a),
        "metrics_lines": len(_lines(a / "metrics.jsonl")),
        "samples_lines": len(_lines(a / "samples.jsonl")),
    }
    return out


def soak(mode: str, args, tmp: Path, model_dir: Path, data: Path, reward: Path) -> dict:
    rng = random.Random(f"{args.seed}-{mode}")
    ref, run = tmp / f"ref-{mode}", tmp / f"soak-{mode}"
    t0 = time.perf_counter()
    r = _train(overrides(model_dir, data, reward, ref, args, mode))
    if r.returncode != 0:
        raise SystemExit(f"reference run failed:\n{r.stderr[-3000:]}")
    ref_seconds = time.perf_counter() - t0
    kills, moments = [], [MOMENTS[i % len(MOMENTS)] for i in range(args.kills)]
    rng.shuffle(moments)
    for moment in moments:
        done = _checkpoints(run)
        start = done[-1] if done else 0
        items = overrides(model_dir, data, reward, run, args, mode)
        if done:
            items.append("resume=true")
        # a step up to two checkpoints past the newest (ckpt moments: one of those two)
        ce = args.checkpoint_every
        if moment.startswith("ckpt"):
            step = min(start + ce * rng.randint(1, 2), args.steps)
        else:
            step = rng.randint(start + 1, min(start + 2 * ce, args.steps))
        delay = rng.uniform(0.5, 6.0) if moment == "random" else rng.random()
        t_child = time.perf_counter()
        r = _train(items, moment, step, delay)
        hit = [x for x in r.stderr.splitlines() if x.startswith("SOAK-KILL")]
        kills.append(
            {
                "moment": moment,
                "resumed_from_step": start,
                "target_step": step,
                "returncode": r.returncode,
                "killed": r.returncode == -signal.SIGKILL,
                "seconds": round(time.perf_counter() - t_child, 1),
                "hit": hit[0] if hit else None,
                "checkpoints_after": _checkpoints(run),
            }
        )
        if r.returncode not in (0, -signal.SIGKILL):
            raise SystemExit(f"soak child failed ({moment}):\n{r.stderr[-3000:]}")
        print(f"  {mode}: {kills[-1]}", flush=True)
        if r.returncode == 0:
            break  # the run finished before the moment came: nothing left to kill
    items = overrides(model_dir, data, reward, run, args, mode)
    r = _train([*items, "resume=true"] if _checkpoints(run) else items)
    if r.returncode != 0:
        raise SystemExit(f"final resume failed:\n{r.stderr[-3000:]}")
    diff = compare(ref, run, args.steps)
    equal = not any(diff[k] for k in ("weights", "state", "metrics", "samples"))
    return {
        "kills": kills,
        "n_killed": sum(k["killed"] for k in kills),
        "reference_seconds": round(ref_seconds, 1),
        "differences": diff,
        "equal": equal,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=12, help="SIGKILLs per mode (default 12)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--checkpoint-every", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--modes", default="sync,async")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "kill9_soak.json"))
    args = p.parse_args(argv)

    from tests.conftest import build_tiny_model

    started = dt.datetime.now(dt.timezone.utc)
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = build_tiny_model(tmp / "model")
        data, reward = tmp / "data.jsonl", tmp / "reward.py"
        rows = [
            {"prompt": f"Say something about {i} and {i * 7 % 13}.", "answer": str(i)}
            for i in range(40)
        ]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        reward.write_text(REWARD_SRC)
        for mode in args.modes.split(","):
            print(f"{mode}: reference + {args.kills} kills ...", flush=True)
            results[mode] = soak(mode, args, tmp, model_dir, data, reward)
            print(f"{mode}: equal={results[mode]['equal']}", flush=True)
    out = {
        "what": "kill -9 soak: SIGKILL at K moments + resume vs an uninterrupted run",
        "command": command(__file__, argv),
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1),
        "machine": machine("platform", "cpu_count", "python", "torch", "load_avg_1m_at_end"),
        "settings": vars(args) | {"model": "tiny random Llama (tests/conftest.py)"},
        "results": results,
        "all_equal": all(r["equal"] for r in results.values()),
    }
    write_json(args.out, out)
    print(f"wrote {args.out}: all_equal={out['all_equal']}")
    return 0 if out["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
