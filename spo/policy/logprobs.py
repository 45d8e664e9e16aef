"""Log-probabilities of completion tokens under the policy: one forward pass, no full logits.

    logp_BT[b, t] = log softmax(W h[b, completion_start[b] + t - 1] / temperature)[y_bt]

The decoder runs once over prompt + completion (a prefix that every row shares, such as the
system prompt, once for the whole batch); the LM head and the log-softmax are
applied only to the N hidden states that predict completion tokens (prompt positions
never reach the head), in chunks of `chunk_size` rows. A custom autograd function keeps
only the (N,) log-sum-exp for the backward pass and recomputes each chunk's logits there,
so neither pass ever holds (N, vocab) logits: with a 49k vocabulary, 64 x 64 completion
tokens would otherwise need ~1.2 GB of logits and softmax saved for backward.

Numerics follow Hugging Face's own path: the head matmul runs in the weights' dtype
(bf16), logits are upcast to fp32 before the temperature and the log-softmax. The rollout
engine (`spo.rollout.hf`) scores sampled tokens the same way, so behaviour and training
log-probs differ only by bf16 noise in the decoder (cached decode vs one full pass).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

from spo.policy.batch import PackedBatch
from spo.policy.weights import is_peft


class _TokenLogp(torch.autograd.Function):
    """logp_N = log_softmax(h_ND @ W_VD.T / temperature)[target_N], chunked over N."""

    @staticmethod
    def forward(ctx, h_ND, weight_VD, target_N, temperature, chunk_size):
        N = h_ND.shape[0]
        dtype = _acc_dtype(h_ND)
        logp_N = torch.empty(N, dtype=dtype, device=h_ND.device)
        lse_N = torch.empty(N, dtype=dtype, device=h_ND.device)
        for lo in range(0, N, chunk_size):
            hi = min(lo + chunk_size, N)
            logits_nV = _logits(h_ND[lo:hi], weight_VD, temperature)
            lse_N[lo:hi] = torch.logsumexp(logits_nV, dim=-1)
            logp_N[lo:hi] = logits_nV.gather(1, target_N[lo:hi, None]).squeeze(1) - lse_N[lo:hi]
        ctx.save_for_backward(h_ND, weight_VD, target_N, lse_N)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return logp_N

    @staticmethod
    def backward(ctx, grad_N):
        h_ND, weight_VD, target_N, lse_N = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N = h_ND.shape[0]
        grad_h = torch.empty_like(h_ND) if need_h else None
        grad_w = (
            torch.zeros(weight_VD.shape, dtype=_acc_dtype(h_ND), device=weight_VD.device)
            if need_w
            else None
        )
        for lo in range(0, N, chunk_size):
            hi = min(lo + chunk_size, N)
            # d logp / d logits = (onehot(target) - softmax) / temperature, times grad_N
            logits_nV = _logits(h_ND[lo:hi], weight_VD, temperature)
            g_n = grad_N[lo:hi].to(logits_nV.dtype) / temperature
            g_nV = torch.exp_(logits_nV.sub_(lse_N[lo:hi, None])).mul_(-g_n[:, None])
            g_nV.scatter_add_(1, target_N[lo:hi, None], g_n[:, None])
            g_nV = g_nV.to(weight_VD.dtype)
            if need_h:
                grad_h[lo:hi] = g_nV @ weight_VD
            if need_w:
                grad_w += g_nV.t() @ h_ND[lo:hi]
        return grad_h, grad_w.to(weight_VD.dtype) if need_w else None, None, None, None


def _acc_dtype(h: Tensor) -> torch.dtype:
    # fp32 for bf16/fp16/fp32 models; fp64 stays fp64 (gradcheck)
    return torch.promote_types(h.dtype, torch.float32)


def _logits(h_nD: Tensor, weight_VD: Tensor, temperature: float) -> Tensor:
    logits_nV = F.linear(h_nD, weight_VD).to(_acc_dtype(h_nD))
    return logits_nV.div_(temperature) if temperature != 1.0 else logits_nV


def lm_head_weight(model) -> Tensor:
    """The output projection of a causal LM; refuses heads that are not a plain matmul."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("completion_logp supports bias-free LM heads only")
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(model.config, name, None):
            raise ValueError(f"completion_logp does not implement {name} (model config)")
    return head.weight


