"""Rollout and log-prob speed on the embedded SmolLM2-135M in bf16 (issue 6, deliverable 3).

In one run, interleaved so that other load on the machine hits both sides alike:

1. generation, 64 arithmetic prompts x 64 new tokens, temperature 1.0, top-p 1 (top-k off):
   (a) plain Hugging Face `model.generate`, (b) `spo.rollout.hf.HFEngine`; each in two
   modes: `eos` (rows stop at eos, as in training; tokens = tokens actually returned) and
   `fixed` (every row decodes all 64 tokens, the per-token speed that the roofline
   compares against). Reported: tokens/s and the engine / HF ratio.
2. `completion_logp` forward + backward over the 64 sampled sequences (micro-batches of
   16, as the trainer does) against the naive path (full-vocab logits -> log_softmax ->
   gather), tokens/s and peak resident memory of each.
3. the machine's bf16 matmul FLOP/s (best over a few shapes), and generation / training
   speed as a fraction of that compute bound: 2 * params FLOPs per generated token,
   6 * params per trained token.

Both sides use the same model object (loaded by `load_policy`: bf16, eager attention on
CPU). Wall-clock tokens/s and tokens per CPU-second (process time, all threads) are both
recorded: when other jobs share the 2 cores, the CPU-second figure is the steadier one.

Run from the repository root (takes a few minutes on 2 cores):

    .venv/bin/python bench/generate_speed.py              # writes bench/results/generate_speed.json
    .venv/bin/python bench/generate_speed.py --repeats 1 --out /tmp/quick.json
"""

# ruff: noqa: I001  (`import spo` must precede torch: it sets libgomp's spin count)
from __future__ import annotations

import os

# OpenMP waits: the product's setting (`import spo` sets a short spin, GOMP_SPINCOUNT),
# not a benchmark-only one. Forcing OMP_WAIT_POLICY=PASSIVE here once made the engine
# measure at half its trainer speed (11 s vs 5.6 s for 64 x 64 tokens on an idle machine);
# set it in the environment to compare.
import spo  # noqa: F401  (before torch loads libgomp)

import argparse
import datetime as dt
import json
import random
import statistics
import time

import torch

from common import (
    best_matmul_s,
    command,
    hwm_mib,
    load_avg,
    machine,
    reset_peak_rss,
    rss_mib,
    write_json,
)
from spo.policy.logprobs import completion_logp
from spo.policy.models import DEFAULT_MODEL, encode_prompts, load_policy
from spo.policy.batch import pack
from spo.rollout.hf import HFEngine


def arithmetic_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    digits = [1, 2, 3]
    out = []
    for _ in range(n):
        a = rng.randint(1, 10 ** rng.choice(digits) - 1)
        b = rng.randint(1, 10 ** rng.choice(digits) - 1)
        out.append(f"What is {a} + {b}? Reply with only the number.")
    return out


def matmul_flops(dtype: torch.dtype, m: int, k: int, n: int, reps: int = 10) -> float:
    return 2 * m * k * n / best_matmul_s(dtype, m, k, n, reps=reps)


def hf_generate(model, tokenizer, prompt_tokens, *, max_new_tokens, fixed, seed):
    pad = tokenizer.pad_token_id
    P = max(len(p) for p in prompt_tokens)
    ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompt_tokens])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompt_tokens])
    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if fixed else 0,
            pad_token_id=pad,
        )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    completions = out[:, P:].tolist()
    eos = tokenizer.eos_token_id
    tokens = sum((c.index(eos) + 1) if eos in c else len(c) for c in completions)
    return seconds, cpu, tokens


def engine_generate(engine, prompt_tokens, *, fixed, seed):
    saved = engine.eos_ids
    if fixed:
        engine.eos_ids = []  # benchmark only: decode every row to max_new_tokens
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        out = engine.generate(prompt_tokens, seed=seed)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        engine.eos_ids = saved
    return seconds, cpu, sum(len(c) for c in out.completion_ids), out


def record(runs: dict, key: str, seconds: float, cpu: float, tokens: int) -> None:
    runs.setdefault(key, []).append(
        {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "tokens": tokens,
            "tok_s": tokens / seconds,
            "load": load_avg(),
        }
    )
    print(
        f"  {key:13s} {tokens / seconds:8.1f} tok/s  {tokens / cpu:8.1f} tok/cpu-s "
        f"({tokens} tokens, {seconds:.1f} s, load {load_avg()})",
        flush=True,
    )


