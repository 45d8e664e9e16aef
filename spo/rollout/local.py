"""Config -> the one rollout engine of this process (`rollout.engine`: hf | vllm).

`spo.rollout.factory.make_engine` wraps it for a whole run (shards, Ray actors); Ray actors
call it to build their own engine.
"""

from __future__ import annotations

from typing import Any


def make_local_engine(cfg: Any, model, tokenizer, *, model_path: str, lora_dir: str | None = None):
    """The engine named by `cfg.rollout.engine`, in this process. `cfg` is a TrainConfig;
    `model` is the policy (the HF engine samples from it directly; vLLM loads
    `model_path` and is synced from it)."""
    r = cfg.rollout
    if r.engine == "hf":
        from spo.rollout.hf import HFEngine

        return HFEngine(
            model,
            tokenizer,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            batch_size=r.batch_size,
        )
    if r.engine == "vllm":
        from spo.policy.lora import lora_kwargs
        from spo.rollout.vllm_engine import VLLMEngine

        v = r.vllm
        return VLLMEngine(
            model_path,
            tokenizer,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            dtype=cfg.model.dtype,
            seed=cfg.seed,
            gpu_memory_utilization=v.gpu_memory_utilization,
            tensor_parallel_size=v.tensor_parallel_size,
            max_model_len=v.max_model_len,
            enforce_eager=v.enforce_eager,
            lora=lora_kwargs(cfg.model.lora) if cfg.model.lora.r else None,
            lora_dir=lora_dir,
        )
    raise ValueError(f"unknown rollout.engine {r.engine!r}; choose hf or vllm")
