"""The packed training batch: prompt + completion pairs padded into one tensor batch.

`PackedBatch` is one padded tensor batch of prompt + completion sequences plus the
indexing that `spo.policy.logprobs.completion_logp` needs to score only the completion tokens:
row b holds its sequence at columns `[seq_start_B[b], seq_start_B[b] + seq_len_B[b])` and
its completion starts at column `completion_start_B[b]`; the hidden state at column
`completion_start_B[b] + t - 1` predicts completion token t. Sequences are right-padded by
default (training needs no attention mask then: causal attention never looks ahead into
the padding); left padding exists to test that the result does not depend on it.

Multi-turn (tool-integrated) completions interleave generated turns with tool messages:
`pack(..., loss_mask=...)` takes a 0/1 mask per completion token and stores it as
`completion_mask_BT`, so tool-output tokens (and the chat-template tokens around them) sit
in the sequence as context but are never scored: no log-prob, no loss, no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PackedBatch:
    """Padded prompt + completion sequences; see the module docstring for the layout."""

    input_ids_BL: Tensor  # (B, L) int64, pad_id outside the sequences
    attention_mask_BL: Tensor  # (B, L) int64, 1 on sequence tokens
    position_ids_BL: Tensor  # (B, L) int64, 0.. along each sequence, 0 on padding
    completion_ids_BT: Tensor  # (B, T) int64, pad_id past each completion
    completion_mask_BT: Tensor  # (B, T) float32, 1 for generated (trainable) completion tokens
    completion_start_B: Tensor  # (B,) int64, column of each completion's first token
    seq_start_B: Tensor  # (B,) int64, column of each sequence's first token
    seq_len_B: Tensor  # (B,) int64, prompt + completion length
    pad_id: int
    padding_side: str = "right"

    def __len__(self) -> int:
        return self.input_ids_BL.shape[0]

    @property
    def completion_len_B(self) -> Tensor:
        return self.completion_mask_BT.sum(1).long()

    def micro_batches(self, lo: int, hi: int, size: int) -> list[Tensor]:
        """Rows lo..hi-1 cut into index sets of at most `size`, rows of similar length
        together: `select` trims each set to its own longest sequence, so sorting by length
        first removes most padding (a third of the trained tokens for 64 arithmetic samples)."""
        return self.micro_batches_of(torch.arange(lo, hi), size)

    def micro_batches_of(self, rows: Tensor, size: int) -> list[Tensor]:
        """`micro_batches` of any row index set (e.g. a shuffled mini-batch)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return list(rows[torch.argsort(self.seq_len_B[rows], stable=True)].split(size))

    def select(self, idx: Tensor | list[int] | slice) -> PackedBatch:
        """Rows `idx` as their own batch, trimmed to their own longest sequence/completion."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx, dtype=torch.long)
        seq_start = self.seq_start_B[idx]
        seq_end = seq_start + self.seq_len_B[idx]
        lo = int(seq_start.min()) if len(idx) else 0
        hi = int(seq_end.max()) if len(idx) else 0
        T = _last_scored(self.completion_mask_BT[idx]) if len(idx) else 0
        return PackedBatch(
            input_ids_BL=self.input_ids_BL[idx, lo:hi],
            attention_mask_BL=self.attention_mask_BL[idx, lo:hi],
            position_ids_BL=self.position_ids_BL[idx, lo:hi],
            completion_ids_BT=self.completion_ids_BT[idx, :T],
            completion_mask_BT=self.completion_mask_BT[idx, :T],
            completion_start_B=self.completion_start_B[idx] - lo,
            seq_start_B=seq_start - lo,
            seq_len_B=self.seq_len_B[idx],
            pad_id=self.pad_id,
            padding_side=self.padding_side,
        )


def _last_scored(mask_BT: Tensor) -> int:
    """1 + the last column any row scores (a tool mask has holes: not the row sums)."""
    cols = mask_BT.any(0).nonzero()
    return int(cols[-1]) + 1 if len(cols) else 0


def pack(
    prompt_tokens: list[list[int]],
    completion_ids: list[list[int]],
    *,
    pad_id: int,
    padding_side: str = "right",
    loss_mask: list[list[float]] | None = None,
) -> PackedBatch:
    """Pad prompt + completion pairs into one batch (right padding unless asked otherwise).

    loss_mask: optional 0/1 per completion token (0 = tool output / template: context only);
    None = every completion token is generated and trained on.
    """
    if len(prompt_tokens) != len(completion_ids):
        raise ValueError(
            f"pack got {len(prompt_tokens)} prompts but {len(completion_ids)} completions"
        )
    if loss_mask is not None and [len(m) for m in loss_mask] != [len(c) for c in completion_ids]:
        raise ValueError("pack needs loss_mask to hold one entry per completion token")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
    if any(len(p) == 0 for p in prompt_tokens):
        raise ValueError("pack needs a non-empty prompt for every completion")
    B = len(prompt_tokens)
    seq_len = [len(p) + len(c) for p, c in zip(prompt_tokens, completion_ids, strict=True)]
    L = max(seq_len, default=0)
    T = max((len(c) for c in completion_ids), default=0)
    input_ids_BL = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask_BL = torch.zeros((B, L), dtype=torch.long)
    position_ids_BL = torch.zeros((B, L), dtype=torch.long)
    completion_ids_BT = torch.full((B, T), pad_id, dtype=torch.long)
    completion_mask_BT = torch.zeros((B, T), dtype=torch.float32)
    seq_start_B = torch.zeros(B, dtype=torch.long)
    completion_start_B = torch.zeros(B, dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompt_tokens, completion_ids, strict=True)):
        n = len(p) + len(c)
        start = 0 if padding_side == "right" else L - n
        input_ids_BL[b, start : start + n] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attention_mask_BL[b, start : start + n] = 1
        position_ids_BL[b, start : start + n] = torch.arange(n)
        completion_ids_BT[b, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        completion_mask_BT[b, : len(c)] = (
            1.0 if loss_mask is None else torch.tensor(loss_mask[b], dtype=torch.float32)
        )
        seq_start_B[b] = start
        completion_start_B[b] = start + len(p)
    return PackedBatch(
        input_ids_BL=input_ids_BL,
        attention_mask_BL=attention_mask_BL,
        position_ids_BL=position_ids_BL,
        completion_ids_BT=completion_ids_BT,
        completion_mask_BT=completion_mask_BT,
        completion_start_B=completion_start_B,
        seq_start_B=seq_start_B,
        seq_len_B=torch.tensor(seq_len, dtype=torch.long),
        pad_id=pad_id,
        padding_side=padding_side,
    )


def pad_logp(logp: list[Tensor], T: int) -> Tensor:
    """Per-completion log-probs as a (B, T) float32 tensor laid out like `completion_ids_BT`
    (right-padded with 0; longer rows are cut at T)."""
    out_BT = torch.zeros((len(logp), T), dtype=torch.float32)
    for b, lp in enumerate(logp):
        n = min(len(lp), T)
        out_BT[b, :n] = lp[:n].float()
    return out_BT
