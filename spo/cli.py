"""The `spo` command: train | demo | init-values | eval | report | compare | simulate.

Every user error (bad config, missing file, wrong model path, corrupt checkpoint, bad
reward) is printed as one line `spo: error: ...` with exit code 2; tracebacks are kept
for bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _user_errors() -> tuple[type[BaseException], ...]:
    from spo.models import ModelError
    from spo.rewards import RewardError
    from spo.rollout import EngineError
    from spo.tasks import TaskError
    from spo.train.checkpoint import CheckpointError
    from spo.train.config import ConfigError
    from spo.train.logging import RunWriteError
    from spo.train.trainer import TrainError
    from spo.train.values import ValuesFileError

    return (
        ConfigError,
        TrainError,
        TaskError,
        ModelError,
        RewardError,
        CheckpointError,
        ValuesFileError,
        EngineError,
        RunWriteError,
    )


def _config(args: argparse.Namespace, extra: list[str] | None = None):
    from spo.train.config import load_config

    items = list(args.overrides)
    config_path = None
    if items and "=" not in items[0]:
        config_path = items.pop(0)
    base = None
    if getattr(args, "resume", None):
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            from spo.train.config import ConfigError

            raise ConfigError(f"--resume {args.resume!r}: no config.yaml there; is it a run dir?")
        from omegaconf import OmegaConf

        base = OmegaConf.load(saved)
        items += [f"run_dir={args.resume}", "resume=true"]
    return load_config(config_path, items + (extra or []), base=base)


# ----------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from spo.train.trainer import Trainer

    cfg = _config(args)
    trainer = Trainer(cfg)
    try:
        print(
            f"run dir: {trainer.run_dir}  (algo={cfg.algo}, {cfg.steps} steps x "
            f"{cfg.samples_per_step} samples)"
        )
        last = trainer.run()
    finally:
        trainer.close()
    print(
        f"done: step {trainer.step}, reward {last.get('reward/mean', float('nan')):.3f}; "
        f"metrics in {trainer.run_dir / 'metrics.jsonl'}"
    )
    return 0


# ------------------------------------------------------------------------------ demo
def _fmt(x: float) -> str:
    return f"{100 * x:5.1f}%"


def cmd_demo(args: argparse.Namespace) -> int:
    from spo.models import DEFAULT_MODEL, convert_embedded
    from spo.train.trainer import Trainer

    stamp = time.strftime("%Y%m%d-%H%M%S")
    cfg = _config(
        args,
        extra=[]
        if any(o.startswith("run_dir=") for o in args.overrides)
        else [f"run_dir=runs/demo-{stamp}"],
    )
    if cfg.model.path == DEFAULT_MODEL:
        print("preparing the embedded SmolLM2-135M-Instruct (converted once, then cached) ...")
        convert_embedded()
    trainer = Trainer(cfg)
    try:
        n = len(trainer.eval_examples)
        print(f"held-out accuracy before training ({n} prompts, greedy + {args.k} samples) ...")
        before = trainer.evaluate(k=args.k)
        print(
            f"  greedy {_fmt(before['greedy'])}   sampled avg@{args.k} "
            f"{_fmt(before[f'avg@{args.k}'])}"
        )
        print(
            f"training: algo={cfg.algo}, {cfg.steps} steps x {cfg.samples_per_step} samples "
            f"-> {trainer.run_dir}"
        )
        t0 = time.perf_counter()
        trainer.run()
        minutes = (time.perf_counter() - t0) / 60
        print("held-out accuracy after training ...")
        after = trainer.evaluate(k=args.k)
    finally:
        trainer.close()
    keys = ["greedy", f"avg@{args.k}", f"pass@{args.k}", f"maj@{args.k}"]
    print(f"\n{'metric':<10}{'before':>9}{'after':>9}")
    for key in keys:
        print(f"{key:<10}{_fmt(before[key]):>9}{_fmt(after[key]):>9}")
    result = {
        "before": before,
        "after": after,
        "train_minutes": minutes,
        "steps": trainer.step,
        "samples": trainer.samples_seen,
    }
    (trainer.run_dir / "demo_result.json").write_text(json.dumps(result, indent=1))
    print(f"\ntrained {trainer.step} steps ({trainer.samples_seen} samples) in {minutes:.1f} min")
    print(f"run dir:   {trainer.run_dir}  (metrics.jsonl, checkpoints/, tb/)")
    print(f"continue:  spo train --resume {trainer.run_dir} steps={2 * cfg.steps}")
    print(f"evaluate:  spo eval {trainer.run_dir}")
    print(f"report:    spo report {trainer.run_dir}")
    print("compare:   spo demo algo=grpo   (same harness, same samples per step)")
    return 0


# ----------------------------------------------------------------------- init-values
def cmd_init_values(args: argparse.Namespace) -> int:
    import numpy as np

    from spo.models import encode_prompts, load_policy
    from spo.rewards import RewardPool
    from spo.rollout.factory import make_local_engine
    from spo.tasks import load_task
    from spo.train.trainer import _task_kwargs
    from spo.train.values import write_values

    cfg = _config(args)
    if args.samples < 1:
        raise SystemExit("spo: error: --samples must be >= 1")
    task = load_task(**_task_kwargs(cfg))
    model, tokenizer = load_policy(cfg.model.path, dtype=cfg.model.dtype, device=cfg.model.device)
    examples = task.train
    prompts = encode_prompts(
        tokenizer,
        [ex.prompt for ex in examples],
        system_prompt=task.chat_system_prompt(cfg.task.system_prompt),
    )
    engine = make_local_engine(cfg, model, tokenizer, model_path=cfg.model.path)
    n0 = args.samples
    successes = np.zeros(len(examples))
    chunk = max(1, cfg.rollout.batch_size // n0) * 4
    t0 = time.perf_counter()
    with RewardPool(task.verifier, timeout=cfg.reward.timeout, workers=cfg.reward.workers) as pool:
        for lo in range(0, len(examples), chunk):
            hi = min(lo + chunk, len(examples))
            rep = [prompts[i] for i in range(lo, hi) for _ in range(n0)]
            ex_rep = [examples[i] for i in range(lo, hi) for _ in range(n0)]
            texts = engine.generate(rep, seed=cfg.seed * 1_000_003 + lo).texts
            successes[lo:hi] = np.asarray(pool(texts, ex_rep).reward_B).reshape(-1, n0).sum(1)
            print(f"\r  {hi}/{len(examples)} prompts", end="", flush=True)
    print()
    out = write_values(
        args.out,
        [ex.id for ex in examples],
        successes,
        np.full(len(examples), n0),
        prompts=[ex.prompt for ex in examples],
    )
    value = successes / n0
    print(
        f"wrote {out}: {len(examples)} prompts x {n0} samples in "
        f"{time.perf_counter() - t0:.0f}s; mean success {value.mean():.3f}, "
        f"never solved {np.mean(value == 0):.1%}, always solved {np.mean(value == 1):.1%}"
    )
    print(f"use it: spo train tracker.init=offline tracker.offline_path={out}")
    return 0


# ------------------------------------------------------------------------------ main
TRAIN_EPILOG = """\
CONFIG is an optional YAML file; key=value overrides come after it (defaults < YAML <
overrides). The defaults are the laptop demo: SPO on the embedded SmolLM2-135M-Instruct
and the built-in arithmetic task.

