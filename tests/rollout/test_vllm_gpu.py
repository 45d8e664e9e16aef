"""The real vLLM engine on a GPU (marked `gpu`: skipped without CUDA or without vllm).

A small random Llama (head dim 64, which every vLLM attention backend supports) is
sampled by vLLM and scored by the trainer's `completion_logp` on the same GPU: the two
log-probs of the sampled tokens must agree to bf16-kernel noise, and a weight sync must
change what vLLM samples.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_model_dir(tmp_path_factory, tiny_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("gpu-model")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(path)
    base = LlamaConfig.from_pretrained(tiny_model_dir)
    config = LlamaConfig(
        **{
            **base.to_dict(),
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        }
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(gpu_model_dir):
    pytest.importorskip("vllm")
    from spo.policy.models import load_policy
    from spo.rollout.vllm_engine import VLLMEngine

    _, tokenizer = load_policy(str(gpu_model_dir))
    return VLLMEngine(
        str(gpu_model_dir),
        tokenizer,
        max_new_tokens=16,
        temperature=1.0,
        gpu_memory_utilization=0.3,
        max_model_len=512,
        enforce_eager=True,
    )


def test_vllm_logprobs_match_the_trainer(engine, gpu_model_dir):
    from spo.policy.batch import pack, pad_logp
    from spo.policy.logprobs import completion_logp
    from spo.policy.models import encode_prompts, load_policy

    model, tokenizer = load_policy(str(gpu_model_dir))
    model = model.cuda()
    prompts = encode_prompts(tokenizer, [f"What is {i} + {i}?" for i in range(16)])
    a = engine.generate(prompts, seed=1)
    b = engine.generate(prompts, seed=1)
    assert a.completion_ids == b.completion_ids  # per-prompt seeds: reproducible
    batch = pack(a.prompt_tokens, a.completion_ids, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        train_BT = completion_logp(model, batch).cpu()
    mask = batch.completion_mask_BT > 0
    behaviour_BT = pad_logp(a.logp, mask.shape[1])
    gap = (train_BT - behaviour_BT)[mask].abs()
    assert float(gap.mean()) < 0.05, float(gap.mean())


def test_per_call_settings(engine, gpu_model_dir):
    """Greedy with n=2: both rows of a prompt are the argmax path, whatever the seed;
    max_new_tokens per call caps the length; the sampled calls stay as configured."""
    from spo.policy.models import encode_prompts, load_policy
    from spo.rollout import SamplingSettings

    _, tokenizer = load_policy(str(gpu_model_dir))
    prompts = encode_prompts(tokenizer, [f"Name {i} colours." for i in range(6)])
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=5, n=2)
    a = engine.generate(prompts, seed=1, sampling=greedy)
    b = engine.generate(prompts, seed=2, sampling=greedy)
    assert len(a) == 12 and a.completion_ids == b.completion_ids
    assert a.completion_ids[0::2] == a.completion_ids[1::2]
    assert max(len(c) for c in a.completion_ids) <= 5
    sampled = engine.generate(prompts, seed=1)
    assert max(len(c) for c in sampled.completion_ids) <= 16
    assert sampled.completion_ids != a.completion_ids[0::2]


def test_weight_sync_changes_the_samples(engine, gpu_model_dir):
    from spo.policy.models import encode_prompts, load_policy

    model, tokenizer = load_policy(str(gpu_model_dir))
    prompts = encode_prompts(tokenizer, [f"Count to {i}." for i in range(8)])
    before = engine.generate(prompts, seed=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    engine.sync_weights(model)
    after = engine.generate(prompts, seed=5)
    assert before.completion_ids != after.completion_ids
