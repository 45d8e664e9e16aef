"""MasterWeightAdamW: small updates survive bf16, it is AdamW on fp32 masters, resumes exactly."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from spo.train.optim import MasterWeightAdamW, stochastic_round_bf16_


def make_params(dtype, seed=0):
    torch.manual_seed(seed)
    return [
        torch.nn.Parameter((torch.randn(16, 8) * 0.5).to(dtype)),
        torch.nn.Parameter((torch.randn(8) * 0.5).to(dtype)),
    ]


def grads(step: int, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Deterministic bf16-representable gradients for a given step."""
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g).to(torch.bfloat16).float() for p in like]


def set_grads(params, gs):
    for p, g in zip(params, gs, strict=True):
        p.grad = g.to(p.dtype).clone()


def test_tiny_lr_updates_survive_bf16():
    lr, steps = 1e-6, 20
    naive = make_params(torch.bfloat16)
    with torch.no_grad():  # typical weight magnitudes, where bf16's spacing is >> lr
        for p in naive:
            p.copy_(p.sign() * (0.05 + p.abs()))
    start = [p.detach().clone() for p in naive]
    opt_naive = torch.optim.AdamW(naive, lr=lr, weight_decay=0.0)
    ours = [torch.nn.Parameter(s.clone()) for s in start]
    opt = MasterWeightAdamW(ours, lr=lr, max_grad_norm=None, rounding="nearest")
    for _ in range(steps):
        # constant-sign gradient: every AdamW step moves each weight by ~lr
        set_grads(naive, [torch.ones(p.shape) for p in naive])
        opt_naive.step()
        opt_naive.zero_grad()
        set_grads(ours, [torch.ones(p.shape) for p in ours])
        opt.step()
    # plain AdamW on bf16 weights: every update rounded away
    assert all(torch.equal(p, s) for p, s in zip(naive, start, strict=True))
    # fp32 masters: the full lr * steps moved, and the bf16 weights are their rounding
    for m, s, p in zip(opt.masters, start, ours, strict=True):
        assert torch.allclose(s.float() - m, torch.full(m.shape, lr * steps), rtol=5e-2)
        assert torch.equal(p, m.to(torch.bfloat16))


@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_matches_fp32_adamw(max_grad_norm):
    ref = make_params(torch.float32)
    ours = make_params(torch.bfloat16)
    with torch.no_grad():  # identical starting values (bf16-representable)
        for r, o in zip(ref, ours, strict=True):
            r.copy_(o.float())
    kw = {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
    opt_ref = torch.optim.AdamW(ref, **kw)
    opt = MasterWeightAdamW(ours, max_grad_norm=max_grad_norm, rounding="nearest", **kw)
    for step in range(5):
        gs = grads(step, ref)
        set_grads(ref, gs)
        norm_ref = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in gs])))
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(ref, max_grad_norm)
        opt_ref.step()
        opt_ref.zero_grad()
        set_grads(ours, gs)
        norm = opt.step()
        assert norm == pytest.approx(norm_ref, rel=1e-6)
        assert all(p.grad is None for p in ours)
    for r, m, p in zip(ref, opt.masters, ours, strict=True):
        assert torch.allclose(r, m, atol=1e-6)
        assert torch.equal(p, m.to(torch.bfloat16))


def test_fp32_params_are_plain_adamw():
    ref = make_params(torch.float32)
    ours = make_params(torch.float32)
    opt_ref = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.0)
    opt = MasterWeightAdamW(ours, lr=1e-2, max_grad_norm=None)
    assert all(m is p for m, p in zip(opt.masters, ours, strict=True))
    for step in range(3):
        set_grads(ref, grads(step, ref))
        opt_ref.step()
        opt_ref.zero_grad()
        set_grads(ours, grads(step, ours))
        opt.step()
    for r, p in zip(ref, ours, strict=True):
        assert torch.allclose(r, p, atol=1e-6)


def test_state_dict_round_trip_gives_identical_next_step():
    params = make_params(torch.bfloat16)
    opt = MasterWeightAdamW(params, lr=1e-3, weight_decay=0.01)
    for step in range(3):
        set_grads(params, grads(step, params))
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    snapshot = [p.detach().clone() for p in params]

    set_grads(params, grads(3, params))
    opt.step()
    expected = [p.detach().clone() for p in params]

    fresh = [torch.nn.Parameter(s.clone()) for s in snapshot]
    opt2 = MasterWeightAdamW(fresh, lr=1e-3, weight_decay=0.01)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    set_grads(fresh, grads(3, fresh))
    opt2.step()
    for e, f, m, m2 in zip(expected, fresh, opt.masters, opt2.masters, strict=True):
        assert torch.equal(e, f)
        assert torch.equal(m, m2)


