"""PPO-clip with clip-higher and dual clip (§6): hand cases, gradients, masking, accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from spo.algo import AGGREGATIONS, ppo_clip_loss

NAN, INF = float("nan"), float("inf")


def _one_token_rows(ratios, advs):
    old = torch.zeros(len(ratios), 1)
    logp = torch.log(torch.tensor(ratios)).unsqueeze(1)
    return logp, old, torch.tensor(advs), torch.ones(len(ratios), 1)


def test_hand_computed_tokens_and_stats():
    ratios = [1.5, 0.5, 20.0, 0.5, 1.1]
    advs = [1.0, -1.0, -1.0, 1.0, -1.0]
    loss, stats = ppo_clip_loss(*_one_token_rows(ratios, advs))
    # tok 1: A=+1, r=1.5: −min(1.5, clip→1.28) = −1.28              (clipped)
    # tok 2: A=−1, r=0.5: −min(−0.5, −0.8) = 0.8                    (clipped)
    # tok 3: A=−1, r=20: −min(−20, −1.28) = 20 → dual: min(20, 10) = 10
    # tok 4: A=+1, r=0.5: −min(0.5, 0.8) = −0.5                     (unclipped)
    # tok 5: A=−1, r=1.1: −min(−1.1, −1.1) = 1.1
    expected = (-1.28 + 0.8 + 10.0 - 0.5 + 1.1) / 5  # = 10.12/5 = 2.024
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["clip_fraction"] == pytest.approx(2 / 5)
    assert stats["dual_clip_fraction"] == pytest.approx(1 / 5)
    assert stats["ratio_mean"] == pytest.approx(23.6 / 5, rel=1e-6)  # (1.5+0.5+20+0.5+1.1)/5
    assert stats["ratio_max"] == pytest.approx(20.0, rel=1e-6)
    k3 = sum((r - 1) - math.log(r) for r in ratios) / 5  # KL k3 estimator
    assert stats["approx_kl"] == pytest.approx(k3, rel=1e-5)
    assert all(isinstance(v, float) for v in stats.values())
    # without dual clip token 3 costs 20: (−1.28 + 0.8 + 20 − 0.5 + 1.1)/5 = 4.024
    loss_nd, _ = ppo_clip_loss(*_one_token_rows(ratios, advs), dual_clip=None)
    assert loss_nd.item() == pytest.approx(4.024, rel=1e-6)


def test_asymmetric_clip_bounds():
    # A = +1, r = 1.25 < 1 + 0.28: not clipped (it would be with symmetric 0.2)
    loss, stats = ppo_clip_loss(*_one_token_rows([1.25], [1.0]))
    assert loss.item() == pytest.approx(-1.25) and stats["clip_fraction"] == 0.0
    # A = −1, r = 0.75 < 1 − 0.2: clipped to 0.8 → loss 0.8
    loss, stats = ppo_clip_loss(*_one_token_rows([0.75], [-1.0]))
    assert loss.item() == pytest.approx(0.8) and stats["clip_fraction"] == 1.0


def test_aggregations_by_hand():
    # ratio = 1 everywhere (on-policy) → loss_tok = −A per token
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    adv = torch.tensor([2.0, -1.0])
    # tokens: row 0 → [−2]; row 1 → [1, 1, 1]
    cases = {
        "token-mean": (-2 + 3) / 4,  # Σ/4 tokens = 0.25
        "seq-mean-token-sum": (-2 + 3) / 2,  # (−2 + 3)/2 rows = 0.5
        "seq-mean-token-mean": (-2 / 1 + 3 / 3) / 2,  # (−2 + 1)/2 = −0.5
    }
    assert set(cases) == set(AGGREGATIONS)
    for agg, expected in cases.items():
        loss, _ = ppo_clip_loss(logp, logp, adv, mask, agg=agg)
        assert loss.item() == pytest.approx(expected), agg


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_on_policy_gradient_equals_vanilla_policy_gradient(agg):
    torch.manual_seed(0)
    B, T = 4, 6
    theta = torch.randn(B, T, requires_grad=True)
    logp = torch.nn.functional.logsigmoid(theta)
    mask = (torch.rand(B, T) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(B)
    loss, stats = ppo_clip_loss(logp, logp.detach(), adv, mask, agg=agg)
    (g_ppo,) = torch.autograd.grad(loss, theta)
    # vanilla PG: −A·log π per token, same aggregation
    logp2 = torch.nn.functional.logsigmoid(theta)
    tok = -adv[:, None] * logp2 * mask
    if agg == "token-mean":
        pg = tok.sum() / mask.sum()
    elif agg == "seq-mean-token-sum":
        pg = tok.sum(1).mean()
    else:
        pg = (tok.sum(1) / mask.sum(1)).mean()
    (g_pg,) = torch.autograd.grad(pg, theta)
    torch.testing.assert_close(g_ppo, g_pg, rtol=1e-6, atol=1e-7)
    assert stats["clip_fraction"] == 0.0 and stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_masked_tokens_get_zero_gradient_and_padding_never_changes_the_loss(agg):
    torch.manual_seed(1)
    B, T = 3, 5
    logp = (-torch.rand(B, T)).requires_grad_()
    old = -torch.rand(B, T)
    adv = torch.randn(B)
    mask = torch.ones(B, T)
    base, _ = ppo_clip_loss(logp, old, adv, mask, agg=agg)
    # pad: 3 extra columns and one extra row, with garbage log-probs (NaN, −inf, +inf)
    pad_logp = torch.full((B + 1, T + 3), NAN)
    pad_logp[:B, :T] = logp.detach()
    pad_logp[B, :2] = -INF
    pad_logp.requires_grad_()
    pad_old = torch.full((B + 1, T + 3), INF)
    pad_old[:B, :T] = old
    pad_adv = torch.cat([adv, torch.tensor([5.0])])
    pad_mask = torch.zeros(B + 1, T + 3)
    pad_mask[:B, :T] = 1
    padded, stats = ppo_clip_loss(pad_logp, pad_old, pad_adv, pad_mask, agg=agg)
    torch.testing.assert_close(padded, base)
    (g,) = torch.autograd.grad(padded, pad_logp)
    assert torch.isfinite(g).all()
    assert torch.equal(g[pad_mask == 0], torch.zeros(int((pad_mask == 0).sum())))
    (g_base,) = torch.autograd.grad(base, logp)
    torch.testing.assert_close(g[:B, :T], g_base)
    assert all(math.isfinite(v) for v in stats.values())


def test_dual_clip_bounds_loss_for_negative_advantages():
    torch.manual_seed(2)
    B, T = 8, 10
    logp = torch.randn(B, T) * 5  # ratios up to e^±15
    old = torch.zeros(B, T)
    adv = -torch.rand(B) - 0.1
    mask = torch.ones(B, T)
    c = 10.0
    loss, stats = ppo_clip_loss(logp, old, adv, mask, dual_clip=c)
    # every token loss <= −c·A, so the token-mean <= c·mean_B|A|
    assert loss.item() <= c * adv.abs().mean().item() + 1e-5
    assert stats["dual_clip_fraction"] > 0
    unbounded, _ = ppo_clip_loss(logp, old, adv, mask, dual_clip=None)
    assert unbounded.item() > loss.item()
    # gradient through a dual-clipped token is exactly zero (constant −c·A)
    lp = torch.tensor([[math.log(50.0)]], requires_grad=True)
    out, _ = ppo_clip_loss(lp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    assert out.item() == pytest.approx(10.0)
    (g,) = torch.autograd.grad(out, lp)
    assert g.item() == 0.0


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_micro_batch_accumulation_with_global_normalizer_equals_one_batch(agg):
    torch.manual_seed(3)
    B, T = 6, 7
    theta = torch.randn(B, T, requires_grad=True)
    old = torch.nn.functional.logsigmoid(torch.randn(B, T))
    adv = torch.randn(B)
    mask = (torch.rand(B, T) > 0.4).float()
    mask[0] = 0  # an empty row does not count as a sequence
    mask[1, 0] = 1
    full, _ = ppo_clip_loss(torch.nn.functional.logsigmoid(theta), old, adv, mask, agg=agg)
    (g_full,) = torch.autograd.grad(full, theta)
    norm = float(mask.sum()) if agg == "token-mean" else float((mask.sum(1) > 0).sum())
    total = 0.0
    for lo, hi in ((0, 2), (2, 3), (3, 6)):
        logp = torch.nn.functional.logsigmoid(theta[lo:hi])
        part, _ = ppo_clip_loss(logp, old[lo:hi], adv[lo:hi], mask[lo:hi], agg=agg, normalizer=norm)
        part.backward()
        total += part.item()
    assert total == pytest.approx(full.item(), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(theta.grad, g_full)


def test_per_token_advantages_accepted():
    torch.manual_seed(4)
    logp, old = torch.randn(3, 4), torch.randn(3, 4)
    adv = torch.randn(3)
    mask = torch.ones(3, 4)
    a, _ = ppo_clip_loss(logp, old, adv, mask)
    b, _ = ppo_clip_loss(logp, old, adv[:, None].expand(3, 4), mask)
    torch.testing.assert_close(a, b)


def test_empty_mask_gives_zero_loss_not_nan():
    loss, stats = ppo_clip_loss(
        torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3)
    )
    assert loss.item() == 0.0 and set(stats.values()) == {0.0}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"agg": "sum"}, "agg must be one of token-mean"),
        ({"eps_low": 1.0}, "eps_low"),
        ({"eps_high": -0.1}, "eps_high"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"normalizer": 0.0}, "normalizer"),
    ],
)
def test_invalid_options(kwargs, match):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        ppo_clip_loss(x, x, torch.ones(2), torch.ones(2, 3), **kwargs)


def test_invalid_shapes_and_nan_advantage():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="old_logp_BT must have the shape"):
        ppo_clip_loss(x, torch.zeros(2, 4), torch.ones(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="adv_B must have shape"):
        ppo_clip_loss(x, x, torch.ones(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="adv_B must be finite; got nan"):
        ppo_clip_loss(x, x, torch.tensor([1.0, NAN]), torch.ones(2, 3))
    with pytest.raises(ValueError, match="2-D"):
        ppo_clip_loss(torch.zeros(3), torch.zeros(3), torch.ones(3), torch.ones(3))
