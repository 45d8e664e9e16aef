"""AdamW over fp32 master weights for a model that computes in bf16.

bf16 keeps 8 bits of mantissa: an update smaller than ~2^-9 of a weight rounds away, and
with lr ~1e-5 almost every AdamW update (of size ~lr) is that small, so plain AdamW on
bf16 parameters silently stops learning. Here every low-precision parameter gets an fp32
master copy; gradients are upcast, clipped by their global norm, AdamW
(Loshchilov & Hutter 2019, decoupled weight decay) updates the masters, and the masters
are rounded back into the model. fp32 parameters are their own masters (plain AdamW).

    g = grad * min(1, max_grad_norm / (||grad||_2 + 1e-6))    (as torch clip_grad_norm_)
    master <- AdamW(master, g);  param <- bf16(master)

A step whose gradient norm is not finite is skipped (masters and moments untouched) and
its norm returned, so one bad batch cannot poison the weights of a long run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


class MasterWeightAdamW:
    """AdamW with fp32 masters for bf16/fp16 parameters; fp32 parameters pass through."""

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
    ):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("MasterWeightAdamW got no parameters to optimise")
        self.max_grad_norm = max_grad_norm
        self.masters = [
            p if p.dtype == torch.float32 else p.detach().float().clone().requires_grad_(True)
            for p in self.params
        ]
        # fused: one kernel pass over all moments (CPU and CUDA), faster than the loop.
        self.inner = torch.optim.AdamW(
            self.masters, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True
        )

    @property
    def param_groups(self) -> list[dict]:
        """The inner AdamW's groups (set `group["lr"]` here to schedule the learning rate)."""
        return self.inner.param_groups

    def step(self) -> float:
        """Clip, update the masters, write them back; returns the pre-clip gradient norm."""
        pairs = [
            (p, m) for p, m in zip(self.params, self.masters, strict=True) if p.grad is not None
        ]
        for p, m in pairs:
            if m is not p:
                m.grad = p.grad.float()
        grads = [m.grad for _, m in pairs]
        norm = self.grad_norm(grads)
        if not math.isfinite(norm):
            self.zero_grad()
            return norm
        if self.max_grad_norm is not None and self.max_grad_norm > 0:
            coef = self.max_grad_norm / (norm + 1e-6)
            if coef < 1.0:
                torch._foreach_mul_(grads, coef)
        self.inner.step()
        with torch.no_grad():
            for p, m in pairs:
                if m is not p:
                    p.copy_(m)
        self.zero_grad()
        return norm

    def grad_norm(self, grads: list[Tensor]) -> float:
        """Global L2 norm of `grads` (a sharded optimizer overrides this to reduce it)."""
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def zero_grad(self) -> None:
        for p, m in zip(self.params, self.masters, strict=True):
            p.grad = None
            m.grad = None

    def state_dict(self) -> dict:
        """AdamW state plus the fp32 masters (the bf16 weights alone cannot restore them)."""
        return {
            "inner": self.inner.state_dict(),
            "masters": {
                i: m.detach().clone()
                for i, (p, m) in enumerate(zip(self.params, self.masters, strict=True))
                if m is not p
            },
        }

    def load_state_dict(self, state: dict) -> None:
        masters = state["masters"]
        expected = {
            i for i, (p, m) in enumerate(zip(self.params, self.masters, strict=True)) if m is not p
        }
        if set(masters) != expected:
            raise ValueError(
                f"optimizer state holds {len(masters)} master weights but this model needs "
                f"{len(expected)}: it belongs to a different model or dtype"
            )
        with torch.no_grad():
            for i, saved in masters.items():
                if saved.shape != self.masters[i].shape:
                    raise ValueError(
                        f"optimizer master {i} has shape {tuple(saved.shape)}, the model's "
                        f"parameter has {tuple(self.masters[i].shape)}"
                    )
                self.masters[i].copy_(saved)
                self.params[i].copy_(saved)
        self.inner.load_state_dict(state["inner"])
