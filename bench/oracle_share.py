"""Oracle share of a task mix at the start of training: how much reward variance a perfect
per-prompt baseline could remove (issue 19, deliverable 5), measured on the initial policy.

For P training prompts (`task.train_size = P`, the prompts a run with these settings trains
on) the initial policy samples K responses each at the rollout settings; with p(x) the
fresh per-prompt pass rate, the script reports (`spo.study.oracle`):

    oracle share = Var_x(p) / Var(r)   (unbiased ANOVA estimate, 95% bootstrap over prompts)
    Var(r − b_m) / Var(r)              b_m = mean of m other samples of the same prompt

for the whole sample and for each level mix in --mixes that is a subset of the measured
levels (prompts of those levels only; the arithmetic task deals prompts round-robin over a
mix's levels, so a subset of an `all` run has the mix's level weights, repeats aside).
Every reward is kept in the result file, so other mixes can be recomputed from it.

    nice -n 10 python bench/oracle_share.py task.difficulty=all task.train_size=132 \\
        --samples 16 --out bench/results/oracle_share.json
    nice -n 10 python bench/oracle_share.py CONFIG.yaml rollout.temperature=0.6 ...

Results with --append are added as one more entry of the file's "runs" list.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import common
import numpy as np

MIXES = "default,easy,hard,all"


def measure(config: str | None, overrides: list[str], samples: int) -> dict:
    """Sample `samples` responses for every training prompt; rewards and settings."""
    import torch

    from spo.eval import generate_samples
    from spo.policy.models import load_policy
    from spo.rollout.factory import make_engine
    from spo.tasks import load_task
    from spo.tasks.rewards import RewardPool
    from spo.train.config import chat_kwargs, load_config, task_kwargs

    cfg = load_config(config, overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = load_task(**task_kwargs(cfg))
    examples = list(task.train)
    model, tokenizer = load_policy(cfg.model.path, dtype=cfg.model.dtype, device=cfg.model.device)
    engine = make_engine(cfg, model, tokenizer, model_path=cfg.model.path)
    r = cfg.rollout
    t0 = time.perf_counter()
    with RewardPool(task.verifier, timeout=cfg.reward.timeout, workers=cfg.reward.workers) as pool:
        s = generate_samples(
            engine,
            tokenizer,
            task,
            examples,
            k=samples,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            **chat_kwargs(cfg, task),
            reward_pool=pool,
            seed=cfg.seed,
            greedy=False,
            batch_size=r.batch_size,
        )
    return {
        "settings": {
            "model.path": cfg.model.path,
            "model.dtype": cfg.model.dtype,
            "task.name": cfg.task.name,
            "task.difficulty": cfg.task.difficulty,
            "task.train_size": len(examples),
            "task.fewshot": cfg.task.fewshot,
            "rollout.temperature": r.temperature,
            "rollout.top_p": r.top_p,
            "rollout.max_new_tokens": r.max_new_tokens,
            "seed": cfg.seed,
            "samples_per_prompt": samples,
        },
        "seconds": time.perf_counter() - t0,
        "prompts": [
            {
                "id": ex.id,
                "level": ex.meta.get("level"),
                "rewards": [float(x) for x in row],
            }
            for ex, row in zip(examples, s.reward_EK, strict=True)
        ],
    }


def analyse(run: dict, mixes: str, n_boot: int) -> dict:
    """Oracle reports of the whole run and of each mix whose levels were all measured."""
    from spo.study.oracle import oracle_report
    from spo.tasks.arithmetic import parse_difficulty

    levels = [p["level"] for p in run["prompts"]]
    reward_PK = np.asarray([p["rewards"] for p in run["prompts"]], dtype=np.float64)
    out = {"measured": oracle_report(reward_PK, n_boot=n_boot)}
    by_level = {}
    for lv in dict.fromkeys(levels):
        sel = [i for i, x in enumerate(levels) if x == lv]
        by_level[str(lv)] = {"prompts": len(sel), "rate": float(reward_PK[sel].mean())}
    out["levels"] = by_level
    if run["settings"]["task.name"] != "arithmetic":
        return out
    measured = set(levels)
    for mix in [m for m in mixes.split(";") if m.strip()]:
        wanted = set(parse_difficulty(mix))
        if not wanted <= measured or wanted == measured:
            continue
        sel = [i for i, x in enumerate(levels) if x in wanted]
        if len(sel) >= 2:
            out[f"mix={mix}"] = oracle_report(reward_PK[sel], n_boot=n_boot)
    return out


def _line(name: str, rep: dict) -> str:
    lo, hi = rep["oracle_share_interval"]
    few = ", ".join(f"m={m}: {v:.3f}" for m, v in rep["few_sample_baseline_ratio"].items())
    return (
        f"{name:<34} P={rep['n_prompts']:<4} mean r {rep['reward_mean']:.3f}  "
        f"oracle share {100 * rep['oracle_share']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]  "
        f"(plug-in {100 * rep['oracle_share_plugin']:.1f}%)  Var(r−b_m)/Var(r) {few}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="a `spo train` config (default: the defaults)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    ap.add_argument("--samples", type=int, default=16, help="K samples per prompt (default 16)")
    ap.add_argument(
        "--mixes",
        default=MIXES.replace(",", ";"),
        help="';'-separated arithmetic mixes to analyse as subsets of the measured levels "
        "(presets or comma lists of levels)",
    )
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--out", default=str(common.RESULTS / "oracle_share.json"))
    ap.add_argument("--append", action="store_true", help="add to the runs of --out")
    args = ap.parse_args(argv)
    if args.config and "=" in args.config:  # overrides only, no config file
        args.overrides.insert(0, args.config)
        args.config = None
    if args.samples < 2:
        ap.error("--samples must be >= 2")
    run = measure(args.config, args.overrides, args.samples)
    run["command"] = "python bench/oracle_share.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    run["machine"] = common.machine(
        "platform", "cpu", "cores", "torch", "load_avg_1m", "git_commit"
    )
    run["analysis"] = analyse(run, args.mixes, args.bootstrap)
    n = len(run["prompts"]) * args.samples
    print(f"{n} samples in {run['seconds']:.0f}s ({run['settings']})")
    for name, rep in run["analysis"].items():
        if name != "levels":
            print(_line(name, rep))
    print(
        "levels: " + ", ".join(f"{k} {v['rate']:.2f}" for k, v in run["analysis"]["levels"].items())
    )
    out = Path(args.out)
    data = {"runs": []}
    if args.append and out.is_file():
        data = json.loads(out.read_text())
    data["note"] = (
        "timings are from a shared 2-core CPU with other jobs running (noisy); the shares "
        "are what matters. analysis.*.oracle_share = Var_x(p)/Var(r) (unbiased ANOVA), "
        "interval = 95% percentile bootstrap over prompts; few_sample_baseline_ratio[m] = "
        "E[(r − mean of m other samples)^2]/Var(r). Recompute with spo.study.oracle."
    )
    data["runs"].append(run)
    common.write_json(out, data)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
