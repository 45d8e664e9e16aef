"""`spo init-values`: offline tracker init (spec §3): n0 samples per training prompt with the
initial policy, drawn through the run's configured rollout engine (`rollout.engine`,
`cluster.*`), written as the values parquet `tracker.init=offline` reads."""

from __future__ import annotations

import argparse
import time

from spo.commands import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Reads the same config as `spo train` (model, task, rollout)."
    add_config_arguments(parser)
    parser.add_argument("--samples", type=int, default=8, help="n0 samples per prompt (default 8)")
    parser.add_argument("--out", default="values.parquet", help="output parquet file")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from spo.algo.values import write_values
    from spo.policy.models import encode_prompts, load_policy
    from spo.rollout import SamplingSettings
    from spo.rollout.factory import make_engine
    from spo.rollout.multiturn import sample_texts
    from spo.tasks import load_task
    from spo.tasks.rewards import RewardPool
    from spo.train.config import chat_kwargs, task_kwargs, tool_episodes

    cfg = config_from_args(args)
    if args.samples < 1:
        raise SystemExit("spo: error: --samples must be >= 1")
    task = load_task(**task_kwargs(cfg))
    model, tokenizer = load_policy(cfg.model.path, dtype=cfg.model.dtype, device=cfg.model.device)
    examples = task.train
    prompts = encode_prompts(tokenizer, [ex.prompt for ex in examples], **chat_kwargs(cfg, task))
    # the run's engine (HF, vLLM, shards, Ray actors) at the run's sampling settings
    engine = make_engine(cfg, model, tokenizer, model_path=cfg.model.path)
    episodes = tool_episodes(cfg, tokenizer)  # with tool use: whole episodes, as in training
    n0 = args.samples
    successes = np.zeros(len(examples))
    chunk = max(1, cfg.rollout.batch_size // n0) * 4
    t0 = time.perf_counter()
    try:
        with RewardPool(
            task.verifier, timeout=cfg.reward.timeout, workers=cfg.reward.workers
        ) as pool:
            for lo in range(0, len(examples), chunk):
                hi = min(lo + chunk, len(examples))
                ex_rep = [examples[i] for i in range(lo, hi) for _ in range(n0)]
                texts, _ = sample_texts(
                    engine,
                    prompts[lo:hi],
                    seed=cfg.seed * 1_000_003 + lo,
                    sampling=SamplingSettings(n=n0),
                    episodes=episodes,
                )
                successes[lo:hi] = np.asarray(pool(texts, ex_rep).reward_B).reshape(-1, n0).sum(1)
                print(f"\r  {hi}/{len(examples)} prompts", end="", flush=True)
    finally:
        if hasattr(engine, "close"):
            engine.close()
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
