"""PPO-clip policy loss with clip-higher and dual clip (spo-spec.md §6).

    ratio = exp(logp − old_logp)
    loss_tok = −min(ratio·Ã, clip(ratio, 1 − ε_low, 1 + ε_high)·Ã)        ε_low 0.2, ε_high 0.28
    Ã < 0:  loss_tok = min(loss_tok, −c·Ã)                                   dual clip c = 10

aggregated over response tokens (`agg`):
    token-mean            Σ_bt m·ℓ / Σ_bt m                    (the spec's default)
    seq-mean-token-sum    Σ_b (Σ_t m·ℓ) / #rows-with-tokens
    seq-mean-token-mean   Σ_b (Σ_t m·ℓ / Σ_t m) / #rows-with-tokens

No KL term, no entropy bonus. Ã is one value per sequence (`adv_B`, broadcast over its
tokens); a per-token `adv_BT` (B, T) is accepted too.

Where we deviate from verl and why: rows without any response token are left out of the
seq-mean denominators (verl counts them, so padding rows would change the loss), and
padded positions are masked with `where`, not multiplied, so garbage log-probs there
(−inf, NaN) can neither leak into the loss nor produce NaN gradients.

Gradient accumulation: `normalizer` replaces the local denominator (token count for
token-mean, row count for the seq-means). Give every micro-batch the mini-batch's global
count and the summed micro-batch losses equal the mini-batch loss exactly.
"""

from __future__ import annotations

import torch

from spo.algo._validate import check_scalar, check_tensor_range

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def _check(logp_BT, old_logp_BT, adv, mask_BT) -> tuple[torch.Tensor, torch.Tensor]:
    if not all(isinstance(t, torch.Tensor) for t in (logp_BT, old_logp_BT, adv, mask_BT)):
        raise ValueError("logp_BT, old_logp_BT, adv_B and mask_BT must be torch tensors")
    if logp_BT.dim() != 2:
        raise ValueError(f"logp_BT must be 2-D (B, T); got shape {tuple(logp_BT.shape)}")
    shape = tuple(logp_BT.shape)
    for name, t in (("old_logp_BT", old_logp_BT), ("mask_BT", mask_BT)):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have the shape of logp_BT {shape}; got {tuple(t.shape)}")
    if adv.dim() == 1 and adv.shape[0] == shape[0]:
        adv = adv.unsqueeze(1)
    elif tuple(adv.shape) != shape:
        raise ValueError(f"adv_B must have shape ({shape[0]},) or {shape}; got {tuple(adv.shape)}")
    check_tensor_range(adv.detach(), "adv_B")
    return adv, mask_BT.to(torch.bool)


def ppo_clip_loss(
    logp_BT,
    old_logp_BT,
    adv_B,
    mask_BT,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip: float | None = 10.0,
    agg: str = "token-mean",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """loss = agg_m(max(−rÃ, −clip(r, 1−ε_low, 1+ε_high)Ã), dual-clipped at −cÃ for Ã<0).

    logp_BT: (B, T) log-probs under the policy being trained (carries the gradient);
    old_logp_BT: (B, T) log-probs of the policy that sampled (no gradient used);
    adv_B: (B,) sequence advantages broadcast over tokens, or (B, T) per token;
    mask_BT: (B, T) 1/True on response tokens. dual_clip=None disables the dual clip.
    normalizer: denominator to use instead of the local one (see module docstring).

    Returns (loss 0-d tensor, stats over masked tokens as Python floats: clip_fraction,
    dual_clip_fraction, ratio_mean, ratio_max, approx_kl = mean((r − 1) − log r), the k3
    estimator of KL(π_old ‖ π)). With no masked token the loss is 0 and the stats are 0.
    """
    adv, mask = _check(logp_BT, old_logp_BT, adv_B, mask_BT)
    eps_low = check_scalar(eps_low, "eps_low", lo=0.0, hi=1.0, hi_open=True)
    eps_high = check_scalar(eps_high, "eps_high", lo=0.0)
    if dual_clip is not None:
        dual_clip = check_scalar(dual_clip, "dual_clip", lo=1.0, lo_open=True)
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {', '.join(AGGREGATIONS)}; got {agg!r}")
    if normalizer is not None:
        normalizer = check_scalar(normalizer, "normalizer", lo=0.0, lo_open=True)

    zero = torch.zeros((), dtype=logp_BT.dtype, device=logp_BT.device)
    log_ratio = torch.where(mask, logp_BT - old_logp_BT.detach(), zero)
    ratio = torch.exp(log_ratio)
    adv = adv.detach().to(ratio.dtype)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss_tok = torch.maximum(pg1, pg2)
    if dual_clip is not None:
        bound = -dual_clip * adv
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, bound), loss_tok)
    loss_tok = torch.where(mask, loss_tok, zero)

    n_tok_B = mask.sum(dim=1)
    if agg == "token-mean":
        denom = normalizer if normalizer is not None else n_tok_B.sum().clamp(min=1).item()
        loss = loss_tok.sum() / denom
    else:
        per_seq = loss_tok.sum(dim=1)
        if agg == "seq-mean-token-mean":
            per_seq = per_seq / n_tok_B.clamp(min=1).to(per_seq.dtype)
        rows = int((n_tok_B > 0).sum())
        denom = normalizer if normalizer is not None else max(rows, 1)
        loss = per_seq.sum() / denom

    with torch.no_grad():
        n = int(mask.sum())
        if n == 0:
            keys = ("clip_fraction", "dual_clip_fraction", "ratio_mean", "ratio_max", "approx_kl")
            return loss, dict.fromkeys(keys, 0.0)
        r = ratio[mask]
        clipped = (pg2 > pg1)[mask]
        if dual_clip is not None:
            dual = ((adv < 0) & (torch.maximum(pg1, pg2) > -dual_clip * adv))[mask]
        else:
            dual = torch.zeros_like(clipped)
        stats = {
            "clip_fraction": float(clipped.float().mean()),
            "dual_clip_fraction": float(dual.float().mean()),
            "ratio_mean": float(r.mean()),
            "ratio_max": float(r.max()),
            "approx_kl": float(((r - 1.0) - log_ratio[mask]).mean()),
        }
    return loss, stats
