"""Held-out evaluation with the paper's metrics (spec §8).

For each prompt: one greedy response and k sampled ones. Reported: greedy accuracy,
avg@k (mean correctness of the samples), unbiased pass@k for k = 1, 2, 4, ... ≤ k
(Chen et al. 2021), maj@k (correctness of the most frequent extracted final answer), the
share of samples whose final answer could not be extracted, and a per-difficulty
breakdown when the task provides one.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from spo.algo import avg_at_k, maj_at_k, pass_at_k
from spo.models import encode_prompts
from spo.rollout.hf import HFEngine


def _powers_of_two(k: int) -> list[int]:
    out, p = [], 1
    while p <= k:
        out.append(p)
        p *= 2
    if out[-1] != k:
        out.append(k)
    return out


def evaluate_examples(model, tokenizer, task, examples, *, k: int = 4, max_new_tokens: int = 24,
                      temperature: float = 1.0, system_prompt: str | None = None,
                      reward_pool=None, seed: int = 0, greedy: bool = True,
                      batch_size: int = 64) -> dict[str, float]:
    """Evaluate a policy on `examples`; returns a flat dict of metrics (fractions in [0, 1])."""
    from spo.rewards import RewardPool

    own_pool = reward_pool is None
    pool = reward_pool or RewardPool(task.verifier)
    try:
        prompt_ids = encode_prompts(tokenizer, [ex.prompt for ex in examples],
                                    system_prompt=system_prompt)
        out: dict[str, float] = {"n_prompts": len(examples)}
        correct_EK = None
        if k > 0:
            engine = HFEngine(model, tokenizer, max_new_tokens=max_new_tokens,
                              temperature=temperature, batch_size=batch_size)
            rep = [p for p in prompt_ids for _ in range(k)]
            ex_rep = [ex for ex in examples for _ in range(k)]
            texts = engine.generate(rep, seed=seed).texts
            correct_EK = (np.asarray(pool(texts, ex_rep).reward_B) >= 0.5).reshape(-1, k)
            answers_EK = np.array([task.extract_answer(t) for t in texts],
                                  dtype=object).reshape(-1, k)
            out[f"avg@{k}"] = float(avg_at_k(correct_EK))
            n_correct = correct_EK.sum(1)
            for kk in _powers_of_two(k):
                out[f"pass@{kk}"] = float(np.mean(pass_at_k(k, n_correct, kk)))
            out[f"maj@{k}"] = float(np.mean([maj_at_k(list(a), list(c), k)
                                              for a, c in zip(answers_EK, correct_EK)]))
            out["extract_fail"] = float(np.mean(answers_EK == None))  # noqa: E711
        if greedy:
            engine0 = HFEngine(model, tokenizer, max_new_tokens=max_new_tokens, temperature=0.0,
                               batch_size=batch_size)
            texts0 = engine0.generate(prompt_ids, seed=seed).texts
            greedy_E = np.asarray(pool(texts0, list(examples)).reward_B) >= 0.5
            out["greedy"] = float(greedy_E.mean())
        by_level: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(examples):
            if "difficulty" in ex.meta:
                by_level[str(ex.meta["difficulty"])].append(i)
        for level, rows in sorted(by_level.items()):
            if correct_EK is not None:
                out[f"avg@{k}/difficulty={level}"] = float(correct_EK[rows].mean())
        return out
    finally:
        if own_pool:
            pool.close()
