"""Rollouts with a Hugging Face causal LM in this process (CPU or one GPU).

`HFEngine.generate` samples one completion per prompt (`sampling.n` per prompt: the
prompt repeated n times; the call's `SamplingSettings` override the engine's own
temperature / top_p / max_new_tokens): prompts are sorted by length and
cut into batches of `batch_size` (less padding), each batch is left-padded, prefilled
once, then decoded a token at a time until every row has produced eos or
`max_new_tokens` tokens. Sampling draws from a private `torch.Generator` seeded with
`seed`, so a call is deterministic given (weights, prompt ids, seed) and never touches
the global RNG (the trainer reseeds per step and resumes losslessly).

Behaviour log-probs are log softmax(logits / temperature) of the sampled token, in fp32
from the bf16 head output: the same numbers `spo.policy.logprobs.completion_logp` computes on the
finished sequence, up to bf16 noise. With top_p < 1 the token is drawn from the nucleus,
but the log-prob reported is still that of the full tempered distribution (the one the
trainer differentiates); with temperature 0 (greedy) it is the temperature-1 log-prob.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from spo.rollout import Rollouts, SamplingSettings
from spo.rollout.llama import LlamaDecoder, unsupported_reason


class HFEngine:
    """Batched sampling from a Hugging Face causal LM; see the module docstring."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 64,
        fast: bool = True,
        compact_at: float = 0.25,
    ):
        # the configured settings of every call that names no others (checked here)
        self.sampling = SamplingSettings(temperature, top_p, max_new_tokens)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.fast = fast  # False: decode through the model's own forward (reference path)
        # Drop finished rows from the decode batch once they are this share of it (0: at
        # every finish; > 1: never). The cache copy costs about one decode step.
        self.compact_at = compact_at
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)

    def sync_weights(self, policy) -> None:
        """No-op for the trainer's own model (shared); else load its `policy_weights`."""
        if policy is self.model:
            return
        from spo.policy.weights import load_policy_weights, policy_weights

        weights = policy_weights(policy) if isinstance(policy, torch.nn.Module) else policy
        with torch.no_grad():
            load_policy_weights(self.model, weights)

    def generate(
        self, prompt_tokens: list[list[int]], *, seed: int, sampling: SamplingSettings | None = None
    ) -> Rollouts:
        s = (sampling or SamplingSettings()).over(self.sampling)
        prompt_tokens = s.repeat(prompt_tokens)
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        n = len(prompt_tokens)
        completion_ids: list[list[int]] = [[] for _ in range(n)]
        logp: list[Tensor] = [torch.zeros(0) for _ in range(n)]
        finished = [False] * n
        order = sorted(range(n), key=lambda i: len(prompt_tokens[i]))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for lo in range(0, n, self.batch_size):
                    rows = order[lo : lo + self.batch_size]
                    out = self._generate_batch([prompt_tokens[i] for i in rows], generator, s)
                    for i, (ids, lp, done) in zip(rows, out, strict=True):
                        completion_ids[i], logp[i], finished[i] = ids, lp, done
        finally:
            self.model.train(was_training)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Rollouts(
            prompt_tokens=[list(p) for p in prompt_tokens],
            completion_ids=completion_ids,
            logp=logp,
            finished=finished,
            texts=texts,
        )

    def _generate_batch(
        self, prompts: list[list[int]], generator: torch.Generator, s: SamplingSettings
    ) -> list[tuple[list[int], Tensor, bool]]:
        device = next(self.model.parameters()).device
        B, P = len(prompts), max(len(p) for p in prompts)
        if self.fast and unsupported_reason(self.model) is None:
            decoder = LlamaDecoder(self.model, max_len=P + s.max_new_tokens)
        else:
            decoder = _HFDecoder(self.model, pad_id=self.pad_id)
        logits_bV = decoder.prefill(prompts)
        eos_E = torch.tensor(self.eos_ids, dtype=torch.long, device=device)
        tokens: list[list[int]] = [[] for _ in range(B)]
        logps: list[list[float]] = [[] for _ in range(B)]
        finished = [False] * B
        row_b = list(range(B))  # decoder row -> batch row
        for t in range(s.max_new_tokens):
            tok_b, lp_b = sample(logits_bV, s.temperature, s.top_p, generator)
            done_b = torch.isin(tok_b, eos_E)
            for r, tok, lp, done in zip(
                row_b, tok_b.tolist(), lp_b.tolist(), done_b.tolist(), strict=True
            ):
                if not finished[r]:
                    tokens[r].append(tok)
                    logps[r].append(lp)
                    finished[r] = done
            if t == s.max_new_tokens - 1:
                break
            live = [i for i, r in enumerate(row_b) if not finished[r]]
            if not live:
                break
            n_done = len(row_b) - len(live)
            if n_done and n_done >= self.compact_at * len(row_b):
                # drop finished rows: the cache copy is cheaper than decoding them on
                live_b = torch.tensor(live, device=device)
                decoder.keep(live_b)
                row_b = [row_b[i] for i in live]
                tok_b = tok_b[live_b]
            logits_bV = decoder.step(tok_b)
        return [
            (tokens[b], torch.tensor(logps[b], dtype=torch.float32), finished[b]) for b in range(B)
        ]


