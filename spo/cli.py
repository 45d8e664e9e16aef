"""The `spo` command: train | demo | init-values | eval | report | compare | simulate.

Every user error (bad config, missing file, wrong model path, corrupt checkpoint, bad
reward) is printed as one line `spo: error: ...` with exit code 2; tracebacks are kept
for bugs.
"""

from __future__ import annotations

import argparse
import sys


def _user_errors() -> tuple[type[BaseException], ...]:
    from spo.algo.values import ValuesFileError
    from spo.policy.models import ModelError
    from spo.rollout import EngineError
    from spo.tasks import TaskError
    from spo.tasks.rewards import RewardError
    from spo.train import TrainError
    from spo.train.checkpoint import CheckpointError
    from spo.train.config import ConfigError
    from spo.train.logging import RunWriteError

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


COMMANDS = (
    # name, module in spo.commands, help; each module has add_arguments(parser) + run(args)
    ("train", "train", "train a policy with SPO / GRPO / RLOO / Dr. GRPO"),
    ("demo", "train:demo", "the laptop demo: evaluate, train with SPO, evaluate again"),
    (
        "init-values",
        "init_values",
        "offline tracker init: n0 samples per training prompt with the initial policy, "
        "saved for reuse (spec §3)",
    ),
    ("eval", "eval", "evaluate a model or every checkpoint of a run: avg@k, pass@k, maj@k"),
    ("report", "report", "HTML report with plots from one or more run directories"),
    (
        "compare",
        "compare",
        "SPO vs GRPO (and SPO ablations) over several seeds at matched samples: "
        "runs, summary.json, plots, report, study page",
    ),
    (
        "simulate",
        "simulate",
        "agentic throughput simulation: group-based vs group-free "
        "rollouts (the paper's 4.35x example and beyond)",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from spo import __version__

    parser = argparse.ArgumentParser(
        prog="spo",
        description="Single-stream Policy Optimization: RL with verifiable "
        "rewards, with GRPO and friends in the same harness.",
    )
    parser.add_argument("--version", action="version", version=f"spo-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, target, help in COMMANDS:
        module_name, _, variant = target.partition(":")
        mod = importlib.import_module(f"spo.commands.{module_name}")
        add_arguments = getattr(mod, f"add_{variant}_arguments" if variant else "add_arguments")
        run = getattr(mod, f"run_{variant}" if variant else "run")
        p = sub.add_parser(
            name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


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
