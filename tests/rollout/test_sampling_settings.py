"""Per-call `SamplingSettings`: every engine honours them (HF through the Llama decoder and
through the model's own forward, sharded, vLLM against its fake in test_vllm_engine.py,
Ray in tests/train/test_ray.py), and a call without them samples as configured."""

from __future__ import annotations

import pytest
import torch

from spo.policy.models import encode_prompts
from spo.rollout import SamplingSettings
from spo.rollout.hf import HFEngine
from spo.rollout.shard import ShardedEngine, shard_bounds, shard_seed


@pytest.fixture(scope="module")
def prompts(policy):
    _, tokenizer = policy
    return encode_prompts(
        tokenizer, [f"Count {i} to {i * 7 % 11}." * (1 + i % 2) for i in range(10)]
    )


def test_settings_validate_fill_from_the_engine_and_repeat():
    engine = SamplingSettings(1.0, 0.9, 16)
    got = SamplingSettings(temperature=0.0, n=3).over(engine)
    assert got == SamplingSettings(0.0, 0.9, 16, n=3) and got.greedy
    assert not SamplingSettings().over(engine).greedy
    assert SamplingSettings(n=2).repeat([[1], [2, 3]]) == [[1], [1], [2, 3], [2, 3]]
    for bad, message in (
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"n": 0}, "n must be"),
    ):
        with pytest.raises(ValueError, match=message):
            SamplingSettings(**bad)


@pytest.mark.parametrize("fast", [True, False], ids=["llama-decoder", "hf-forward"])
def test_per_call_settings_equal_an_engine_configured_with_them(policy, prompts, fast):
    model, tokenizer = policy
    engine = HFEngine(model, tokenizer, max_new_tokens=12, batch_size=4, fast=fast)
    for settings in (
        SamplingSettings(temperature=0.7, top_p=0.8, max_new_tokens=5),
        SamplingSettings(temperature=0.0, max_new_tokens=7),
        SamplingSettings(temperature=1.3),
    ):
        got = engine.generate(prompts, seed=11, sampling=settings)
        s = settings.over(engine.sampling)
        configured = HFEngine(
            model,
            tokenizer,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            batch_size=4,
            fast=fast,
        )
        want = configured.generate(prompts, seed=11)
        assert got.completion_ids == want.completion_ids
        for a, b in zip(got.logp, want.logp, strict=True):
            assert torch.equal(a, b)
    # no settings, or empty ones: the configured sampling
    plain = engine.generate(prompts, seed=3)
    assert (
        plain.completion_ids
        == engine.generate(prompts, seed=3, sampling=SamplingSettings()).completion_ids
    )


def test_greedy_call_is_argmax_decoding(policy, prompts):
    """A temperature-1 engine asked for greedy decodes by argmax of the model's own logits
    (full forward each step, no cache): the seed does not matter."""
    model, tokenizer = policy
    engine = HFEngine(model, tokenizer, max_new_tokens=6)
    greedy = SamplingSettings(temperature=0.0)
    out = engine.generate(prompts[:4], seed=1, sampling=greedy)
    assert (
        out.completion_ids == engine.generate(prompts[:4], seed=2, sampling=greedy).completion_ids
    )
    for p, ids in zip(prompts[:4], out.completion_ids, strict=True):
        seq = list(p)
        want = []
        with torch.no_grad():
            for _ in range(6):
                tok = int(model(torch.tensor([seq])).logits[0, -1].argmax())
                want.append(tok)
                seq.append(tok)
                if tok == tokenizer.eos_token_id:
                    break
        assert ids == want


def test_temperature_and_top_p_change_what_is_sampled(policy, prompts):
    model, tokenizer = policy
    engine = HFEngine(model, tokenizer, max_new_tokens=8)
    base = engine.generate(prompts, seed=5).completion_ids
    cold = engine.generate(
        prompts, seed=5, sampling=SamplingSettings(temperature=0.3)
    ).completion_ids
    nucleus = engine.generate(prompts, seed=5, sampling=SamplingSettings(top_p=0.3)).completion_ids
    greedy = engine.generate(
        prompts, seed=5, sampling=SamplingSettings(temperature=0.0)
    ).completion_ids
    tiny_nucleus = engine.generate(prompts, seed=5, sampling=SamplingSettings(top_p=1e-6))
    assert cold != base and nucleus != base and greedy != base
    assert tiny_nucleus.completion_ids == greedy  # a one-token nucleus is the argmax
    # the log-prob reported at temperature T is that of the tempered distribution
    hot = engine.generate(prompts[:2], seed=5, sampling=SamplingSettings(temperature=2.0))
    with torch.no_grad():
        p, ids = prompts[0], hot.completion_ids[0]
        logits = model(torch.tensor([p + ids])).logits[0, len(p) - 1 : -1].float()
        want = (logits / 2.0).log_softmax(-1).gather(1, torch.tensor(ids)[:, None]).squeeze(1)
    assert torch.allclose(hot.logp[0], want, atol=0.05)


def test_max_new_tokens_and_n_are_respected(policy, prompts):
    model, tokenizer = policy
    engine = HFEngine(model, tokenizer, max_new_tokens=16)
    short = engine.generate(prompts, seed=2, sampling=SamplingSettings(max_new_tokens=3))
    lengths = [len(c) for c in short.completion_ids]
    assert max(lengths) == 3 and all(
        f == (len(c) < 3 or c[-1] == tokenizer.eos_token_id)
        for c, f in zip(short.completion_ids, short.finished, strict=True)
    )
    many = engine.generate(prompts[:3], seed=4, sampling=SamplingSettings(n=4, max_new_tokens=5))
    repeated = [p for p in prompts[:3] for _ in range(4)]
    want = engine.generate(repeated, seed=4, sampling=SamplingSettings(max_new_tokens=5))
    assert len(many) == 12 and many.prompt_tokens == repeated
    assert many.completion_ids == want.completion_ids
    assert len({tuple(c) for c in many.completion_ids[:4]}) > 1  # n samples, not n copies


def test_sharded_engine_forwards_the_settings_per_shard(policy, prompts):
    model, tokenizer = policy
    engine = HFEngine(model, tokenizer, max_new_tokens=10, batch_size=4)
    settings = SamplingSettings(temperature=0.6, max_new_tokens=4, n=2)
    got = ShardedEngine(engine, 3).generate(prompts, seed=9, sampling=settings)
    want = []
    for k, (lo, hi) in enumerate(shard_bounds(len(prompts), 3)):
        part = engine.generate(prompts[lo:hi], seed=shard_seed(9, k), sampling=settings)
        want += part.completion_ids
    assert got.completion_ids == want and len(got) == 2 * len(prompts)
    assert max(len(c) for c in got.completion_ids) == 4
    one = ShardedEngine(engine, 1).generate(prompts, seed=9, sampling=settings)
    assert one.completion_ids == engine.generate(prompts, seed=9, sampling=settings).completion_ids
