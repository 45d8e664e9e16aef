"""AdamW over fp32 master weights for a model that computes in bf16.

bf16 keeps 8 bits of mantissa: an update smaller than ~2^-9 of a weight rounds away, and
with lr ~1e-5 almost every AdamW update (of size ~lr) is that small, so plain AdamW on
bf16 parameters silently stops learning. Here every low-precision parameter gets an fp32
master copy; gradients are upcast, clipped by their global norm, AdamW
(Loshchilov & Hutter 2019, decoupled weight decay) updates the masters, and the masters
are rounded back into the model. fp32 parameters are their own masters (plain AdamW).

    g = grad * min(1, max_grad_norm / (||grad||_2 + 1e-6))    (as torch clip_grad_norm_)
    master <- AdamW(master, g);  param <- round_bf16(master)

The rounding back matters as much as the masters. The model's weights start *on* the
bf16 grid (the checkpoint is bf16), so round-to-nearest maps every master that moved by
less than half a bf16 ulp back to the same weight: with lr 2e-5 a weight of magnitude
above ~0.01 does not change at all for several updates, and the model lags fp32
training by most of its movement (bench/results/precision.md). `rounding="stochastic"`
(the default) rounds up with probability equal to the fraction of an ulp the master lies
above the bf16 value below it, so E[param] = master: every update reaches the model in
expectation, the noise it adds scales with how far the master has moved (a weight whose
master sits on the grid never flips), and the random bits come from a generator seeded
by (seed, update index), so runs and resumes stay reproducible and data-parallel ranks
round identically.

A step whose gradient norm is not finite is skipped (masters and moments untouched) and
its norm returned, so one bad batch cannot poison the weights of a long run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from spo.train.config import ROUNDINGS


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def stochastic_round_bf16_(
    dst: Tensor, src: Tensor, generator: torch.Generator, scratch: Tensor | None = None
) -> None:
    """dst (bf16) <- src (fp32), rounded up in magnitude with probability equal to the
    dropped 16 bits' share of an ulp, so E[dst] = src exactly (finite values).

    On the IEEE bit pattern: bf16 is the top 16 bits of fp32, so adding uniform noise in
    [0, 2^16) to the pattern and truncating the low 16 bits carries into the kept bits with
    exactly that probability (sign-magnitude: the same for negative numbers)."""
    n = src.numel()
    if scratch is None or scratch.numel() < n or scratch.device != src.device:
        scratch = torch.empty(n, dtype=torch.int32, device=src.device)
    bits = scratch[:n].view(src.shape)
    bits.random_(0, 1 << 16, generator=generator)
    bits.add_(src.view(torch.int32)).bitwise_and_(-65536)
    dst.copy_(bits.view(torch.float32))


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
        rounding: str = "stochastic",
        seed: int = 0,
    ):
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.rounding, self.seed = rounding, int(seed)
        self.updates = 0  # successful steps so far: with `seed`, picks the rounding bits
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
        self.updates += 1
        self._write_back([(p, m) for p, m in pairs if m is not p])
        self.zero_grad()
        return norm

    @torch.no_grad()
    def _write_back(self, pairs: list[tuple[Tensor, Tensor]]) -> None:
        """Masters -> model weights: stochastic rounding for bf16, nearest otherwise."""
        generator, scratch = None, None
        for p, m in pairs:
            dst, src = _local(p), _local(m)
            if self.rounding == "nearest" or dst.dtype != torch.bfloat16:
                dst.copy_(src)
                continue
            if generator is None:
                generator = torch.Generator(device=src.device)
                generator.manual_seed(self._rounding_seed())
                largest = max(_local(m).numel() for _, m in pairs)
                scratch = torch.empty(largest, dtype=torch.int32, device=src.device)
            stochastic_round_bf16_(dst, src, generator, scratch)

    def _rounding_seed(self) -> int:
        """Seed of this update's rounding bits: the same on every data-parallel rank."""
        return (self.seed * 1_000_003 + self.updates) % (1 << 63)

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
            "updates": self.updates,
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
                # The model's weights come from the checkpoint's own bf16 weights (under
                # stochastic rounding they are not round-to-nearest of the masters).
                self.masters[i].copy_(saved)
        self.inner.load_state_dict(state["inner"])
        self.updates = int(state.get("updates", 0))


def optimizer_from_config(
    params: Iterable[Tensor], cfg, cls: type[MasterWeightAdamW] = MasterWeightAdamW
) -> MasterWeightAdamW:
    """The trainer's optimizer from a `TrainConfig` (`cfg.optim.*` and `cfg.seed`)."""
    o = cfg.optim
    return cls(
        [p for p in params if p.requires_grad],
        lr=o.lr,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
        rounding=o.rounding,
        seed=cfg.seed,
    )
