"""pack / PackedBatch.select: layout, masks and trimming."""

from __future__ import annotations

import pytest
import torch

from spo.policy.batch import pack

PROMPTS = [[1, 2, 3], [4], [5, 6]]
COMPLETIONS = [[7, 8], [9, 10, 11, 12], []]


@pytest.mark.parametrize("side", ["right", "left"])
def test_pack_layout(side):
    batch = pack(PROMPTS, COMPLETIONS, pad_id=0, padding_side=side)
    assert batch.input_ids_BL.shape == (3, 5)
    assert batch.completion_mask_BT.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    for b, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS, strict=True)):
        start, n = int(batch.seq_start_B[b]), len(p) + len(c)
        assert batch.input_ids_BL[b, start : start + n].tolist() == p + c
        assert batch.attention_mask_BL[b].sum() == n
        assert batch.position_ids_BL[b, start : start + n].tolist() == list(range(n))
        cs = int(batch.completion_start_B[b])
        assert batch.input_ids_BL[b, cs : cs + len(c)].tolist() == c
        assert batch.completion_ids_BT[b, : len(c)].tolist() == c
    if side == "right":
        assert (batch.seq_start_B == 0).all()
    assert batch.completion_len_B.tolist() == [2, 4, 0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_select_trims_to_own_lengths(side):
    batch = pack(PROMPTS, COMPLETIONS, pad_id=0, padding_side=side)
    sub = batch.select(torch.tensor([0, 2]))
    assert sub.input_ids_BL.shape == (2, 5)  # row 0: 3 + 2 tokens
    assert sub.completion_mask_BT.shape == (2, 2)
    assert sub.input_ids_BL[0, sub.seq_start_B[0] :][:5].tolist() == [1, 2, 3, 7, 8]
    single = batch.select([2])
    assert single.input_ids_BL.tolist() == [[5, 6]]
    assert single.completion_mask_BT.shape == (1, 0)
    assert batch.select(slice(1, 2)).input_ids_BL.tolist() == [[4, 9, 10, 11, 12]]


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="prompts"):
        pack([[1]], [[2], [3]], pad_id=0)
    with pytest.raises(ValueError, match="non-empty prompt"):
        pack([[]], [[2]], pad_id=0)
    with pytest.raises(ValueError, match="padding_side"):
        pack([[1]], [[2]], pad_id=0, padding_side="middle")
