"""The critic arm's math (spo.algo.critic, the `critic` row of ALGORITHMS): the advantage
against a hand-computed case, V = σ(θ·φ) by hand, the head learning a constant and a
regression target, and its state round-tripping bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spo.algo import ADVANTAGES
from spo.algo.algorithms import ALGORITHMS, Algorithm
from spo.algo.critic import ValueHead


def test_critic_row_is_single_stream_uniform_with_spos_advantage():
    row = ALGORITHMS["critic"]
    assert row.critic and not row.grouped and not row.tracker_baseline
    assert row.sampler == "uniform" and row.advantage == "spo"
    with pytest.raises(ValueError, match="critic is a single-stream baseline"):
        Algorithm(advantage="grpo", grouped=True, sampler="uniform", critic=True)
    with pytest.raises(ValueError, match="critic is a single-stream baseline"):
        Algorithm(
            advantage="spo", grouped=False, sampler="uniform", tracker_baseline=True, critic=True
        )


def test_advantage_of_the_critic_row_by_hand():
    # A = r − V = [0.5, −0.25, 0.2, 0]; mean 0.1125; deviations [0.3875, −0.3625, 0.0875,
    # −0.1125]; Σ dev² = 0.301875; unbiased std = sqrt(0.301875 / 3) = sqrt(0.100625).
    reward_B = torch.tensor([1.0, 0.0, 1.0, 0.5])
    value_B = torch.tensor([0.5, 0.25, 0.8, 0.5])
    adv_B = ADVANTAGES[ALGORITHMS["critic"].advantage](reward_B, baseline_B=value_B)
    std = math.sqrt(0.100625)
    want = torch.tensor([0.3875, -0.3625, 0.0875, -0.1125]) / (std + 1e-8)
    torch.testing.assert_close(adv_B, want, rtol=0, atol=1e-6)


def test_value_and_features_by_hand():
    head = ValueHead(2, init_value=0.2)
    torch.testing.assert_close(head.value(torch.randn(5, 2)), torch.full((5,), 0.2))
    # the first batch sets σ² = [1, 4] (population variance); the loss reported is that of
    # V before the fit: ((0.2 − 1)² + 0.2²)/2 = 0.34
    stats = head.fit(torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([1.0, 0.0]))
    assert stats["loss"] == pytest.approx(0.34, abs=1e-6)
    torch.testing.assert_close(head.var_D, torch.tensor([1.0, 4.0]))
    # batch [[1, −1], [3, 1]]: mean [2, 0]; z = [[−1/sqrt(1 + 1e-5), −1/sqrt(4 + 1e-5)],
    # [+1/sqrt(1 + 1e-5), +1/sqrt(4 + 1e-5)]]; φ = [z/D, 1] with D = 2
    batch = torch.tensor([[1.0, -1.0], [3.0, 1.0]])
    a, c = 1 / math.sqrt(1.00001), 1 / math.sqrt(4.00001)
    phi = head.features(batch)
    torch.testing.assert_close(phi, torch.tensor([[-a / 2, -c / 2, 1.0], [a / 2, c / 2, 1.0]]))
    with torch.no_grad():
        head.theta.copy_(torch.tensor([-0.4, 0.2, 0.3]))
    # V = clip(0.3 + (−0.4·z₁ + 0.2·z₂)/2, 0, 1)
    want = [0.3 + (0.4 * a - 0.2 * c) / 2, 0.3 - (0.4 * a - 0.2 * c) / 2]
    torch.testing.assert_close(head.value(batch), torch.tensor(want))
    # a shift common to the whole batch changes nothing (centred on the batch)
    torch.testing.assert_close(head.value(batch + 7.0), torch.tensor(want))
    with torch.no_grad():
        head.theta.copy_(torch.tensor([-8.0, 0.0, 0.3]))  # 0.3 ± 4a: clipped to [0, 1]
    torch.testing.assert_close(head.value(batch), torch.tensor([1.0, 0.0]))
    # the second batch counts as much as the first (weight max(0.1, 1/2)) ...
    head.fit(torch.tensor([[0.0, 2.0], [0.0, 2.0]]), torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(head.var_D, torch.tensor([0.5, 2.0]))
    # ... and from the 10th on, a new batch weighs momentum = 0.1
    for _ in range(9):
        head.fit(torch.tensor([[0.0, 2.0], [0.0, 2.0]]), torch.tensor([0.0, 0.0]))
    assert head.batches == 11
    before = head.var_D.clone()
    head.fit(torch.tensor([[0.0, 0.0], [2.0, 4.0]]), torch.tensor([0.0, 0.0]))  # var [1, 4]
    torch.testing.assert_close(head.var_D, 0.9 * before + 0.1 * torch.tensor([1.0, 4.0]))


def test_head_learns_a_constant():
    gen = torch.Generator().manual_seed(0)
    head = ValueHead(16, lr=0.05, updates_per_step=1)
    for _ in range(300):
        hidden = torch.randn(32, 16, generator=gen)
        head.fit(hidden, torch.full((32,), 0.8))
    v = head.value(torch.randn(256, 16, generator=gen))
    assert abs(float(v.mean()) - 0.8) < 0.02 and float(v.std()) < 0.05


def test_head_learns_a_regression_target_and_reports_its_loss():
    """r = clip(0.5 + 0.2·u·h, 0, 1) for a fixed unit direction u: the head recovers it
    (out of sample)."""
    gen = torch.Generator().manual_seed(1)
    D = 8
    u = torch.randn(D, generator=gen)

    def target(hidden):  # hidden ~ N(0, I): the running statistics tend to μ = 0, σ² = 1
        return (0.5 + 0.2 * hidden @ (u / u.norm())).clamp(0.0, 1.0)

    head = ValueHead(D, lr=0.05, updates_per_step=2)
    losses = []
    for _ in range(400):
        hidden = torch.randn(64, D, generator=gen)
        losses.append(head.fit(hidden, target(hidden)))
    assert losses[-1]["loss"] < 0.1 * losses[0]["loss"]
    assert losses[0]["fit_loss"] < losses[0]["loss"]  # the in-sample loss after the steps
    test = torch.randn(512, D, generator=gen)
    assert float((head.value(test) - target(test)).abs().max()) < 0.1


def test_state_round_trip_continues_bit_for_bit():
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 4, generator=gen), torch.rand(8, generator=gen)) for _ in range(6)]
    a, b = ValueHead(4, lr=0.1), ValueHead(4, lr=0.1)
    fresh = b.state_dict()
    assert fresh["adam_step"] == 0 and not fresh["exp_avg"].any()
    for hidden, reward in batches[:3]:
        a.fit(hidden, reward)
    state = {k: np.array(v) for k, v in a.state_dict().items()}  # through numpy, as on disk
    assert state["adam_step"] == 3 * a.updates_per_step
    b.load_state_dict(state)
    for hidden, reward in batches[3:]:
        assert a.fit(hidden, reward) == b.fit(hidden, reward)
    for key, value in a.state_dict().items():
        assert np.array_equal(value, b.state_dict()[key]), key
    b.load_state_dict(fresh)  # back to a fresh head: Adam restarts too
    assert b.state_dict()["adam_step"] == 0
    assert torch.equal(b.value(batches[0][0]), torch.full((8,), 0.5))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ValueHead(4, lr=0.0), r"lr must be in \(0, inf\]; got 0.0"),
        (lambda: ValueHead(4, updates_per_step=0), "updates_per_step must be >= 1"),
        (lambda: ValueHead(4, init_value=1.5), r"init_value must be in \[0, 1\]; got 1.5"),
        (lambda: ValueHead(0), "dim must be >= 1"),
        (
            lambda: ValueHead(4).value(torch.zeros(2, 5)),
            r"hidden_BD must have shape \(B, 4\); got \(2, 5\)",
        ),
        (
            lambda: ValueHead(4).fit(torch.zeros(2, 4), torch.zeros(3)),
            r"reward_B must have shape \(2,\)",
        ),
        (
            lambda: ValueHead(4).load_state_dict(ValueHead(3).state_dict()),
            r"critic state theta has shape \(4,\), this head needs \(5,\)",
        ),
    ],
)
def test_bad_input_is_one_clear_line(make, message):
    with pytest.raises(ValueError, match=message) as e:
        make()
    assert "\n" not in str(e.value)