def decoder_of(model):
    """The decoder stack of a causal LM (no LM head): its `last_hidden_state` is what the
    head reads. Under LoRA (peft) the adapted layers live inside the base model."""
    base = model.get_base_model() if is_peft(model) else model
    return getattr(base, base.base_model_prefix)


def _cache_kwarg(decoder) -> str:
    """Name of the KV-cache argument: `cache` in newer transformers, else past_key_values."""
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def shared_prefix_len(batch: PackedBatch) -> int:
    """Length of the token prefix that every row shares, for a right-padded batch of more
    than one row (0 otherwise); capped so each row keeps the position that predicts its
    first completion token outside the prefix."""
    B = len(batch)
    if B < 2 or not bool((batch.seq_start_B == 0).all()):
        return 0
    limit = int(batch.completion_start_B.min()) - 1
    if limit < 1:
        return 0
    ids_BL = batch.input_ids_BL[:, :limit]
    same_L = (ids_BL == ids_BL[:1]).all(0)
    return limit if bool(same_L.all()) else int(same_L.int().argmin())


def decoder_hidden(model, batch: PackedBatch, *, share_prefix: bool = True) -> tuple[Tensor, int]:
    """The decoder's last hidden states over a packed batch and the length C of the prefix
    every row shares that was run once (0 if none): (B, L − C, D), column j = position j + C.

    share_prefix=False always runs the full sequences (see `completion_logp`)."""
    decoder = decoder_of(model)
    device = next(model.parameters()).device
    ids_BL = batch.input_ids_BL.to(device)
    C = shared_prefix_len(batch) if share_prefix else 0
    if C > 0:
        # Every row starts with the same C tokens (system prompt, chat header): run them
        # once, repeat their keys/values B times and run only the rest. Exact (a prefix
        # token attends only to the prefix), and autograd sums the rows' gradients
        # through the repeat; saves C * (B - 1) token passes forward and backward.
        out = decoder(input_ids=ids_BL[:1, :C], use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values  # transformers 5.x
        cache.batch_repeat_interleave(len(batch))
        hidden_BLD = decoder(
            input_ids=ids_BL[:, C:], use_cache=True, **{_cache_kwarg(decoder): cache}
        ).last_hidden_state
    elif bool((batch.seq_start_B == 0).all()):
        # Right padding: causal attention never reaches the padding after a sequence, and
        # positions are 0..L-1, so no mask is needed.
        hidden_BLD = decoder(input_ids=ids_BL, use_cache=False).last_hidden_state
    else:
        hidden_BLD = decoder(
            input_ids=ids_BL,
            attention_mask=batch.attention_mask_BL.to(device),
            position_ids=batch.position_ids_BL.to(device),
            use_cache=False,
        ).last_hidden_state
    return hidden_BLD, C


def completion_logp(
    model,
    batch: PackedBatch,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    share_prefix: bool = True,
) -> Tensor:
    """Log-prob of each completion token, (B, T) float32, exactly 0 at masked positions.

    Differentiable (gradients flow to the decoder and the head only through real
    completion tokens); call it under `torch.no_grad()` for old / reference log-probs.
    share_prefix=False always runs the full sequences (FSDP needs it for gradients: the
    shared prefix's gradient reaches its layers through the KV cache, a path FSDP's
    backward hooks do not see).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, T = batch.completion_mask_BT.shape
    device = next(model.parameters()).device
    logp_BT = torch.zeros((B, T), dtype=torch.float32, device=device)
    if B == 0 or T == 0:
        return logp_BT
    hidden_BLD, C = decoder_hidden(model, batch, share_prefix=share_prefix)
    mask_BT = batch.completion_mask_BT.to(device) > 0
    b_N, t_N = mask_BT.nonzero(as_tuple=True)
    pos_N = batch.completion_start_B.to(device)[b_N] + t_N - 1 - C
    h_ND = hidden_BLD[b_N, pos_N]
    target_N = batch.completion_ids_BT.to(device)[b_N, t_N]
    logp_N = _TokenLogp.apply(h_ND, lm_head_weight(model), target_N, float(temperature), chunk_size)
    return logp_BT.index_put((b_N, t_N), logp_N)