class _HFDecoder:
    """Any Hugging Face causal LM, through its own forward and cache (the reference path)."""

    def __init__(self, model, *, pad_id: int):
        self.model = model
        self.pad_id = pad_id
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def prefill(self, prompts: list[list[int]]) -> Tensor:
        device = next(self.model.parameters()).device
        B, P = len(prompts), max(len(p) for p in prompts)
        ids_BP = torch.full((B, P), self.pad_id, dtype=torch.long)
        mask_BP = torch.zeros((B, P), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every row's next token is column P
            ids_BP[b, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask_BP[b, P - len(p) :] = 1
        ids_BP, mask_BP = ids_BP.to(device), mask_BP.to(device)
        self.mask_BL = mask_BP
        self.pos_B = mask_BP.sum(1) - 1
        position_ids_BP = (mask_BP.cumsum(1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids_BP,
            attention_mask=mask_BP,
            position_ids=position_ids_BP,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = getattr(out, self.cache_kw)
        return out.logits[:, -1]

    def step(self, tok_B: Tensor) -> Tensor:
        self.mask_BL = torch.cat([self.mask_BL, self.mask_BL.new_ones(len(tok_B), 1)], dim=1)
        self.pos_B = self.pos_B + 1
        out = self.model(
            input_ids=tok_B[:, None],
            attention_mask=self.mask_BL,
            position_ids=self.pos_B[:, None],
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        self.cache = getattr(out, self.cache_kw)
        return out.logits[:, -1]

    def keep(self, rows: Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask_BL = self.mask_BL[rows]
        self.pos_B = self.pos_B[rows]


def sample(
    logits_BV: Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Next token and its log-prob under softmax(logits / temperature) (greedy at 0).

    Inverse-CDF sampling (cumsum + binary search, one uniform per row) is exact and far
    cheaper on CPU than `torch.multinomial`, which draws a random number per vocabulary
    entry (97 ms vs ~7 ms per step at 64 x 49k). The log-prob is log p of the drawn token,
    read before the cumsum (a difference of the cdf would cancel for rare tokens).
    """
    if temperature == 0:
        logp_BV = logits_BV.float().log_softmax(-1)
        tok_B = logp_BV.argmax(-1)
        return tok_B, logp_BV.gather(1, tok_B[:, None]).squeeze(1)
    if temperature == 1.0:
        probs_BV = torch.softmax(logits_BV, dim=-1, dtype=torch.float32)
    else:
        probs_BV = torch.softmax(logits_BV.float() / temperature, dim=-1)
    order_BV = None
    if top_p < 1.0:
        nucleus_BV, order_BV = probs_BV.sort(-1, descending=True)
        # drop a token once the mass before it reaches top_p (the top token always stays)
        mass_before_BV = nucleus_BV.cumsum(-1) - nucleus_BV
        cdf_BV = nucleus_BV.masked_fill_(mass_before_BV >= top_p, 0.0).cumsum_(-1)
    else:
        cdf_BV = probs_BV.cumsum(-1)
    total_B1 = cdf_BV[:, -1:].contiguous()
    u_B1 = torch.rand(total_B1.shape, generator=generator, device=cdf_BV.device)
    # right=True: a zero-probability token spans an empty interval and is never drawn; the
    # min guards u * total rounding up to total (then: the last token with mass)
    pick_B1 = torch.minimum(
        torch.searchsorted(cdf_BV, u_B1 * total_B1, right=True),
        torch.searchsorted(cdf_BV, total_B1, right=False),
    )
    tok_B1 = pick_B1 if order_BV is None else order_BV.gather(1, pick_B1)
    return tok_B1.squeeze(1), probs_BV.gather(1, tok_B1).log_().squeeze(1)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos is not None:
        ids.update(int(i) for i in gen_eos)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an eos")
    return sorted(ids)
