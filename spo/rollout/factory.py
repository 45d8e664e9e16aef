"""Config -> rollout engine: `rollout.engine` picks hf | vllm, `cluster.*` where it runs.

cluster.mode=local, rollout_workers=1   the engine itself, in this process
cluster.mode=local, rollout_workers=W   ShardedEngine: W shards in turn, same results as Ray
cluster.mode=ray                        RayEngine: W actors, each with its own engine
"""

from __future__ import annotations

from typing import Any

from spo.rollout import RolloutEngine
from spo.rollout.shard import ShardedEngine


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
        from spo.lora import lora_kwargs
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


def make_engine(
    cfg: Any, model, tokenizer, *, model_path: str, lora_dir: str | None = None
) -> RolloutEngine:
    """The engine for a whole run (see the module docstring)."""
    c = cfg.cluster
    if c.mode == "ray":
        from spo.rollout.ray_engine import RayEngine

        return RayEngine(cfg, model_path=model_path, lora_dir=lora_dir)
    engine = make_local_engine(cfg, model, tokenizer, model_path=model_path, lora_dir=lora_dir)
    return engine if c.rollout_workers == 1 else ShardedEngine(engine, c.rollout_workers)
