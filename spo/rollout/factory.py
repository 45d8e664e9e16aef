"""Config -> rollout engine: `rollout.engine` picks hf | vllm, `cluster.*` where it runs.

cluster.mode=local, rollout_workers=1   the engine itself, in this process
cluster.mode=local, rollout_workers=W   ShardedEngine: W shards in turn, same results as Ray
cluster.mode=ray                        RayEngine: W actors, each with its own engine
"""

from __future__ import annotations

from typing import Any

from spo.rollout import RolloutEngine
from spo.rollout.local import make_local_engine
from spo.rollout.shard import ShardedEngine


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
