"""A lean decoder for Llama-family models (Llama, Qwen2, Qwen3): static KV cache, no per-step
allocation of the cache, fused projections.

Hugging Face's decode step spends most of its time outside the matmuls on CPU: the
dynamic cache grows by `torch.cat` every token (46% of a step for SmolLM2-135M at batch
64), SDPA's CPU kernel is slow for one query token (26%), and each of the 30 layers runs
dozens of small ops. Here, per layer and step: one fused QKV matmul, RoPE on q and k
together, a write into a preallocated `(B, H_kv, S_max, d)` cache, attention as two
batched matmuls over the whole (contiguous) cache with an additive mask for padding and
not-yet-written columns, one fused gate/up matmul. On CPU every bf16 weight is reordered
once into oneDNN's blocked layout (`_Linear`: -20% decode time, same tokens). Finished
rows can be dropped from the batch (`keep`). Prefill attends in query chunks of at most
`SCORES_BUDGET` scores, so long contexts do not need a (B, H, L, L) score tensor. The
weights are read from the model when the decoder is built (once per `generate` call), so
training updates are always seen.

The maths is the model's own (same RMSNorm, RoPE tables from the model's rotary module,
GQA, SiLU MLP, tied or untied head), so log-probs agree with `completion_logp` up to bf16
rounding; `tests/rollout` checks the logits against the model's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SUPPORTED = ("llama", "qwen2", "qwen3")
# Prefill attention scores held at once (fp32 elements, 2**26 = 256 MiB): a batch of long
# contexts (multi-turn episodes with tool output) attends in query chunks that fit, so
# memory grows with the context length, not with its square. Short prompts: one chunk.
SCORES_BUDGET = 2**26


def unsupported_reason(model) -> str | None:
    """None if `LlamaDecoder` can run `model`, else why not (the engine then falls back)."""
    if hasattr(model, "peft_config"):
        return "LoRA adapters (peft) are applied by the model's own forward"
    config = model.config
    if config.model_type not in SUPPORTED:
        return f"model_type {config.model_type!r} is not one of {SUPPORTED}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r}"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return "sliding-window layers"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) in ("dynamic", "longrope"):
        return "length-dependent RoPE"
    base = getattr(model, model.base_model_prefix, None)
    try:
        layer = base.layers[0]
        _ = (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.gate_proj, base.norm)
        _ = base.rotary_emb, base.embed_tokens
    except AttributeError as e:
        return f"unexpected module layout ({e})"
    if getattr(model.get_output_embeddings(), "bias", None) is not None:
        return "LM head with bias"
    return None


class _Linear:
    """x -> F.linear(x, weight, bias). For bf16 weights on CPU the weight is reordered once
    into oneDNN's blocked layout and every call goes straight to its matmul: F.linear
    re-lays the weight out on every call, which at decode sizes (a few to 64 rows) costs
    more than the product. Bitwise equal to F.linear; 1.5x faster at 64 rows and 2-4x at a
    few rows for SmolLM2-135M's shapes (2 cores, AMX)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        self.weight, self.bias, self.packed = weight, bias, None
        if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and _ONEDNN:
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 64)
            except (RuntimeError, AttributeError):  # a torch build without these ops
                self.packed = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


_ONEDNN = torch.backends.mkldnn.is_available()


class _Layer:
    """One decoder layer's weights, with q/k/v and gate/up concatenated."""

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        w_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        b_qkv = torch.cat(biases) if all(b is not None for b in biases) else None
        self.qkv = _Linear(w_qkv, b_qkv)
        self.o = _Linear(attn.o_proj.weight)
        self.gate_up = _Linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        self.down = _Linear(mlp.down_proj.weight)
        self.norm_in = _RMSNorm(layer.input_layernorm)
        self.norm_post = _RMSNorm(layer.post_attention_layernorm)
        self.q_norm = _RMSNorm(attn.q_norm) if hasattr(attn, "q_norm") else None
        self.k_norm = _RMSNorm(attn.k_norm) if hasattr(attn, "k_norm") else None


class _RMSNorm:
    """Hugging Face's RMSNorm in 3 ops instead of 8, bitwise equal: fp32 normalise, round to
    the weight's dtype, scale."""

    def __init__(self, module):
        self.weight = module.weight
        self.eps = module.variance_epsilon

    def __call__(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)
        return self.weight * normed.to(x.dtype)


