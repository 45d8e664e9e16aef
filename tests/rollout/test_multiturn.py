"""Tool messages as token ids from the chat template; masks of a multi-turn pack."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from spo.policy.batch import pack
from spo.rollout.multiturn import Sample, ToolMessages, apply_tool


def test_tool_message_ids_follow_the_chat_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = ToolMessages(tok)
    after_eos = tok.decode(messages.ids("42", ended=True))
    assert after_eos == "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    cut_off = tok.decode(messages.ids("42", ended=False))  # no eos generated: close the turn
    assert cut_off == "<|im_end|>" + after_eos
    user = tok.decode(ToolMessages(tok, role="user").ids("x", ended=True))
    assert user == "\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"


def test_tool_tokens_are_masked_out_of_the_packed_batch(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    s = Sample(uid=0, prompt_idx=0, group=0, prompt_tokens=[5, 6, 7])
    s.completion_ids, s.loss_mask, s.logp, s.ended = [10, 11, 2], [1, 1, 1], [-1.0] * 3, True
    apply_tool(s, "out", ToolMessages(tok))
    n_tool = len(s.completion_ids) - 3
    s.completion_ids += [12]
    s.loss_mask += [1]
    batch = pack(
        [s.prompt_tokens, [5]],
        [s.completion_ids, [9, 9]],
        pad_id=0,
        loss_mask=[s.loss_mask, [1, 1]],
    )
    mask = batch.completion_mask_BT
    assert mask[0].tolist() == [1.0] * 3 + [0.0] * n_tool + [1.0]
    assert mask[1].tolist() == [1.0, 1.0] + [0.0] * (n_tool + 2)
    assert batch.completion_len_B.tolist() == [4, 2]  # trained tokens only
    # select() keeps the generated token after the hole (a row-sum length would cut it)
    sub = batch.select([0])
    assert sub.completion_mask_BT.shape[1] == len(s.completion_ids)
    assert torch.equal(sub.completion_ids_BT[0], torch.tensor(s.completion_ids))
