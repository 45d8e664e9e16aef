"""LlamaDecoder (static KV cache, shared-prefix prefill) computes the model's own logits:
checked against the Hugging Face forward on tiny random Llama, Qwen2 and Qwen3 models."""

from __future__ import annotations

import pytest
import torch

from spo.policy.models import load_policy
from spo.rollout.hf import HFEngine
from spo.rollout.llama import LlamaDecoder, unsupported_reason

# A shared prefix, a duplicate (GRPO-style), and different lengths.
PROMPTS = [[3, 4, 5, 6, 7, 8], [3, 4, 5, 9], [3, 4, 5, 6, 7, 8], [3, 4, 5, 10, 11, 12, 13]]


def tiny(arch: str, dtype=torch.float32):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    kw = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kw, tie_word_embeddings=True))
    elif arch == "qwen2":  # q/k/v biases
        model = Qwen2ForCausalLM(Qwen2Config(**kw, tie_word_embeddings=False))
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_()
                layer.self_attn.k_proj.bias.normal_()
    else:  # per-head q/k RMSNorm
        model = Qwen3ForCausalLM(Qwen3Config(**kw, head_dim=8))
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
    return model.to(dtype).eval()


def reference_logits(model, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0].float()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_prefill_and_steps_match_forward(arch):
    model = tiny(arch)
    assert unsupported_reason(model) is None
    steps = 4
    decoder = LlamaDecoder(model, max_len=max(map(len, PROMPTS)) + steps)
    gen = torch.tensor([[20 + b + 7 * t for b in range(len(PROMPTS))] for t in range(steps)])
    with torch.no_grad():
        logits = [decoder.prefill(PROMPTS)]
        for t in range(steps - 1):
            if t == 1:  # drop row 1 mid-way, as the engine does with finished rows
                decoder.keep(torch.tensor([0, 2, 3]))
            rows = [0, 1, 2, 3] if t < 1 else [0, 2, 3]
            logits.append(dict(zip(rows, decoder.step(gen[t, rows]), strict=True)))
    for b, prompt in enumerate(PROMPTS):
        ref = reference_logits(model, prompt + gen[:, b].tolist())
        assert torch.allclose(logits[0][b].float(), ref[len(prompt) - 1], atol=1e-4)
        for t in range(1, steps):
            if b in logits[t]:
                assert torch.allclose(logits[t][b].float(), ref[len(prompt) - 1 + t], atol=1e-4)


def test_bf16_close_to_forward():
    model = tiny("llama", torch.bfloat16)
    decoder = LlamaDecoder(model, max_len=16)
    with torch.no_grad():
        got = decoder.prefill(PROMPTS).float()
    for b, prompt in enumerate(PROMPTS):
        want = reference_logits(model, prompt)[-1]
        assert torch.allclose(got[b], want, atol=3e-2, rtol=3e-2)


def test_unsupported_models_fall_back():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=0,
    )
    assert "sliding" in unsupported_reason(Qwen2ForCausalLM(config))


def test_fast_engine_equals_reference_engine(tiny_model_dir):
    """Same greedy tokens through the fast decoder and through the model's own forward."""
    model, tokenizer = load_policy(str(tiny_model_dir))
    prompts = [tokenizer.encode(f"<|im_start|>user\nhello {i}<|im_end|>\n") for i in range(6)]
    prompts += prompts[:2]  # duplicates
    kw = dict(max_new_tokens=12, temperature=0.0)
    fast = HFEngine(model, tokenizer, **kw).generate(prompts, seed=0)
    ref = HFEngine(model, tokenizer, fast=False, **kw).generate(prompts, seed=0)
    assert fast.completion_ids == ref.completion_ids
    assert fast.completion_ids[6:] == fast.completion_ids[:2]
    for a, b in zip(fast.logp, ref.logp, strict=True):
        assert torch.allclose(a, b, atol=1e-2)


def test_prefill_in_query_chunks_equals_one_pass(monkeypatch):
    """Long contexts attend in query chunks (SCORES_BUDGET): the same logits and cache as
    one pass, with at most the budget of scores per chunk (a (B, H, L, L) tensor of long
    multi-turn contexts does not fit in memory)."""
    import spo.rollout.llama as llama

    model = tiny("llama")
    prompts = [list(range(3, 40)), list(range(5, 30)), list(range(3, 35))]
    one = LlamaDecoder(model, max_len=45)
    with torch.no_grad():
        want = one.prefill(prompts)
    sizes = []
    real = LlamaDecoder._attend

    def spy(self, q, keys, values, bias):
        sizes.append(q.shape[0] * q.shape[1] * q.shape[2] * keys.shape[2])
        return real(self, q, keys, values, bias)

    monkeypatch.setattr(llama, "SCORES_BUDGET", 3 * 4 * 5 * 40)  # ~5 queries per chunk
    monkeypatch.setattr(LlamaDecoder, "_attend", spy)
    chunked = LlamaDecoder(model, max_len=45)
    with torch.no_grad():
        got = chunked.prefill(prompts)
    assert len(sizes) > 2 * len(chunked.layers)  # really chunked
    assert max(sizes) <= llama.SCORES_BUDGET
    assert torch.allclose(got, want, atol=1e-5)
    for k1, k2 in zip(one.k_cache, chunked.k_cache, strict=True):
        assert torch.equal(k1, k2)