class LlamaDecoder:
    """prefill(prompts) -> last logits; step(tokens) -> next logits; keep(rows)."""

    def __init__(self, model, *, max_len: int):
        config = model.config
        base = getattr(model, model.base_model_prefix)
        self.embed = base.embed_tokens.weight
        self.norm = _RMSNorm(base.norm)
        self.head = _Linear(model.get_output_embeddings().weight)
        self.layers = [_Layer(layer) for layer in base.layers]
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = base.layers[0].self_attn.head_dim
        self.scaling = base.layers[0].self_attn.scaling
        self.max_len = max_len
        self.dtype, self.device = self.embed.dtype, self.embed.device
        # cos/sin for every position, from the model's own rotary module (any scaling type)
        positions = torch.arange(max_len, device=self.device)[None]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = base.rotary_emb(probe, positions)
        self.cos_SD, self.sin_SD = cos[0], sin[0]

    # ------------------------------------------------------------------------ steps
    def prefill(self, prompts: list[list[int]]) -> Tensor:
        """Fill the cache with the prompts; logits for each prompt's next token (B, V).

        Row b holds its prompt at cache columns 0..len_b-1 (column = position), and its
        generated tokens follow it. The prefix that all prompts share (a system prompt,
        the chat header) is run once, and identical prompts (GRPO groups) once each.
        """
        lens = [len(p) for p in prompts]
        if max(lens) >= self.max_len:
            raise ValueError(f"a prompt of {max(lens)} tokens leaves no room in the cache")
        unique: dict[tuple[int, ...], int] = {}
        row_u = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        uniq = list(unique)
        C = _common_prefix(uniq, limit=min(lens) - 1)  # every row keeps >= 1 own token
        U, Hkv, d = len(uniq), self.n_kv, self.head_dim
        self.k_cache = [
            torch.zeros(U, Hkv, self.max_len, d, dtype=self.dtype, device=self.device)
            for _ in self.layers
        ]
        self.v_cache = [torch.zeros_like(k) for k in self.k_cache]
        if C > 0:
            self._forward(torch.tensor([uniq[0][:C]], device=self.device), start=0)
        L = max(len(p) for p in uniq) - C
        ids_UL = torch.zeros((U, L), dtype=torch.long)
        for u, p in enumerate(uniq):
            ids_UL[u, : len(p) - C] = torch.tensor(p[C:])
        # right padding: a real query never sees the padding after its row (causal)
        h_ULD = self._forward(ids_UL.to(self.device), start=C)
        last_U = torch.tensor([len(p) - C - 1 for p in uniq], device=self.device)
        logits_UV = self._logits(h_ULD[torch.arange(U, device=self.device), last_U])

        rows = torch.tensor(row_u, device=self.device)
        self.k_cache = [k[rows] for k in self.k_cache]
        self.v_cache = [v[rows] for v in self.v_cache]
        self.col_B = torch.tensor(lens, device=self.device)  # next column = next position
        columns_S = torch.arange(self.max_len, device=self.device)
        # additive attention bias over cache columns: 0 = attend, -inf = not (yet) written
        self.bias_BS = torch.zeros((len(prompts), self.max_len), device=self.device)
        self.bias_BS.masked_fill_(columns_S[None] >= self.col_B[:, None], float("-inf"))
        return logits_UV[rows]

    def step(self, tok_B: Tensor) -> Tensor:
        """Append one token per row; logits of the next one (B, V)."""
        B = tok_B.shape[0]
        H, Hkv, d = self.n_heads, self.n_kv, self.head_dim
        if int(self.col_B.max()) >= self.max_len:
            raise ValueError("KV cache is full")
        rows_B, col_B = torch.arange(B, device=self.device), self.col_B
        self.bias_BS[rows_B, col_B] = 0.0
        bias_B11S = self.bias_BS[:, None, None, :]
        cos, sin = self.cos_SD[col_B][:, None], self.sin_SD[col_B][:, None]
        h_BD = F.embedding(tok_B, self.embed)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, h_BD)  # (B, heads, d)
            q = _rope(q, cos, sin)
            self.k_cache[i][rows_B, :, col_B] = _rope(k, cos, sin)
            self.v_cache[i][rows_B, :, col_B] = v
            # GQA over the whole (contiguous) cache: (B, Hkv, G, d) x (B, Hkv, S, d); a
            # slice of the cache would be strided and make matmul copy it every layer
            q = q.view(B, Hkv, H // Hkv, d)
            scores = torch.matmul(q, self.k_cache[i].transpose(-1, -2))
            probs = torch.softmax(scores * self.scaling + bias_B11S, dim=-1).to(self.dtype)
            o = torch.matmul(probs, self.v_cache[i]).view(B, H * d)
            h_BD = self._finish(layer, h_BD, o)
        self.col_B = col_B + 1
        return self._logits(h_BD)

    def keep(self, rows: Tensor) -> None:
        """Drop every row not in `rows` (finished sequences) from the batch and the cache."""
        self.k_cache = [k[rows] for k in self.k_cache]
        self.v_cache = [v[rows] for v in self.v_cache]
        self.bias_BS = self.bias_BS[rows]
        self.col_B = self.col_B[rows]

    # ---------------------------------------------------------------------- pieces
    def _forward(self, ids_BL: Tensor, *, start: int) -> Tensor:
        """Tokens at columns start..start+L-1 of every row (same columns for all rows),
        attending causally to themselves and to all columns before `start`; writes their
        keys/values into the cache and returns the final hidden states (B, L, D)."""
        B, L = ids_BL.shape
        H, d = self.n_heads, self.head_dim
        end = start + L
        cos, sin = self.cos_SD[start:end], self.sin_SD[start:end]
        allowed_LS = torch.ones(L, end, dtype=torch.bool, device=self.device).tril(start)
        bias_LS = torch.zeros(L, end, device=self.device).masked_fill_(~allowed_LS, float("-inf"))
        h_BLD = F.embedding(ids_BL, self.embed)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, h_BLD)  # (B, L, heads, d)
            q = _rope(q.transpose(1, 2), cos, sin)  # (B, H, L, d)
            self.k_cache[i][:, :, start:end] = _rope(k.transpose(1, 2), cos, sin)
            self.v_cache[i][:, :, start:end] = v.transpose(1, 2)
            keys, values = self.k_cache[i][:B, :, :end], self.v_cache[i][:B, :, :end]
            chunk = max(1, SCORES_BUDGET // (B * H * end))  # queries per attention pass
            parts = [
                self._attend(q[:, :, a : a + chunk], keys, values, bias_LS[a : a + chunk])
                for a in range(0, L, chunk)
            ]
            o = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # (B, H, L, d)
            h_BLD = self._finish(layer, h_BLD, o.transpose(1, 2).reshape(B, L, H * d))
        return h_BLD

    def _attend(self, q_BHLd: Tensor, keys: Tensor, values: Tensor, bias_LS: Tensor) -> Tensor:
        """Attention of L queries (B, H, L, d) over the cache columns (B, Hkv, S, d) with an
        additive bias (L, S); (B, H, L, d). GQA: the G = H / Hkv query heads of a key head
        are one matmul."""
        B, H, L, d = q_BHLd.shape
        Hkv, S = keys.shape[1], keys.shape[2]
        q = q_BHLd.reshape(B, Hkv, (H // Hkv) * L, d)
        scores = torch.matmul(q, keys.transpose(-1, -2)).view(B, Hkv, H // Hkv, L, S)
        probs = torch.softmax(scores * self.scaling + bias_LS, dim=-1).to(self.dtype)
        o = torch.matmul(probs.view(B, Hkv, -1, S), values)  # (B, Hkv, G * L, d)
        return o.view(B, H, L, d)

    def _qkv(self, layer: _Layer, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        H, Hkv, d = self.n_heads, self.n_kv, self.head_dim
        qkv = layer.qkv(layer.norm_in(h))
        qkv = qkv.view(*h.shape[:-1], H + 2 * Hkv, d)
        q, k, v = qkv.split([H, Hkv, Hkv], dim=-2)
        if layer.q_norm is not None:
            q, k = layer.q_norm(q), layer.k_norm(k)
        return q, k, v

    def _finish(self, layer: _Layer, h: Tensor, attn: Tensor) -> Tensor:
        h = h + layer.o(attn)
        gate, up = layer.gate_up(layer.norm_post(h)).chunk(2, dim=-1)
        return h + layer.down(F.silu(gate) * up)

    def _logits(self, h_BD: Tensor) -> Tensor:
        return self.head(self.norm(h_BD))


def _common_prefix(seqs: list[tuple[int, ...]], *, limit: int) -> int:
    n = 0
    first = seqs[0]
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x * cos + rotate_half(x) * sin, as in Hugging Face's apply_rotary_pos_emb."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
