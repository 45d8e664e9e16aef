"""completion_logp: same numbers as the naive full-logits path, whatever the padding,
batching or chunking; masked positions are exactly zero and carry no gradient."""

from __future__ import annotations

import pytest
import torch

from spo.policy.batch import pack
from spo.policy.logprobs import _TokenLogp, completion_logp
from spo.policy.models import load_policy

# Distinct prompt and completion lengths, including an empty completion.
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [19, 20, 21]]
COMPLETIONS = [[30, 31, 32], [33, 34, 35, 36, 37, 38], [39], []]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_policy(str(tiny_model_dir))[0]


def naive_logp(model, prompts, completions, temperature=1.0):
    """One sequence at a time, full-vocab logits for every position (the reference)."""
    T = max(len(c) for c in completions)
    out = torch.zeros(len(prompts), T)
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        if not c:
            continue
        ids = torch.tensor([p + c])
        logits = model(input_ids=ids).logits[0].float() / temperature
        logp = logits.log_softmax(-1)[len(p) - 1 : len(p) + len(c) - 1]
        out[b, : len(c)] = logp.gather(1, torch.tensor(c)[:, None]).squeeze(1)
    return out


def test_matches_naive_and_masks_are_zero(model):
    batch = pack(PROMPTS, COMPLETIONS, pad_id=0)
    with torch.no_grad():
        got = completion_logp(model, batch)
        want = naive_logp(model, PROMPTS, COMPLETIONS)
    assert got.dtype == torch.float32 and got.shape == (4, 6)
    assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()
    assert (got[batch.completion_mask_BT == 0] == 0).all()


@pytest.mark.parametrize("temperature", [0.5, 1.7])
def test_temperature(model, temperature):
    batch = pack(PROMPTS, COMPLETIONS, pad_id=0)
    with torch.no_grad():
        got = completion_logp(model, batch, temperature=temperature)
        want = naive_logp(model, PROMPTS, COMPLETIONS, temperature=temperature)
    assert torch.allclose(got, want, atol=2e-3)


def test_left_right_padding_batch_and_single_agree(model):
    right = pack(PROMPTS, COMPLETIONS, pad_id=0)
    left = pack(PROMPTS, COMPLETIONS, pad_id=0, padding_side="left")
    with torch.no_grad():
        lp_right = completion_logp(model, right)
        lp_left = completion_logp(model, left)
        singles = [
            completion_logp(model, pack([p], [c], pad_id=0))
            for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
        ]
        # select() trims to the selected rows' own lengths
        sub = right.select([1, 2])
        lp_sub = completion_logp(model, sub)
    assert torch.allclose(lp_right, lp_left, atol=2e-3)
    for b, single in enumerate(singles):
        n = len(COMPLETIONS[b])
        assert torch.allclose(lp_right[b, :n], single[0, :n], atol=2e-3)
    assert sub.input_ids_BL.shape[1] == max(len(PROMPTS[i]) + len(COMPLETIONS[i]) for i in (1, 2))
    assert lp_sub.shape == (2, 6)
    assert torch.allclose(lp_sub, lp_right[[1, 2]], atol=2e-3)


def test_chunked_equals_unchunked(model):
    batch = pack(PROMPTS, COMPLETIONS, pad_id=0)
    weights = torch.randn(batch.completion_mask_BT.shape)
    results = []
    for chunk in (1, 3, 10**6):
        model.zero_grad()
        logp = completion_logp(model, batch, chunk_size=chunk)
        (logp * weights).sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in model.parameters()]))
    model.zero_grad()
    for logp, grads in results[:-1]:
        assert torch.equal(logp, results[-1][0])
        for g, ref in zip(grads, results[-1][1], strict=True):
            # the (tied) head gradient is summed over chunks in fp32 and rounded to bf16
            # once: chunkings may differ by one bf16 step of the largest entry
            scale = ref.float().abs().max().item()
            assert torch.allclose(g.float(), ref.float(), atol=1e-2 * scale + 1e-6)


def test_gradient_matches_naive_and_ignores_masked(model):
    batch = pack(PROMPTS, COMPLETIONS, pad_id=0)
    weights = torch.randn(batch.completion_mask_BT.shape)
    model.zero_grad()
    (completion_logp(model, batch) * weights).sum().backward()
    got = [p.grad.float().clone() for p in model.parameters()]
    model.zero_grad()
    (naive_logp(model, PROMPTS, COMPLETIONS) * weights).sum().backward()
    want = [p.grad.float().clone() for p in model.parameters()]
    model.zero_grad()
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=2e-2 * w.abs().max().item() + 1e-6)

    # Only masked positions in the objective: nothing reaches the weights.
    logp = completion_logp(model, batch)
    masked = (logp * (1 - batch.completion_mask_BT)).sum()
    assert masked.item() == 0.0
    if masked.requires_grad:
        masked.backward()
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())
    model.zero_grad()


def test_token_logp_gradcheck():
    """The hand-written backward (recomputed, chunked logits) against finite differences."""
    torch.manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (7,))
    for temperature, chunk in ((1.0, 3), (0.6, 100)):
        assert torch.autograd.gradcheck(
            lambda h, w, t=temperature, c=chunk: _TokenLogp.apply(h, w, target, t, c), (h, w)
        )


def test_bad_arguments(model):
    batch = pack(PROMPTS, COMPLETIONS, pad_id=0)
    with pytest.raises(ValueError, match="temperature"):
        completion_logp(model, batch, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        completion_logp(model, batch, chunk_size=0)


SHARED = [7, 8, 9, 10, 11]  # a "system prompt" every row starts with
SHARED_PROMPTS = [[*SHARED, 20, 21], [*SHARED, 22], [*SHARED, 23, 24, 25], [*SHARED, 26, 27]]


def test_shared_prefix_len():
    from spo.policy.logprobs import shared_prefix_len

    assert shared_prefix_len(pack(SHARED_PROMPTS, COMPLETIONS, pad_id=0)) == 5
    # capped: every row keeps the position that predicts its first completion token
    same = [[*SHARED, 20]] * 3
    assert shared_prefix_len(pack(same, [[1], [2, 3], [4]], pad_id=0)) == 5
    assert shared_prefix_len(pack(PROMPTS, COMPLETIONS, pad_id=0)) == 0  # no common start
    assert shared_prefix_len(pack(SHARED_PROMPTS[:1], COMPLETIONS[:1], pad_id=0)) == 0  # 1 row
    left = pack(SHARED_PROMPTS, COMPLETIONS, pad_id=0, padding_side="left")
    assert shared_prefix_len(left) == 0


def test_shared_prefix_path_matches_naive_values_and_gradients(model):
    batch = pack(SHARED_PROMPTS, COMPLETIONS, pad_id=0)
    weights = torch.randn(batch.completion_mask_BT.shape)
    model.zero_grad()
    logp = completion_logp(model, batch)
    (logp * weights).sum().backward()
    got = [p.grad.float().clone() for p in model.parameters()]
    model.zero_grad()
    want_logp = naive_logp(model, SHARED_PROMPTS, COMPLETIONS)
    (want_logp * weights).sum().backward()
    want = [p.grad.float().clone() for p in model.parameters()]
    model.zero_grad()
    assert torch.allclose(logp.detach(), want_logp.detach(), atol=2e-3)
    assert (logp[batch.completion_mask_BT == 0] == 0).all()
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=2e-2 * w.abs().max().item() + 1e-6)