examples:
  spo train                                   # SPO, embedded model, arithmetic
  spo train algo=grpo                         # GRPO in the same harness
  spo train configs/demo.yaml steps=80 optim.lr=1e-5
  spo train --resume runs/spo-20260101-120000 steps=80

options (key=default {choices}):
"""


def build_parser() -> argparse.ArgumentParser:
    from spo import __version__

    parser = argparse.ArgumentParser(
        prog="spo",
        description="Single-stream Policy Optimization: RL with verifiable "
        "rewards, with GRPO and friends in the same harness.",
    )
    parser.add_argument("--version", action="version", version=f"spo-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def config_command(name: str, help: str, epilog: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="[CONFIG.yaml] key=value",
            help="optional YAML config, then overrides",
        )
        return p

    from spo.train.config import help_text

    p = config_command(
        "train", "train a policy with SPO / GRPO / RLOO / Dr. GRPO", TRAIN_EPILOG + help_text()
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its newest valid checkpoint with its saved config",
    )
    p.set_defaults(func=cmd_train)

    p = config_command(
        "demo",
        "the laptop demo: evaluate, train with SPO, evaluate again",
        "Takes the same key=value options as `spo train` (see its --help).",
    )
    p.add_argument("--k", type=int, default=4, help="samples per held-out prompt (default 4)")
    p.set_defaults(func=cmd_demo)

    p = config_command(
        "init-values",
        "offline tracker init: n0 samples per training prompt "
        "with the initial policy, saved for reuse (spec §3)",
        "Reads the same config as `spo train` (model, task, rollout).",
    )
    p.add_argument("--samples", type=int, default=8, help="n0 samples per prompt (default 8)")
    p.add_argument("--out", default="values.parquet", help="output parquet file")
    p.set_defaults(func=cmd_init_values)

    # Commands whose module owns its arguments: add_arguments(parser) + run(args) -> int.
    for name, module, help in [
        ("eval", "spo.eval", "evaluate a model or every checkpoint of a run: avg@k, pass@k, maj@k"),
        ("report", "spo.report", "HTML report with plots from one or more run directories"),
        (
            "compare",
            "spo.compare",
            "SPO vs GRPO (and SPO ablations) over several seeds at matched samples: "
            "runs, summary.json, plots, report, study page",
        ),
        (
            "simulate",
            "spo.sim",
            "agentic throughput simulation: group-based vs group-free "
            "rollouts (the paper's 4.35x example and beyond)",
        ),
    ]:
        mod = _optional_module(module)
        if mod is None or not hasattr(mod, "add_arguments"):
            continue
        p = sub.add_parser(
            name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def _optional_module(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return None


def _quiet_libraries() -> None:
    """Library progress bars and advice would bury our one-line messages."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"spo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