def test_load_state_dict_rejects_other_model():
    opt = MasterWeightAdamW(make_params(torch.bfloat16), lr=1e-3)
    other = MasterWeightAdamW([torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))], lr=1e-3)
    with pytest.raises(ValueError, match="master"):
        other.load_state_dict(copy.deepcopy(opt.state_dict()))


def test_clipping_and_non_finite_step_is_skipped():
    params = make_params(torch.bfloat16)
    opt = MasterWeightAdamW(params, lr=1e-2, max_grad_norm=0.5)
    set_grads(params, [torch.full(p.shape, 3.0) for p in params])
    norm = opt.step()
    assert norm == pytest.approx(3.0 * (16 * 8 + 8) ** 0.5, rel=1e-4)
    before = [m.clone() for m in opt.masters]
    set_grads(params, [torch.full(p.shape, float("nan")) for p in params])
    assert math.isnan(opt.step())  # returned, not raised; the step is skipped
    set_grads(params, [torch.full(p.shape, float("inf")) for p in params])
    assert opt.step() == float("inf")
    assert all(torch.equal(b, m) for b, m in zip(before, opt.masters, strict=True))


def _bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just below and above |x| (towards and away from zero)."""
    bits = x.view(torch.int32) & -65536
    down = bits.view(torch.float32)
    up = (bits + 65536).view(torch.float32)
    return down, up


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour(sign):
    gen = torch.Generator().manual_seed(0)
    # 0.05 sits in [2^-5, 2^-4): bf16 spacing 2^-12; put x at 30% of the way up
    ulp = 2.0**-12
    base = torch.tensor(0.05).to(torch.bfloat16).float()
    x = torch.full((200_000,), float(sign * (base.abs() + 0.3 * ulp)))
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    stochastic_round_bf16_(out, x, gen)
    down, up = _bf16_neighbours(x[:1])
    values = set(out.float().unique().tolist())
    assert values == {float(down), float(up)}
    assert float((out.float() == up).float().mean()) == pytest.approx(0.3, abs=0.005)
    assert float(out.float().mean()) == pytest.approx(float(x[0]), abs=ulp * 0.005)
    # round-to-nearest loses the offset entirely
    assert float(x.to(torch.bfloat16).float().mean()) == float(base) * sign


def test_stochastic_rounding_keeps_values_already_on_the_grid():
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(10_000) * 0.1).to(torch.bfloat16).float()
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    stochastic_round_bf16_(out, x, gen)
    assert torch.equal(out.float(), x)


def test_stochastic_rounding_lets_tiny_updates_reach_bf16_weights():
    """lr 1e-6 on weights ~0.05 (spacing 2.4e-4): nearest never moves the bf16 copy,
    stochastic rounding moves it by lr * steps on average."""
    lr, steps = 1e-6, 20
    torch.manual_seed(0)
    start = (0.05 + 0.01 * torch.rand(20_000)).to(torch.bfloat16)
    arms = {}
    for rounding in ("nearest", "stochastic"):
        p = torch.nn.Parameter(start.clone())
        opt = MasterWeightAdamW([p], lr=lr, max_grad_norm=None, rounding=rounding, seed=3)
        for _ in range(steps):
            p.grad = torch.ones(p.shape, dtype=torch.bfloat16)
            opt.step()
        arms[rounding] = float((start.float() - p.detach().float()).mean())
    assert arms["nearest"] == 0.0
    assert arms["stochastic"] == pytest.approx(lr * steps, rel=0.1)


def test_stochastic_rounding_is_reproducible_from_the_seed():
    def run(seed):
        params = make_params(torch.bfloat16)
        opt = MasterWeightAdamW(params, lr=1e-3, seed=seed)
        for step in range(3):
            set_grads(params, grads(step, params))
            opt.step()
        return [p.detach().clone() for p in params]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_unknown_rounding_is_refused():
    with pytest.raises(ValueError, match="rounding"):
        MasterWeightAdamW(make_params(torch.bfloat16), lr=1e-3, rounding="floor")
