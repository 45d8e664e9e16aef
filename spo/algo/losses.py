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

Train/inference mismatch (truncated importance sampling, Yao et al. 2025 "Your efficient RL
framework secretly brings you off-policy RL training"): a fast inference engine (vLLM)
samples from π_behaviour, which differs from the trainer's π_old by kernel and precision
noise. `tis_weight` gives each token w = min(exp(old_logp − behaviour_logp), C); passing it
as `weight_BT` multiplies it into the per-token loss (after clipping), which corrects the
policy gradient back to π_old's samples up to the cap C.

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
    weight_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """loss = agg_m(max(−rÃ, −clip(r, 1−ε_low, 1+ε_high)Ã), dual-clipped at −cÃ for Ã<0).

    logp_BT: (B, T) log-probs under the policy being trained (carries the gradient);
    old_logp_BT: (B, T) log-probs of the policy that sampled (no gradient used);
    adv_B: (B,) sequence advantages broadcast over tokens, or (B, T) per token;
    mask_BT: (B, T) 1/True on response tokens. dual_clip=None disables the dual clip.
    normalizer: denominator to use instead of the local one (see module docstring).
    weight_BT: optional (B, T) per-token weight multiplied into the token loss (e.g. the
    truncated importance weight of `tis_weight`); no gradient flows through it.

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
    if weight_BT is not None:
        if tuple(weight_BT.shape) != tuple(logp_BT.shape):
            raise ValueError(
                f"weight_BT must have the shape of logp_BT {tuple(logp_BT.shape)}; "
                f"got {tuple(weight_BT.shape)}"
            )
        loss_tok = loss_tok * torch.where(mask, weight_BT.detach().to(loss_tok.dtype), zero)
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


def tis_weight(
    old_logp_BT: torch.Tensor,
    behaviour_logp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    tis_cap: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """w_BT = min(exp(old_logp − behaviour_logp), tis_cap) on masked tokens, 0 elsewhere.

    old_logp_BT: (B, T) log-probs of the sampled tokens under the trainer's pre-update
    policy; behaviour_logp_BT: (B, T) the inference engine's log-probs of the same tokens;
    mask_BT: (B, T) 1 on response tokens. Returns (w_BT float32 without gradient, stats over
    masked tokens: tis_weight_mean, tis_clip_fraction = share of tokens capped,
    tis_logp_gap = mean |old_logp − behaviour_logp|).
    """
    for name, t in (("old_logp_BT", old_logp_BT), ("behaviour_logp_BT", behaviour_logp_BT)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(mask_BT.shape):
            raise ValueError(f"{name} must be a tensor of the shape of mask_BT")
    tis_cap = check_scalar(tis_cap, "tis_cap", lo=0.0, lo_open=True)
    mask = mask_BT.to(torch.bool)
    with torch.no_grad():
        zero = torch.zeros((), dtype=torch.float32, device=old_logp_BT.device)
        gap_BT = torch.where(mask, old_logp_BT.float() - behaviour_logp_BT.float(), zero)
        raw_BT = torch.exp(gap_BT)
        w_BT = torch.where(mask, torch.clamp(raw_BT, max=tis_cap), zero)
        n = int(mask.sum())
        if n == 0:
            return w_BT, {"tis_weight_mean": 0.0, "tis_clip_fraction": 0.0, "tis_logp_gap": 0.0}
        stats = {
            "tis_weight_mean": float(w_BT[mask].mean()),
            "tis_clip_fraction": float((raw_BT[mask] > tis_cap).float().mean()),
            "tis_logp_gap": float(gap_BT[mask].abs().mean()),
        }
    return w_BT, stats
