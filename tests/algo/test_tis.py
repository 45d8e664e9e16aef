"""Truncated importance sampling (train/inference mismatch): hand-computed weights and loss."""

from __future__ import annotations

import math

import pytest
import torch

from spo.algo import ppo_clip_loss, tis_weight


def _case():
    # gaps old − behaviour = log 0.5, log 2, log 5, (padding)
    behaviour = torch.tensor([[0.0, 0.0, 0.0, -7.0]])
    old = torch.tensor([[math.log(0.5), math.log(2.0), math.log(5.0), 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    return old, behaviour, mask


def test_weights_are_capped_ratios_and_zero_on_padding():
    old, behaviour, mask = _case()
    w, stats = tis_weight(old, behaviour, mask, tis_cap=3.0)
    assert w[0].tolist() == pytest.approx([0.5, 2.0, 3.0, 0.0], rel=1e-6)
    assert stats["tis_weight_mean"] == pytest.approx(5.5 / 3, rel=1e-6)
    assert stats["tis_clip_fraction"] == pytest.approx(1 / 3)
    gap = (math.log(2) + math.log(2) + math.log(5)) / 3
    assert stats["tis_logp_gap"] == pytest.approx(gap, rel=1e-6)
    assert not w.requires_grad


def test_weighted_loss_and_gradient_by_hand():
    old, behaviour, mask = _case()
    w, _ = tis_weight(old, behaviour, mask, tis_cap=3.0)
    logp = old.clone().requires_grad_(True)  # on-policy w.r.t. the trainer: ratio 1
    loss, _ = ppo_clip_loss(logp, old, torch.tensor([2.0]), mask, weight_BT=w)
    # loss_t = −A·r·w_t, token-mean over 3 tokens: −2·(0.5 + 2 + 3)/3 = −11/3
    assert loss.item() == pytest.approx(-11 / 3, rel=1e-6)
    loss.backward()
    # d/dlogp_t (−A r w_t / 3) at r = 1: −2·w_t/3
    assert logp.grad[0].tolist() == pytest.approx([-1 / 3, -4 / 3, -2.0, 0.0], rel=1e-6)


def test_unit_weights_change_nothing_and_bad_input_is_refused():
    old, _, mask = _case()
    logp = old + 0.1
    adv = torch.tensor([-1.5])
    plain, _ = ppo_clip_loss(logp, old, adv, mask)
    weighted, _ = ppo_clip_loss(logp, old, adv, mask, weight_BT=torch.ones_like(old))
    assert weighted.item() == pytest.approx(plain.item(), rel=1e-7)
    with pytest.raises(ValueError, match="tis_cap"):
        tis_weight(old, old, mask, tis_cap=0.0)
    with pytest.raises(ValueError, match="weight_BT"):
        ppo_clip_loss(logp, old, adv, mask, weight_BT=torch.ones(2))
