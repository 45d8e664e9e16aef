"""Does evaluation give the same numbers before and after a code change? Run this script
with PYTHONPATH pointing at each checkout, then compare the two JSON files bit for bit.

    PYTHONPATH=OLD python bench/eval_identity.py --out old.json [--smollm]
    PYTHONPATH=NEW python bench/eval_identity.py --out new.json [--smollm]
    python bench/eval_identity.py --compare old.json new.json

What it records (JSON floats round-trip exactly, texts verbatim):
  tiny/bs64, tiny/bs8   the tiny random model of tests/conftest.py on a text-scored task:
                        Trainer.evaluate(k=4) at step 0 and after one train step (the
                        metrics and the eval rows of samples.jsonl), and
                        spo.eval.evaluate_with_samples(model, ...) (every text, greedy
                        too); rollout.batch_size 64 (the default) and 8
  smollm (--smollm)     the embedded SmolLM2-135M on 32 held-out arithmetic prompts:
                        Trainer.evaluate(k=4) at step 0 (slow on a shared CPU)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import tiny_task


def _trainer_eval(overrides: list[str], *, train_step: bool) -> dict:
    from spo.train.config import load_config
    from spo.train.trainer import Trainer

    trainer = Trainer(load_config(None, overrides))
    try:
        out = {"step0": trainer.evaluate(k=4)}
        if train_step:
            trainer.train_step()
            out["step1"] = trainer.evaluate(k=4)
        out["samples"] = (trainer.run_dir / "samples.jsonl").read_text().splitlines()
        return out
    finally:
        trainer.close()


def _library_eval(model_dir: Path, task_kwargs: dict, batch_size: int) -> dict:
    from spo.eval import evaluate_with_samples
    from spo.policy.models import load_policy
    from spo.tasks import load_task

    task = load_task(**task_kwargs)
    model, tokenizer = load_policy(str(model_dir), dtype="bfloat16")
    metrics, s = evaluate_with_samples(
        model, tokenizer, task, task.test, k=4, max_new_tokens=8, seed=3, batch_size=batch_size
    )
    return {"metrics": metrics, "texts": s.texts_EK, "greedy": s.greedy_texts_E}


def record() -> dict:
    import torch

    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = tiny_task(tmp)
        model_dir = tiny["model_dir"]
        task = {"name": tiny["name"], "reward_fn": tiny["reward_fn"]}
        for bs in (64, 8):
            overrides = [
                f"model.path={model_dir}",
                f"task.name={task['name']}",
                f"task.reward_fn={task['reward_fn']}",
                "task.train_size=24",
                "task.test_size=12",
                "eval_size=12",
                "samples_per_step=8",
                "rollout.max_new_tokens=8",
                f"rollout.batch_size={bs}",
                "reward.workers=0",
                "log.tensorboard=false",
                "log.progress=false",
                "optim.micro_batch_size=4",
                "optim.lr=1e-3",
                "threads=1",
                f"run_dir={tmp / f'run{bs}'}",
            ]
            out[f"tiny/bs{bs}"] = {
                "trainer": _trainer_eval(overrides, train_step=True),
                "library": _library_eval(
                    model_dir,
                    {
                        "name": task["name"],
                        "reward_fn": task["reward_fn"],
                        "test_size": 12,
                        "train_size": 24,
                    },
                    bs,
                ),
            }
    return out


def record_smollm() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            "task.test_size=32",
            "eval_size=32",
            "log.tensorboard=false",
            "log.progress=false",
            "reward.workers=0",
            f"run_dir={tmp}/run",
        ]
        return {"smollm": {"trainer": _trainer_eval(overrides, train_step=False)}}


def compare(a: dict, b: dict, path: str = "") -> list[str]:
    """Every leaf that differs (exact equality; floats compared as Python floats)."""
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = [f"{path}/{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            diffs += compare(a[k], b[k], f"{path}/{k}")
        return diffs
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in compare(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the record here")
    parser.add_argument("--smollm", action="store_true", help="also the embedded SmolLM2-135M")
    parser.add_argument("--compare", nargs=2, metavar="JSON", help="compare two records")
    args = parser.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        a.pop("spo"), b.pop("spo")  # where each record's code came from
        diffs = compare(a, b)
        print("\n".join(diffs[:40]) or "identical")
        print(f"{len(diffs)} differing values of {sum(1 for _ in _leaves(a))}")
        return 1 if diffs else 0
    out = {"spo": __import__("spo").__file__, **record()}
    if args.smollm:
        out.update(record_smollm())
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


def _leaves(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v)
    else:
        yield x


if __name__ == "__main__":
    raise SystemExit(main())
