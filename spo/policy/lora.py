"""LoRA adapters via peft (`model.lora.r > 0`): only the adapters train.

`apply_lora` wraps a loaded policy in a peft model whose base weights are frozen, so the
trainer's optimizer (it takes parameters with requires_grad) sees only the adapters.
Checkpoints of a peft model hold the adapter alone (adapter_config.json records the base
model directory); `spo.policy.models.load_policy` loads such a directory back onto its base,
which is how resume and `spo eval` read them. Engines receive adapter-only weights
(`spo.policy.weights.policy_weights`).
"""

from __future__ import annotations

from typing import Any

import torch


def lora_kwargs(lora: Any) -> dict:
    """peft.LoraConfig keyword arguments from the `model.lora` config section."""
    return {
        "r": int(lora.r),
        "lora_alpha": float(lora.alpha),
        "lora_dropout": float(lora.dropout),
        "target_modules": list(lora.target_modules),
    }


def apply_lora(model, lora: Any, *, seed: int = 0):
    """`model` with trainable LoRA adapters on `lora.target_modules` (base frozen).

    peft draws the A matrices from the global torch RNG; they are drawn here under
    `seed` inside a forked RNG, so a run's adapters are reproducible and the caller's RNG
    is untouched."""
    from spo.policy.models import ModelError

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("model.lora.r > 0 needs peft: pip install 'spo-rl[lora]'") from None
    try:
        config = LoraConfig(task_type="CAUSAL_LM", bias="none", **lora_kwargs(lora))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_peft_model(model, config)
    except ValueError as e:
        raise ModelError(f"model.lora: {str(e).splitlines()[0]}") from None
