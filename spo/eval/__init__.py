"""Held-out evaluation with the paper's metrics (spec §8): sample and score a policy.

For each held-out prompt: one greedy response and k sampled ones (at the run's rollout
temperature / top_p), drawn through the run's configured rollout engine (HF, vLLM,
sharded or Ray actors) with per-call `spo.rollout.SamplingSettings`, or through an
`HFEngine` when given a bare model. A sample is correct when its reward is >= 0.5. Reported:

    greedy     accuracy of the greedy response
    avg@k      mean correctness of the k samples (reward_mean: their mean raw reward)
    pass@j     unbiased 1 − C(k−c, j)/C(k, j) for j = 1, 2, 4, ... <= k, and j = k
               (Chen et al. 2021; `spo.algo.pass_at_k`, product form)
    maj@k      correctness of the most frequent extracted final answer among the k
               samples (`spo.algo.maj_at_k`: failed extractions never win)
    extract_fail         share of samples whose final answer could not be extracted
    tools/*              with tool use (`episodes`): `spo.rollout.multiturn.tool_stats` of
                         the k sampled episodes (greedy ones when k = 0): turns per
                         episode, tool-call rate, episodes with calls, code ran ok, ...
    <metric>/difficulty=<d>   the same per difficulty level when the task has one;
                         structured levels read <metric>/num_terms=2-6,num_digits=1-4

The `spo eval` command (`spo.commands.eval`) takes a model directory, the embedded
model, one checkpoint, or a run directory (every complete checkpoint plus the initial
model as step 0, giving accuracy vs step / samples / wall-clock); the run's saved config
supplies the task and sampling settings, `key=value` overrides change them. All models
are sampled with the same seed (common random numbers), so differences between
checkpoints are not sampling noise of the evaluation's own RNG. `--calibration n` also
draws n fresh samples on training prompts with the newest checkpoint and compares them
with its tracker's v̂ (`spo.train.diagnostics.calibration`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from spo.algo import maj_at_k, pass_at_k

CORRECT_AT = 0.5


# --------------------------------------------------------------------------- metrics
def budgets(k: int) -> list[int]:
    """pass@j budgets: powers of two <= k, plus k itself."""
    out, p = [], 1
    while p <= k:
        out.append(p)
        p *= 2
    if out[-1] != k:
        out.append(k)
    return out


def _metrics(reward_EK, answers_EK, greedy_reward_E) -> dict[str, float]:
    rows = reward_EK if reward_EK is not None else greedy_reward_E
    out: dict[str, float] = {"n_prompts": float(len(rows))}
    if reward_EK is not None and reward_EK.shape[1] > 0:
        k = reward_EK.shape[1]
        correct_EK = reward_EK >= CORRECT_AT
        out[f"avg@{k}"] = float(correct_EK.mean())
        out["reward_mean"] = float(reward_EK.mean())
        c_E = correct_EK.sum(1)
        for j in budgets(k):
            out[f"pass@{j}"] = float(np.mean(pass_at_k(k, c_E, j)))
        out[f"maj@{k}"] = float(
            np.mean([maj_at_k(list(a), c, k) for a, c in zip(answers_EK, correct_EK, strict=True)])
        )
        out["extract_fail"] = float(np.mean([a is None for a in answers_EK.ravel()]))
    if greedy_reward_E is not None:
        out["greedy"] = float(np.mean(greedy_reward_E >= CORRECT_AT))
    return out


def summarize(
    reward_EK=None, answers_EK=None, greedy_reward_E=None, difficulty_E=None
) -> dict[str, float]:
    """Flat metrics dict from per-sample rewards; see the module docstring.

    reward_EK: (E, k) rewards of k samples per prompt (or None: greedy only);
    answers_EK: (E, k) extracted answers, None = failed; greedy_reward_E: (E,) or None;
    difficulty_E: (E,) level labels or None. Fractions in [0, 1].
    """
    if reward_EK is not None:
        reward_EK = np.asarray(reward_EK, dtype=np.float64)
        answers_EK = np.asarray(answers_EK, dtype=object).reshape(reward_EK.shape)
    if greedy_reward_E is not None:
        greedy_reward_E = np.asarray(greedy_reward_E, dtype=np.float64)
    out = _metrics(reward_EK, answers_EK, greedy_reward_E)
    if difficulty_E is None:
        return out
    rows_by_level: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(difficulty_E):
        if d is not None:
            rows_by_level[level_suffix(d)].append(i)
    for level in sorted(rows_by_level, key=level_sort_key):
        rows = rows_by_level[level]
        sub = _metrics(
            None if reward_EK is None else reward_EK[rows],
            None if answers_EK is None else answers_EK[rows],
            None if greedy_reward_E is None else greedy_reward_E[rows],
        )
        out.update({f"{key}/{level}": v for key, v in sub.items()})
    return out


def level_suffix(difficulty) -> str:
    """The metric-key suffix of a difficulty level, readable and stable across runs:
    "difficulty=add2" for a plain label; for structured metadata (reasoning-gym's ranges)
    its fields in order, ranges as lo-hi: "num_terms=2-6,num_digits=1-4"."""
    if isinstance(difficulty, dict):
        return ",".join(f"{k}={_plain(v)}" for k, v in difficulty.items())
    return f"difficulty={_plain(difficulty)}"


def _plain(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return "(" + ",".join(f"{k}={_plain(v)}" for k, v in value.items()) + ")"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).replace("/", "_")  # "/" separates TensorBoard groups


def split_level_key(key: str) -> tuple[str, str] | None:
    """("avg@4", "difficulty=add2") from "avg@4/difficulty=add2"; None for overall keys."""
    metric, sep, level = key.partition("/")
    return (metric, level) if sep and "=" in level else None


def level_name(level: str) -> str:
    return level.removeprefix("difficulty=")


def level_sort_key(level: str):
    name = level_name(level)
    return (0, float(name), name) if name.replace(".", "", 1).isdigit() else (1, 0.0, name)


# ------------------------------------------------------------------------ sampling
@dataclass
class EvalSamples:
    """What a policy produced on E prompts: k samples each and (optionally) greedy."""

    texts_EK: list[list[str]]
    reward_EK: np.ndarray  # (E, k) float
    answers_EK: np.ndarray  # (E, k) object, None = extraction failed
    greedy_texts_E: list[str] | None = None
    greedy_reward_E: np.ndarray | None = None  # (E,)
    episodes_EK: list[list] | None = None  # with tool use: the k episodes (multiturn.Sample)
    greedy_episodes_E: list | None = None

    def tool_metrics(self) -> dict[str, float]:
        """tools/* of the sampled episodes (greedy ones when there are none); {} without."""
        from spo.rollout.multiturn import tool_stats

        sampled = [s for row in self.episodes_EK or [] for s in row]
        episodes = sampled or self.greedy_episodes_E or []
        return tool_stats(episodes) if episodes else {}


def generate_samples(
    policy,
    tokenizer,
    task,
    examples,
    *,
    k: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    system_prompt: str | None = None,
    fewshot=(),
    reward_pool,
    seed: int = 0,
    greedy: bool = True,
    batch_size: int = 64,
    episodes=None,
) -> EvalSamples:
    """k sampled (+ one greedy) responses per example, scored by `reward_pool`.

    `policy` is a `spo.rollout.RolloutEngine` (the run's configured engine: HF, vLLM,
    sharded, Ray actors), asked for these settings per call, or a Hugging Face model,
    sampled here by an `HFEngine` of `batch_size` rows. The k samples are one call with
    n=k, the greedy responses another, both with `seed`. `episodes`
    (`spo.rollout.multiturn.Episodes`): each response is a tool-using episode.
    """
    from spo.policy.models import encode_prompts
    from spo.rollout import SamplingSettings
    from spo.rollout.multiturn import sample_texts

    examples = list(examples)
    E = len(examples)
    engine = _engine(policy, tokenizer, max_new_tokens, batch_size)
    prompt_tokens = encode_prompts(
        tokenizer, [ex.prompt for ex in examples], system_prompt=system_prompt, fewshot=fewshot
    )
    texts_EK: list[list[str]] = [[] for _ in range(E)]
    reward_EK = np.zeros((E, k))
    episodes_EK = None
    if k > 0 and E:
        sampled = SamplingSettings(temperature, top_p, max_new_tokens, n=k)
        texts, done = sample_texts(
            engine, prompt_tokens, seed=seed, sampling=sampled, episodes=episodes
        )
        if done is not None:
            episodes_EK = [done[i * k : (i + 1) * k] for i in range(E)]
        ex_rep = [ex for ex in examples for _ in range(k)]
        reward_EK = np.asarray(reward_pool(texts, ex_rep).reward_B, np.float64).reshape(E, k)
        texts_EK = [texts[i * k : (i + 1) * k] for i in range(E)]
    answers_EK = np.empty((E, k), dtype=object)
    for i, row in enumerate(texts_EK):
        for j, text in enumerate(row):
            answers_EK[i, j] = task.extract_answer(text)
    out = EvalSamples(
        texts_EK=texts_EK, reward_EK=reward_EK, answers_EK=answers_EK, episodes_EK=episodes_EK
    )
    if greedy and E:
        argmax = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
        out.greedy_texts_E, out.greedy_episodes_E = sample_texts(
            engine, prompt_tokens, seed=seed, sampling=argmax, episodes=episodes
        )
        out.greedy_reward_E = np.asarray(
            reward_pool(out.greedy_texts_E, examples).reward_B, np.float64
        )
    return out


def _engine(policy, tokenizer, max_new_tokens: int, batch_size: int):
    """`policy` itself when it is an engine; an `HFEngine` over it when it is a model."""
    from torch import nn

    if not isinstance(policy, nn.Module):
        return policy
    from spo.rollout.hf import HFEngine

    return HFEngine(policy, tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size)


def difficulties(examples) -> list | None:
    """meta["difficulty"] per example, or None when no example has one."""
    levels = [ex.meta.get("difficulty") for ex in examples]
    return levels if any(d is not None for d in levels) else None


def evaluate_examples(policy, tokenizer, task, examples, **settings) -> dict[str, float]:
    """Evaluate a policy (an engine or a model, see `generate_samples`) on `examples`;
    returns a flat dict of metrics (fractions in [0, 1]). `settings`: those of
    `evaluate_with_samples` (k, max_new_tokens, temperature, ...)."""
    return evaluate_with_samples(policy, tokenizer, task, examples, **settings)[0]


def evaluate_with_samples(
    policy,
    tokenizer,
    task,
    examples,
    *,
    k: int = 4,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    system_prompt: str | None = None,
    fewshot=(),
    reward_pool=None,
    seed: int = 0,
    greedy: bool = True,
    batch_size: int = 64,
    top_p: float = 1.0,
    episodes=None,
) -> tuple[dict[str, float], EvalSamples]:
    """Metrics of a policy on `examples` (see `evaluate_examples`) and what it wrote."""
    from spo.tasks.rewards import RewardPool

    own_pool = reward_pool is None
    pool = reward_pool or RewardPool(task.verifier)
    try:
        s = generate_samples(
            policy,
            tokenizer,
            task,
            examples,
            k=k,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            system_prompt=system_prompt,
            fewshot=fewshot,
            reward_pool=pool,
            seed=seed,
            greedy=greedy,
            batch_size=batch_size,
            episodes=episodes,
        )
    finally:
        if own_pool:
            pool.close()
    metrics = summarize(
        s.reward_EK if k > 0 else None, s.answers_EK, s.greedy_reward_E, difficulties(examples)
    )
    metrics.update(s.tool_metrics())
    return metrics, s
