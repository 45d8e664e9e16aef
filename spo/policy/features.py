"""Prompt features from the policy's own trunk, for a learned value V(x) (the critic arm).

    h(x) = last_hidden_state of the decoder at the prompt's last token      (D,)

That is the state the LM head reads to predict the first response token: everything the
policy has computed about the prompt before it answers. One no-grad forward over the
prompt tokens only (no response, no LM head), in right-padded micro-batches: causal
attention never reaches the padding after a row, and positions are 0..L-1, so no mask is
needed (as in `spo.policy.logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from spo.policy.logprobs import decoder_of


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
    decoder = decoder_of(model)
    device = next(model.parameters()).device
    rows: list[Tensor] = []
    with torch.no_grad():
        for lo in range(0, len(prompt_tokens), micro_batch_size):
            chunk = prompt_tokens[lo : lo + micro_batch_size]
            len_b = torch.tensor([len(p) for p in chunk])
            ids_bL = torch.full((len(chunk), int(len_b.max())), int(pad_id), dtype=torch.long)
            for b, p in enumerate(chunk):
                ids_bL[b, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
            hidden_bLD = decoder(input_ids=ids_bL.to(device), use_cache=False).last_hidden_state
            rows.append(hidden_bLD[torch.arange(len(chunk)), (len_b - 1).to(device)].float().cpu())
    if not rows:
        return torch.zeros((0, model.config.hidden_size))
    return torch.cat(rows)
