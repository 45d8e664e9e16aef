"""The weights an engine needs to mirror the trainer's policy, and loading them.

Full fine-tuning sends the whole state dict; with LoRA (a peft model) only the adapter
tensors travel (a few MB instead of the model), the frozen base is loaded once by each
engine from the same model directory.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def policy_weights(model: nn.Module) -> dict[str, Tensor]:
    """Detached CPU tensors: adapter weights for a peft model, else the full state dict.
    Parameters sharded by FSDP (DTensors) are gathered whole: then every rank of the
    group must call this, in step."""
    if is_peft(model):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
    return {k: _full(v).detach().cpu() for k, v in state.items()}


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # a DTensor shard -> whole


def load_policy_weights(model: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Inverse of `policy_weights` on a model of the same architecture (and adapters)."""
    if is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, dict(weights))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"adapter weights do not fit the model: unexpected {unexpected[:3]}")
        return
    model.load_state_dict(dict(weights), strict=True)
