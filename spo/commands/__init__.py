"""One module per `spo` command: `add_arguments(parser)` and `run(args) -> int`.

The only place with argparse and console printing; the libraries below return data.
train.py (train, demo), init_values.py, eval.py, report.py, compare.py, simulate.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """[CONFIG.yaml] key=value ...: the `spo train` config of the commands that take one."""
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="[CONFIG.yaml] key=value",
        help="optional YAML config, then overrides",
    )


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None):
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
