"""Measure the embedded model's accuracy on each level of the built-in arithmetic task.

Used to choose the default difficulty mix (docs/tasks.md). For each level: held-out
prompts of that level, one greedy reply and `--samples` sampled replies (temperature 1.0,
top_p 1.0) each, scored by the task's verifier. Prints one JSON line per level and a
summary; per-prompt success rates show the spread (how many prompts are never / always
solved).

    .venv/bin/python docs/calibrate_arithmetic.py --levels all --prompts 144 --samples 8
    .venv/bin/python docs/calibrate_arithmetic.py --levels default --prompts 64 --samples 8
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spo.tasks import Example, load_task
from spo.tasks.arithmetic import MIXES, parse_difficulty

DEFAULT_MODEL = "~/.cache/spo-rl/smollm2-135m-instruct-bf16"


def generate(
    model, tokenizer, prompts: list[str], *, sample: bool, max_new_tokens: int, batch_size: int
) -> list[str]:
    """Replies to `prompts` (chat template, model's default system prompt, left padding)."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    replies: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        options = (
            {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
            if sample
            else {"do_sample": False}
        )
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **options,
            )
        replies += tokenizer.batch_decode(
            out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
    return replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--levels", default="all", help=f"difficulty: a preset ({', '.join(MIXES)}) or comma list"
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=64,
        help="held-out prompts in all, dealt round-robin over the levels",
    )
    parser.add_argument("--samples", type=int, default=8, help="sampled replies per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from pathlib import Path

    path = str(Path(args.model).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()

    levels = parse_difficulty(args.levels)
    mix = ",".join(levels)
    n_levels = len(dict.fromkeys(levels))
    task = load_task(
        "arithmetic", train_size=1, test_size=args.prompts, seed=args.seed, difficulty=mix
    )
    examples: list[Example] = task.test
    start = time.time()
    greedy = generate(
        model,
        tokenizer,
        [ex.prompt for ex in examples],
        sample=False,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    sampled = generate(
        model,
        tokenizer,
        [ex.prompt for ex in examples for _ in range(args.samples)],
        sample=True,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    greedy_E = np.array([task.verifier(r, ex) for r, ex in zip(greedy, examples, strict=True)])
    sampled_EK = np.array(
        [
            task.verifier(sampled[i * args.samples + k], ex)
            for i, ex in enumerate(examples)
            for k in range(args.samples)
        ]
    ).reshape(len(examples), args.samples)

    rows: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        rows[ex.meta["level"]].append(i)

    def summary(name: str, idx: list[int]) -> dict:
        rate_E = sampled_EK[idx].mean(1)
        return {
            "level": name,
            "prompts": len(idx),
            "sampled": round(float(rate_E.mean()), 3),
            "greedy": round(float(greedy_E[idx].mean()), 3),
            "never": int((rate_E == 0).sum()),
            "always": int((rate_E >= 7 / 8).sum()),
            # prompts by number of sampled successes: hist[j] = prompts solved j times of K
            "hist": np.bincount(
                sampled_EK[idx].sum(1).astype(int), minlength=args.samples + 1
            ).tolist(),
        }

    for name in dict.fromkeys(levels):
        print(json.dumps(summary(name, rows[name])))
    overall = summary(f"overall ({args.levels})", list(range(len(examples))))
    overall.update(seconds=round(time.time() - start), samples=args.samples, levels=n_levels)
    print(json.dumps(overall))


if __name__ == "__main__":
    main()
