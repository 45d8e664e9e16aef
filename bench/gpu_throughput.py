"""GPU throughput of a SmolLM2-135M-shaped policy: HF-engine and vLLM generation, train step.

The model is built from `bench/smollm2_135m_config.json` (the embedded model's config)
with random bf16 weights, so nothing is read or downloaded; random weights rarely emit
eos, so every row decodes all `--new-tokens` (the per-token speed). Measured:

1. `spo.rollout.hf.HFEngine.generate`: `--prompts` random prompts of `--prompt-len` tokens,
   tokens/s (median of `--repeats` after a warm-up).
2. one trainer update: `completion_logp` forward + backward over the generated sequences in
   micro-batches of `--micro-batch`, then `MasterWeightAdamW.step` (fp32 masters); seconds
   per update and trained tokens/s.
3. with vLLM importable and CUDA: `vllm.LLM.generate` on the same prompts (token ids in,
   `logprobs=0`, eos ignored), tokens/s, and the time of one full weight sync
   (`collective_rpc` -> `load_weights`, as `spo.rollout.vllm_engine` does).

    python bench/gpu_throughput.py --out bench/results/gpu_throughput_h100.json
    python bench/gpu_throughput.py --device cpu --tiny --out /tmp/gpu_tp.json  # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import command, machine, write_json

from spo.policy.batch import pack
from spo.policy.logprobs import completion_logp
from spo.rollout.hf import HFEngine
from spo.train.optim import MasterWeightAdamW

CONFIG = Path(__file__).with_name("smollm2_135m_config.json")
TINY = {"hidden_size": 72, "intermediate_size": 144, "num_hidden_layers": 2, "head_dim": 8}


class IdTokenizer:
    """What HFEngine needs from a tokenizer when nobody reads the text."""

    def __init__(self, eos_id: int, pad_id: int):
        self.eos_token_id, self.pad_token_id = eos_id, pad_id

    def batch_decode(self, ids, skip_special_tokens=True):
        return [""] * len(ids)


def build_model(tiny: bool, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads(CONFIG.read_text())
    if tiny:
        cfg.update(TINY)
    config = LlamaConfig(**cfg)
    torch.manual_seed(0)
    attn = "sdpa" if device.startswith("cuda") else "eager"
    model = LlamaForCausalLM._from_config(config, attn_implementation=attn)
    return model.to(device=device, dtype=torch.bfloat16).eval(), config


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> tuple[list[float], object]:
    fn()  # warm-up (kernels, caches)
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


def bench_hf(model, config, prompts, args) -> tuple[dict, object]:
    tok = IdTokenizer(config.eos_token_id, config.pad_token_id)
    engine = HFEngine(
        model, tok, max_new_tokens=args.new_tokens, temperature=1.0, batch_size=args.prompts
    )
    times, rollouts = timed(lambda: engine.generate(prompts, seed=0), args.device, args.repeats)
    tokens = sum(len(c) for c in rollouts.completion_ids)
    return {
        "tokens": tokens,
        "seconds": times,
        "tokens_per_s": tokens / statistics.median(times),
    }, rollouts


def bench_train(model, config, rollouts, args) -> dict:
    batch = pack(rollouts.prompt_tokens, rollouts.completion_ids, pad_id=config.pad_token_id)
    optimizer = MasterWeightAdamW(list(model.parameters()), lr=1e-6)
    adv_B = torch.randn(len(batch), device=args.device)

    def update():
        model.train()
        n_tok = float(batch.completion_mask_BT.sum())
        for lo in range(0, len(batch), args.micro_batch):
            sub = batch.select(torch.arange(lo, min(lo + args.micro_batch, len(batch))))
            logp = completion_logp(model, sub)
            mask = sub.completion_mask_BT.to(logp.device)
            loss = -(logp * adv_B[lo : lo + len(sub), None] * mask).sum() / n_tok
            loss.backward()
        optimizer.step()
        model.eval()

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, _ = timed(update, args.device, args.repeats)
    tokens = int(batch.completion_mask_BT.sum())
    out = {
        "sequences": len(batch),
        "completion_tokens": tokens,
        "micro_batch": args.micro_batch,
        "seconds_per_update": times,
        "trained_tokens_per_s": tokens / statistics.median(times),
    }
    if args.device.startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def bench_vllm(model, prompts, args) -> dict:
    try:
        import vllm
    except ImportError:
        return {"skipped": "vllm is not installed"}
    if not args.device.startswith("cuda"):
        return {"skipped": "vllm needs CUDA"}
    from spo.rollout.vllm_engine import load_weights_rpc

    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        t0 = time.perf_counter()
        llm = vllm.LLM(
            model=tmp,
            skip_tokenizer_init=True,
            dtype="bfloat16",
            gpu_memory_utilization=args.vllm_memory,
            max_model_len=args.prompt_len + args.new_tokens + 8,
            seed=0,
        )
        startup = time.perf_counter() - t0
        params = vllm.SamplingParams(
            temperature=1.0,
            max_tokens=args.new_tokens,
            ignore_eos=True,
            logprobs=0,
            detokenize=False,
        )
        requests = [{"prompt_token_ids": p} for p in prompts]
        times, outs = timed(
            lambda: llm.generate(requests, params, use_tqdm=False), args.device, args.repeats
        )
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        weights = [(k, v.detach()) for k, v in model.state_dict().items()]
        sync_times, _ = timed(
            lambda: llm.collective_rpc(load_weights_rpc, args=(weights,)), args.device, args.repeats
        )
    return {
        "version": vllm.__version__,
        "startup_s": startup,
        "tokens": tokens,
        "seconds": times,
        "tokens_per_s": tokens / statistics.median(times),
        "weight_sync_s": sync_times,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="where to write the result JSON")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="2-layer 64-wide model: a smoke test")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vllm-memory", type=float, default=0.4, help="vLLM gpu_memory_utilization")
    ap.add_argument("--no-vllm", action="store_true")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available (use --device cpu --tiny to smoke-test)")

    model, config = build_model(args.tiny, args.device)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, config.vocab_size, (args.prompts, args.prompt_len), generator=g)
    prompts = prompts.tolist()
    hf, rollouts = bench_hf(model, config, prompts, args)
    result = {
        "command": command(__file__, argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            **machine("python", "torch"),
            "cpu_threads": torch.get_num_threads(),
        },
        "model": {
            "config": "tiny" if args.tiny else CONFIG.name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": "bfloat16",
        },
        "workload": {
            "prompts": args.prompts,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
        },
        "hf_engine": hf,
        "train_update": bench_train(model, config, rollouts, args),
        "vllm": {"skipped": "--no-vllm"} if args.no_vllm else bench_vllm(model, prompts, args),
    }
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("hf_engine", "train_update", "vllm")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
