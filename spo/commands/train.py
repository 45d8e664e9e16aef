"""`spo train` (one run, or `--resume RUN_DIR`) and `spo demo` (evaluate, train, evaluate)."""

from __future__ import annotations

import argparse
import json
import time

from spo.commands import add_config_arguments, config_from_args

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from spo.train.config import help_text

    parser.epilog = TRAIN_EPILOG + help_text()
    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its newest valid checkpoint with its saved config",
    )


def run(args: argparse.Namespace) -> int:
    from spo.train.trainer import Trainer

    cfg = config_from_args(args)
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


DEMO_EPILOG = "Takes the same key=value options as `spo train` (see its --help)."


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = DEMO_EPILOG
    add_config_arguments(parser)
    parser.add_argument("--k", type=int, default=4, help="samples per held-out prompt (default 4)")


TOOL_ROWS = (
    ("tools/episodes_with_calls", "episodes that call the tool"),
    ("tools/episodes_code_ok", "episodes whose code all ran (ok)"),
    ("tools/call_rate", "model turns that call the tool"),
    ("tools/turns_per_episode", "model turns per episode"),
)


def _fmt(x: float) -> str:
    return f"{100 * x:5.1f}%"


def run_demo(args: argparse.Namespace) -> int:
    from spo.policy.models import DEFAULT_MODEL, convert_embedded
    from spo.train.trainer import Trainer

    stamp = time.strftime("%Y%m%d-%H%M%S")
    cfg = config_from_args(
        args,
        extra=[]
        if any(o.startswith("run_dir=") for o in args.overrides)
        else [f"run_dir=runs/demo-{stamp}"],
    )
    if cfg.model.path == DEFAULT_MODEL:
        print("preparing the embedded SmolLM2-135M-Instruct (converted once, then cached) ...")
        convert_embedded()
    trainer = Trainer(cfg)
    tools = trainer.episodes is not None  # the agentic preset: also the tool-free reference
    try:
        n = len(trainer.eval_examples)
        what = "episodes with the Python tool, " if tools else ""
        print(
            f"held-out accuracy before training ({n} prompts, {what}greedy + {args.k} samples) ..."
        )
        before = trainer.evaluate(k=args.k)
        print(
            f"  greedy {_fmt(before['greedy'])}   sampled avg@{args.k} "
            f"{_fmt(before[f'avg@{args.k}'])}"
        )
        if tools:
            before_plain = trainer.evaluate(k=args.k, tools=False)
            print(f"  without the tool (one turn): greedy {_fmt(before_plain['greedy'])}")
        print(
            f"training: algo={cfg.algo}, {cfg.steps} steps x {cfg.samples_per_step} samples "
            f"-> {trainer.run_dir}"
        )
        t0 = time.perf_counter()
        trainer.run()
        minutes = (time.perf_counter() - t0) / 60
        print("held-out accuracy after training ...")
        after = trainer.evaluate(k=args.k)
        if tools:
            after_plain = trainer.evaluate(k=args.k, tools=False)
    finally:
        trainer.close()
    keys = ["greedy", f"avg@{args.k}", f"pass@{args.k}", f"maj@{args.k}"]
    print(f"\n{'metric':<10}{'before':>9}{'after':>9}" + ("   (with the tool)" if tools else ""))
    for key in keys:
        print(f"{key:<10}{_fmt(before[key]):>9}{_fmt(after[key]):>9}")
    result = {
        "before": before,
        "after": after,
        "train_minutes": minutes,
        "steps": trainer.step,
        "samples": trainer.samples_seen,
    }
    if tools:
        print("\nwithout the tool (rollout.max_turns=1, same model), reference:")
        for key in ("greedy", f"avg@{args.k}"):
            print(f"{key:<10}{_fmt(before_plain[key]):>9}{_fmt(after_plain[key]):>9}")
        print(f"\ntool use on held-out prompts ({args.k} sampled episodes each):")
        for key, label in TOOL_ROWS:
            b, a = before[key], after[key]
            fmt = (lambda x: f"{x:5.2f} ") if key.endswith("per_episode") else _fmt
            print(f"{label:<34}{fmt(b):>9}{fmt(a):>9}")
        result.update(before_without_tool=before_plain, after_without_tool=after_plain)
    (trainer.run_dir / "demo_result.json").write_text(json.dumps(result, indent=1))
    print(f"\ntrained {trainer.step} steps ({trainer.samples_seen} samples) in {minutes:.1f} min")
    print(f"run dir:   {trainer.run_dir}  (metrics.jsonl, checkpoints/, tb/)")
    print(f"continue:  spo train --resume {trainer.run_dir} steps={2 * cfg.steps}")
    print(f"evaluate:  spo eval {trainer.run_dir}")
    print(f"report:    spo report {trainer.run_dir}")
    config = args.overrides[0] + " " if args.overrides and "=" not in args.overrides[0] else ""
    print(f"compare:   spo demo {config}algo=grpo   (same harness, same samples per step)")
    return 0
