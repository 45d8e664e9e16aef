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


def test_weight_is_exp_of_old_minus_behaviour_and_cap_equality_is_not_clipping():
    # behaviour log-probs ≠ 0 here, so old − behaviour and old + behaviour differ
    behaviour = torch.tensor([[-1.0, -2.0, -0.5]])
    old = torch.tensor([[-1.0, -1.5, -1.2]])
    mask = torch.ones(1, 3)
    w, stats = tis_weight(old, behaviour, mask, tis_cap=1.0)
    # gaps 0, 0.5, −0.7 → exp: 1 (exactly the cap: not clipped), e^0.5 → 1, e^−0.7
    assert w[0].tolist() == pytest.approx([1.0, 1.0, math.exp(-0.7)], rel=1e-6)
    assert stats["tis_clip_fraction"] == pytest.approx(1 / 3)
    assert stats["tis_logp_gap"] == pytest.approx(1.2 / 3, rel=1e-6)


def test_cap_below_one_is_allowed():
    old, behaviour, mask = _case()
    w, stats = tis_weight(old, behaviour, mask, tis_cap=0.25)
    assert w[0].tolist() == pytest.approx([0.25, 0.25, 0.25, 0.0])
    assert stats["tis_clip_fraction"] == 1.0


def test_no_masked_token_gives_zero_weights_and_zero_stats():
    old, behaviour, _ = _case()
    w, stats = tis_weight(old, behaviour, torch.zeros(1, 4), tis_cap=3.0)
    assert torch.equal(w, torch.zeros(1, 4))
    assert stats == {"tis_weight_mean": 0.0, "tis_clip_fraction": 0.0, "tis_logp_gap": 0.0}
    # one masked token is not "none": its stats are its own
    one = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    w, stats = tis_weight(old, behaviour, one, tis_cap=3.0)
    assert stats["tis_weight_mean"] == pytest.approx(2.0, rel=1e-6)
    assert stats["tis_logp_gap"] == pytest.approx(math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("which", ["old_logp_BT", "behaviour_logp_BT"])
def test_bad_logp_shape_names_the_argument(which):
    old, behaviour, mask = _case()
    args = {"old_logp_BT": old, "behaviour_logp_BT": behaviour}
    args[which] = torch.zeros(1, 3)
    with pytest.raises(ValueError) as info:
        tis_weight(args["old_logp_BT"], args["behaviour_logp_BT"], mask, tis_cap=3.0)
    assert str(info.value) == f"{which} must be a tensor of the shape of mask_BT"
    with pytest.raises(ValueError, match=r"^tis_cap must be in \(0, inf\]; got 0.0$"):
        tis_weight(old, behaviour, mask, tis_cap=0.0)
