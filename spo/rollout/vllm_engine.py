"""Rollouts with vLLM on GPU (`rollout.engine=vllm`; `pip install 'spo-rl[vllm]'`).

vLLM is imported lazily, so the rest of spo-rl never needs it. One `generate` call sends
every prompt as token ids with its own `SamplingParams`: temperature, top_p and
max_tokens from the config or the call's `SamplingSettings` (n samples of a prompt are
n rows, each with its own seed), a per-row seed drawn from the step seed (so a prompt's
completion does not depend on which other prompts share the call or the shard), and
`logprobs=0`, which returns the log-prob of the sampled token only. The engine is built
with `logprobs_mode="processed_logprobs"`: log-probs of the tempered distribution the
token was drawn from, the quantity the trainer's `completion_logp` computes (vLLM's
default reports the raw, temperature-1 log-probs).

Weight sync after every update (`sync_weights`): full fine-tuning sends the state dict to
every vLLM worker through `LLM.collective_rpc`, which calls the model's own `load_weights`
(it takes Hugging Face parameter names and handles fused q/k/v and tied embeddings), then
drops the prefix cache (its KV entries were computed by the old weights). With LoRA only
the adapter travels: it is written as a peft adapter directory and the next calls name it
in a fresh `LoRARequest` (a new id, so vLLM cannot serve a cached older adapter).

vLLM's kernels differ from the trainer's, so behaviour log-probs differ from the
trainer's by more than bf16 noise; `loss.tis_cap` turns on the truncated importance
sampling correction (spo.algo.losses.tis_weight).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from spo.rollout import EngineError, Rollouts, SamplingSettings

_MISSING = (
    "rollout.engine=vllm needs the vllm package: pip install 'spo-rl[vllm]' "
    "(or use rollout.engine=hf)"
)
_NO_CUDA = "rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf on this machine"


def import_vllm():
    """The vllm module, or one clear EngineError when it is missing or there is no GPU."""
    try:
        vllm = importlib.import_module("vllm")
    except ImportError:
        raise EngineError(_MISSING) from None
    if not torch.cuda.is_available():
        raise EngineError(_NO_CUDA)
    return vllm


def prompt_seeds(seed: int, n: int) -> list[int]:
    """One independent 31-bit seed per prompt, a pure function of (seed, position)."""
    words = np.random.SeedSequence(int(seed)).generate_state(max(n, 1), dtype=np.uint32)
    return [int(w) & 0x7FFFFFFF for w in words[:n]]


def load_weights_rpc(worker, weights: list[tuple[str, Tensor]]) -> None:
    """Runs inside each vLLM worker (collective_rpc): load HF-named tensors in place."""
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    model.load_weights(weights=weights)


class VLLMEngine:
    """Sampling with vLLM; see the module docstring."""

    def __init__(
        self,
        model_path: str,
        tokenizer,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        dtype: str = "bfloat16",
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        lora: Mapping | None = None,
        lora_dir: str | Path | None = None,
    ):
        vllm = import_vllm()
        self.tokenizer = tokenizer
        self.sampling = SamplingSettings(temperature, top_p, max_new_tokens)
        self.lora = dict(lora) if lora else None  # peft LoraConfig kwargs
        self.lora_dir = Path(lora_dir or "vllm-lora")
        self.lora_version = 0
        self.lora_request = None
        self._sampling_params = vllm.SamplingParams
        # collective_rpc pickles `load_weights_rpc` to the worker processes
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        kwargs = {
            "model": str(model_path),
            "tokenizer": str(model_path),
            "dtype": dtype,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "enforce_eager": enforce_eager,
            "logprobs_mode": "processed_logprobs",
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if self.lora:
            kwargs.update(enable_lora=True, max_lora_rank=int(self.lora["r"]), max_loras=1)
        self.llm = vllm.LLM(**kwargs)

    def sampling_params(self, seed: int, sampling: SamplingSettings | None = None):
        """vLLM's SamplingParams for one row: `sampling` over the engine's settings
        (temperature 0 is vLLM's greedy too)."""
        s = (sampling or SamplingSettings()).over(self.sampling)
        return self._sampling_params(
            n=1,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_new_tokens,
            seed=seed,
            logprobs=0,
        )

    def generate(
        self, prompt_tokens: list[list[int]], *, seed: int, sampling: SamplingSettings | None = None
    ) -> Rollouts:
        sampling = sampling or SamplingSettings()
        prompt_tokens = sampling.repeat(prompt_tokens)  # n rows per prompt, a seed each
        n = len(prompt_tokens)
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_tokens]
        params = [self.sampling_params(s, sampling) for s in prompt_seeds(seed, n)]
        kwargs = {"use_tqdm": False}
        if self.lora_request is not None:
            kwargs["lora_request"] = self.lora_request
        outputs = self.llm.generate(prompts, params, **kwargs)
        if len(outputs) != n:
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {n} prompts")
        completion_ids, logp, finished = [], [], []
        for out in outputs:
            c = out.outputs[0]
            ids = [int(t) for t in c.token_ids]
            if c.logprobs is None or len(c.logprobs) != len(ids):
                raise RuntimeError("vLLM returned no per-token log-probs (logprobs=0 was asked)")
            lp = [float(c.logprobs[t][tok].logprob) for t, tok in enumerate(ids)]
            completion_ids.append(ids)
            logp.append(torch.tensor(lp, dtype=torch.float32))
            finished.append(c.finish_reason == "stop")
        return Rollouts(
            prompt_tokens=[list(p) for p in prompt_tokens],
            completion_ids=completion_ids,
            logp=logp,
            finished=finished,
            texts=self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        )

    def sync_weights(self, policy: nn.Module | Mapping[str, Tensor]) -> None:
        from spo.policy.weights import policy_weights

        weights = policy_weights(policy) if isinstance(policy, nn.Module) else dict(policy)
        if self.lora:
            self._sync_adapter(weights)
            return
        self.llm.collective_rpc(load_weights_rpc, args=(list(weights.items()),))
        self.llm.reset_prefix_cache()

    def _sync_adapter(self, weights: dict[str, Tensor]) -> None:
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        self.lora_version += 1
        path = self.lora_dir / f"v{self.lora_version:06d}"
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in weights.items()}, path / "adapter_model.safetensors"
        )
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none", **self.lora}
        (path / "adapter_config.json").write_text(json.dumps(config))
        self.lora_request = LoRARequest(f"policy-{self.lora_version}", self.lora_version, str(path))
        shutil.rmtree(self.lora_dir / f"v{self.lora_version - 1:06d}", ignore_errors=True)
