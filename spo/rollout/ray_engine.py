"""Rollout workers as Ray actors (`cluster.mode=ray`; `pip install 'spo-rl[ray]'`).

`cluster.rollout_workers` actors each load the policy from `model.path` (a directory every
node can read; nothing is downloaded), wrap it in the engine `rollout.engine` names (HF
on CPU or GPU, or vLLM with `cluster.gpus_per_worker=1`) and generate one shard of each
step's prompts (`spo.rollout.shard`: contiguous slices, seed per shard), in parallel; a
call's `SamplingSettings` travel with its shards (evaluation samples on the actors too).
The driver keeps the tracker, the sampler and the trainer; after each update it puts the
policy weights into the Ray object store once (adapters only with LoRA) and every actor
loads them before it generates again. Because the shards and their seeds are the ones
`ShardedEngine` uses in local mode, `cluster=ray` reproduces a local run bit for bit
(same weights, same kernels, same thread count).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spo.rollout import EngineError, Rollouts, SamplingSettings
from spo.rollout.shard import concat_rollouts, shard_bounds, shard_seed


def import_ray():
    try:
        import ray
    except ImportError:
        raise EngineError(
            "cluster.mode=ray needs the ray package: pip install 'spo-rl[ray]' "
            "(or use cluster.mode=local)"
        ) from None
    return ray


def worker_runtime_env() -> dict:
    """Lets actors import this very `spo` (a source checkout need not be installed); on a
    multi-node cluster install spo-rl on every node instead."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def connect(cluster: Any):
    """The ray module, initialised for `cluster.address` (join a running cluster, or
    start a private one here when None) unless the caller already did."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(
            address=cluster.address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env=worker_runtime_env(),
        )
    return ray


class RolloutWorker:
    """Body of one Ray actor: a policy copy and a local engine (see the module docstring)."""

    def __init__(self, cfg: Any, model_path: str, lora_dir: str | None):
        from spo.policy.models import load_policy
        from spo.rollout.local import make_local_engine

        torch.set_num_threads(cfg.threads or max(1, int(cfg.cluster.cpus_per_worker)))
        model, tokenizer = (None, None)
        if cfg.rollout.engine == "hf":
            model, tokenizer = load_policy(model_path, dtype=cfg.model.dtype)
            if cfg.model.lora.r:
                from spo.policy.lora import apply_lora

                model = apply_lora(model, cfg.model.lora, seed=cfg.seed)
            if torch.cuda.is_available() and cfg.cluster.gpus_per_worker > 0:
                model = model.cuda()
        else:
            from transformers import AutoTokenizer

            from spo.policy.models import resolve_model_path

            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_path))
        self.engine = make_local_engine(
            cfg, model, tokenizer, model_path=model_path, lora_dir=lora_dir
        )

    def generate(
        self, prompt_tokens: list[list[int]], seed: int, sampling: SamplingSettings | None = None
    ) -> Rollouts:
        return self.engine.generate(prompt_tokens, seed=seed, sampling=sampling)

    def sync_weights(self, weights: Mapping[str, Tensor]) -> None:
        self.engine.sync_weights(weights)


class RayEngine:
    """Shards each generate call over Ray actors; see the module docstring."""

    def __init__(self, cfg: Any, *, model_path: str, lora_dir: str | None = None):
        c = cfg.cluster
        ray = self.ray = connect(c)
        actor = ray.remote(RolloutWorker).options(
            num_cpus=c.cpus_per_worker, num_gpus=c.gpus_per_worker
        )
        self.workers = [
            actor.remote(cfg, model_path, f"{lora_dir}/worker{k}" if lora_dir else None)
            for k in range(c.rollout_workers)
        ]

    def generate(
        self, prompt_tokens: list[list[int]], *, seed: int, sampling: SamplingSettings | None = None
    ) -> Rollouts:
        bounds = shard_bounds(len(prompt_tokens), len(self.workers))
        futures = [
            self.workers[k].generate.remote(prompt_tokens[lo:hi], shard_seed(seed, k), sampling)
            for k, (lo, hi) in enumerate(bounds)
        ]
        return concat_rollouts(self.ray.get(futures))

    def sync_weights(self, policy: nn.Module | Mapping[str, Tensor]) -> None:
        from spo.policy.weights import policy_weights

        weights = policy_weights(policy) if isinstance(policy, nn.Module) else dict(policy)
        ref = self.ray.put(weights)  # once; every actor reads the same object
        self.ray.get([w.sync_weights.remote(ref) for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