def naive_logp(model, batch):
    """Full-vocab logits for every position, log_softmax, gather (what we avoid)."""
    logits = model(
        input_ids=batch.input_ids_BL, attention_mask=batch.attention_mask_BL
    ).logits.float()
    logp_BLV = logits.log_softmax(-1)
    T = batch.completion_mask_BT.shape[1]
    pos_BT = (batch.completion_start_B[:, None] - 1 + torch.arange(T)).clamp(
        max=logits.shape[1] - 1
    )
    lp = logp_BLV.gather(1, pos_BT[..., None].expand(-1, -1, logp_BLV.shape[-1]))
    lp = lp.gather(2, batch.completion_ids_BT[..., None]).squeeze(-1)
    return lp * batch.completion_mask_BT


def train_pass(model, batch, fn, micro: int) -> tuple[float, float]:
    """Forward + backward over the batch in micro-batches; (wall, CPU) seconds."""
    n_tok = float(batch.completion_mask_BT.sum())
    t0, c0 = time.perf_counter(), time.process_time()
    for lo in range(0, len(batch), micro):
        sub = batch.select(torch.arange(lo, min(lo + micro, len(batch))))
        logp = fn(model, sub)
        (-(logp * sub.completion_mask_BT).sum() / n_tok).backward()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.zero_grad(set_to_none=True)
    return seconds, cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-hf", action="store_true", help="engine only (quick iterations)")
    ap.add_argument("--out", default="bench/results/generate_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = load_avg()

    model, tokenizer = load_policy(args.model, dtype="bfloat16")
    n_params = sum(p.numel() for p in model.parameters())
    prompt_tokens = encode_prompts(tokenizer, arithmetic_prompts(args.prompts, args.seed))

    # The compute bound is the best bf16 matmul rate seen over a few shapes (best-of-N
    # timings: with other processes on the cores, any single shape can be unlucky).
    shapes = {
        "2048x2048x2048": (2048, 2048, 2048),
        "4096x576x1536": (4096, 576, 1536),
        f"{args.prompts}x576x1536 (decode)": (args.prompts, 576, 1536),
    }
    gflops = {
        name: max(matmul_flops(torch.bfloat16, *mkn) for _ in range(3)) / 1e9
        for name, mkn in shapes.items()
    }
    peak = max(gflops.values()) * 1e9
    fp32_peak = matmul_flops(torch.float32, 2048, 2048, 2048)
    bound_gen = peak / (2 * n_params)
    print(
        f"bf16 matmul {peak / 1e9:.0f} GFLOP/s (fp32 {fp32_peak / 1e9:.0f}); "
        f"generation bound {bound_gen:.0f} tok/s",
        flush=True,
    )

    engine = HFEngine(
        model, tokenizer, max_new_tokens=args.new_tokens, temperature=1.0, batch_size=args.prompts
    )
    t0 = time.perf_counter()
    engine_generate(engine, prompt_tokens[:2], fixed=False, seed=0)  # warm-up
    warmup_s = time.perf_counter() - t0
    if not args.skip_hf:
        hf_generate(model, tokenizer, prompt_tokens[:2], max_new_tokens=4, fixed=True, seed=0)

    runs: dict[str, list[dict]] = {}
    sample = None
    for rep in range(args.repeats):
        for fixed in (False, True):
            mode = "fixed" if fixed else "eos"
            seed = args.seed + rep
            if not args.skip_hf:
                s, c, n = hf_generate(
                    model,
                    tokenizer,
                    prompt_tokens,
                    fixed=fixed,
                    seed=seed,
                    max_new_tokens=args.new_tokens,
                )
                record(runs, f"hf_{mode}", s, c, n)
            s, c, n, out = engine_generate(engine, prompt_tokens, fixed=fixed, seed=seed)
            record(runs, f"engine_{mode}", s, c, n)
            if fixed and sample is None:
                sample = out

    def summary(key):
        tok_s = [r["tok_s"] for r in runs[key]]
        per_cpu = [r["tokens"] / r["cpu_seconds"] for r in runs[key]]
        return {
            "median_tok_s": round(statistics.median(tok_s), 1),
            "all_tok_s": [round(x, 1) for x in tok_s],
            "median_tok_per_cpu_s": round(statistics.median(per_cpu), 1),
            "median_seconds": round(statistics.median(r["seconds"] for r in runs[key]), 2),
            "tokens": [r["tokens"] for r in runs[key]],
        }

    generation = {k: summary(k) for k in runs}
    for mode in ("eos", "fixed"):
        if f"hf_{mode}" in runs:
            ratios = [
                e["tok_s"] / h["tok_s"]
                for e, h in zip(runs[f"engine_{mode}"], runs[f"hf_{mode}"], strict=True)
            ]
            generation[f"ratio_{mode}"] = {
                "median": round(statistics.median(ratios), 2),
                "all": [round(r, 2) for r in ratios],
            }
    generation["engine_fixed"]["fraction_of_bound"] = round(
        generation["engine_fixed"]["median_tok_s"] / bound_gen, 4
    )
    if "hf_fixed" in generation:
        generation["hf_fixed"]["fraction_of_bound"] = round(
            generation["hf_fixed"]["median_tok_s"] / bound_gen, 4
        )

    # Training-side log-probs on the sampled fixed-length sequences.
    batch = pack(sample.prompt_tokens, sample.completion_ids, pad_id=tokenizer.pad_token_id)
    seq_tokens = int(batch.seq_len_B.sum())
    comp_tokens = int(batch.completion_mask_BT.sum())
    model.train()
    logprob: dict[str, dict] = {}
    methods = (("completion_logp", completion_logp), ("naive_full_logits", naive_logp))
    for _, fn in methods:  # warm-up: first calls pay for allocator growth and kernel setup
        train_pass(model, batch.select(torch.arange(args.micro_batch)), fn, args.micro_batch)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in methods}
    peaks: dict[str, float] = {name: 0.0 for name, _ in methods}
    for _ in range(max(1, args.repeats - 1)):
        for name, fn in methods:  # interleaved, so load changes hit both alike
            reset_peak_rss()
            before = rss_mib()
            times[name].append(train_pass(model, batch, fn, args.micro_batch))
            peaks[name] = max(peaks[name], hwm_mib() - before)
            wall, cpu = times[name][-1]
            print(
                f"  {name:18s} fwd+bwd {wall:.1f} s ({cpu:.1f} CPU s), "
                f"{seq_tokens / wall:.0f} seq tok/s, peak RSS +{peaks[name]:.0f} MB",
                flush=True,
            )
    for name, _ in methods:
        s = statistics.median(w for w, _ in times[name])
        c = statistics.median(c for _, c in times[name])
        logprob[name] = {
            "median_seconds": round(s, 2),
            "median_cpu_seconds": round(c, 2),
            "all_seconds": [round(w, 2) for w, _ in times[name]],
            "sequence_tok_s": round(seq_tokens / s, 1),
            "completion_tok_s": round(comp_tokens / s, 1),
            "fraction_of_bound": round(seq_tokens / s / (peak / (6 * n_params)), 4),
            "peak_rss_above_start_mb": round(peaks[name], 0),
        }
    model.eval()
    logprob["cpu_speedup"] = round(
        logprob["naive_full_logits"]["median_cpu_seconds"]
        / logprob["completion_logp"]["median_cpu_seconds"],
        2,
    )
    logprob["speedup"] = round(
        logprob["naive_full_logits"]["median_seconds"]
        / logprob["completion_logp"]["median_seconds"],
        2,
    )

    result = {
        "command": command(__file__, argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            **machine("cpu", "cores"),
            "threads": args.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_avg_1m_at_start": load_start,
            **machine("load_avg_1m_at_end", "torch", "transformers"),
        },
        "settings": {
            "model": args.model,
            "params": n_params,
            "prompts": args.prompts,
            "new_tokens": args.new_tokens,
            "temperature": 1.0,
            "repeats": args.repeats,
            "micro_batch": args.micro_batch,
            "engine_warmup_s": round(warmup_s, 2),
        },
        "roofline": {
            "bf16_matmul_gflops": {k: round(v, 1) for k, v in gflops.items()},
            "bf16_peak_gflops": round(peak / 1e9, 1),
            "fp32_matmul_gflops_2048": round(fp32_peak / 1e9, 1),
            "generation_bound_tok_s": round(bound_gen, 1),
            "training_bound_tok_s": round(peak / (6 * n_params), 1),
        },
        "notes": [
            "load_avg above the core count means other processes shared the CPU during the "
            "run: wall-clock tok/s then understates both sides and the fraction of the bound; "
            "the interleaved ratios and tok per CPU-second are the comparable numbers.",
            "eos mode: HF and the engine draw different samples, so token counts differ; "
            "fixed mode decodes 64 x 64 tokens on both sides.",
        ],
        "generation": generation,
        "logprob_fwd_bwd": {
            "sequences": len(batch),
            "sequence_tokens": seq_tokens,
            "completion_tokens": comp_tokens,
            **logprob,
        },
    }
    write_json(args.out, result, indent=2)
    print(json.dumps({"generation": generation, "logprob": logprob}, indent=1))


if __name__ == "__main__":
    main()
