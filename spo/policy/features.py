"""Prompt features from the policy's own trunk, for a learned value V(x) (the critic arm).

    h(x) = last_hidden_state of the decoder at the prompt's last token      (D,)

That is the state the LM head reads to predict the first response token: everything the
policy has computed about the prompt before it answers. One no-grad forward over the
prompt tokens only (no response, no LM head), in right-padded micro-batches through
`spo.policy.logprobs.decoder_hidden`, the training forward's own path: the prefix every
prompt of a micro-batch shares (system prompt, chat header) runs once and its keys/values
are repeated, which on the embedded model's chat template is most of each prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from spo.policy.batch import pack
from spo.policy.logprobs import decoder_hidden


def prompt_hidden(
    model, prompt_tokens: Sequence[Sequence[int]], *, pad_id: int, micro_batch_size: int = 16
) -> Tensor:
    """h_PD: the final hidden state at each prompt's last token, (P, D) float32 on the CPU.

    model: a causal LM (LoRA-wrapped too); prompt_tokens: P non-empty token lists. No
    gradient reaches the model: the features are read, not trained through."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if any(len(p) == 0 for p in prompt_tokens):
        raise ValueError("every prompt needs at least one token")
    rows: list[Tensor] = []
    with torch.no_grad():
        for lo in range(0, len(prompt_tokens), micro_batch_size):
            chunk = [list(p) for p in prompt_tokens[lo : lo + micro_batch_size]]
            batch = pack(chunk, [[] for _ in chunk], pad_id=int(pad_id))
            hidden_bLD, C = decoder_hidden(model, batch)
            last_b = (batch.completion_start_B - 1 - C).to(hidden_bLD.device)
            rows.append(hidden_bLD[torch.arange(len(chunk)), last_b].float().cpu())
    if not rows:
        return torch.zeros((0, model.config.hidden_size))
    return torch.cat(rows)
