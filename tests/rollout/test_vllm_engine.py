"""VLLMEngine against a fake `vllm` module: the request it builds, the Rollouts it returns,
weight sync (full and LoRA adapter-only), and a trainer run that uses it with TIS.

The fake records what the engine asks for; the real engine runs in test_vllm_gpu.py.
"""

from __future__ import annotations

import json
import sys
import types
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

from spo.policy.models import encode_prompts, load_policy
from spo.rollout import EngineError, SamplingSettings
from spo.rollout.vllm_engine import VLLMEngine, prompt_seeds


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLoRARequest:
    def __init__(self, name, int_id, path):
        self.name, self.int_id, self.path = name, int_id, path


class FakeModel:
    def __init__(self):
        self.loaded = []

    def load_weights(self, weights):
        self.loaded.append(dict(weights))


class FakeLLM:
    """Samples token ids from the request's seed; logprob of token t is -0.5 - 0.1 t."""

    instances: ClassVar[list[FakeLLM]] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.generate_calls = []
        self.model = FakeModel()
        self.prefix_resets = 0
        FakeLLM.instances.append(self)

    def generate(self, prompts, params, **kwargs):
        self.generate_calls.append((prompts, params, kwargs))
        outputs = []
        for prompt, p in zip(prompts, params, strict=True):
            g = torch.Generator().manual_seed(p.kwargs["seed"])
            n = int(torch.randint(1, p.kwargs["max_tokens"] + 1, (1,), generator=g))
            ids = torch.randint(3, 60, (n,), generator=g).tolist()
            stop = n < p.kwargs["max_tokens"]
            if stop:
                ids[-1] = 2  # eos of the tiny tokenizer
            logprobs = [
                {tok: types.SimpleNamespace(logprob=-0.5 - 0.1 * t)} for t, tok in enumerate(ids)
            ]
            completion = types.SimpleNamespace(
                token_ids=ids, logprobs=logprobs, finish_reason="stop" if stop else "length"
            )
            outputs.append(
                types.SimpleNamespace(
                    prompt_token_ids=prompt["prompt_token_ids"], outputs=[completion]
                )
            )
        return outputs

    def collective_rpc(self, method, args=()):
        worker = types.SimpleNamespace(
            model_runner=types.SimpleNamespace(get_model=lambda: self.model)
        )
        return [method(worker, *args)]

    def reset_prefix_cache(self):
        self.prefix_resets += 1


@pytest.fixture()
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    FakeLLM.instances.clear()
    return vllm


def make(tiny_model_dir, tokenizer, **kwargs):
    args = {"max_new_tokens": 6, "temperature": 0.7, "top_p": 0.9, "seed": 3}
    return VLLMEngine(str(tiny_model_dir), tokenizer, **{**args, **kwargs})


def test_missing_vllm_or_cuda_is_one_clear_error(tiny_model_dir, policy, monkeypatch, fake_vllm):
    _, tokenizer = policy
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineError, match=r"needs a CUDA GPU; use rollout\.engine=hf"):
        make(tiny_model_dir, tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(EngineError, match=r"pip install 'spo-rl\[vllm\]'"):
        make(tiny_model_dir, tokenizer)


def test_request_and_rollouts(tiny_model_dir, policy, fake_vllm):
    _, tokenizer = policy
    engine = make(tiny_model_dir, tokenizer, gpu_memory_utilization=0.3, max_model_len=256)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["model"] == str(tiny_model_dir)
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["gpu_memory_utilization"] == 0.3 and llm.kwargs["max_model_len"] == 256
    assert llm.kwargs["seed"] == 3 and "enable_lora" not in llm.kwargs
    prompts = encode_prompts(tokenizer, ["1 + 1?", "Say hi.", "2 + 2?"])
    out = engine.generate(prompts, seed=11)
    sent, params, kwargs = llm.generate_calls[-1]
    assert sent == [{"prompt_token_ids": p} for p in prompts]
    assert kwargs == {"use_tqdm": False}
    seeds = [p.kwargs.pop("seed") for p in params]
    assert seeds == prompt_seeds(11, 3) and len(set(seeds)) == 3
    for p in params:
        assert p.kwargs == {
            "n": 1,
            "temperature": 0.7,
            "top_p": 0.9,
            "max_tokens": 6,
            "logprobs": 0,
        }
    assert out.prompt_tokens == prompts and len(out) == 3
    for ids, lp, done, text in zip(
        out.completion_ids, out.logp, out.finished, out.texts, strict=True
    ):
        assert lp.dtype == torch.float32
        assert lp.tolist() == pytest.approx([-0.5 - 0.1 * t for t in range(len(ids))])
        assert done == (ids[-1] == 2)
        assert text == tokenizer.decode(ids, skip_special_tokens=True)


def test_per_call_settings_become_the_sampling_params(tiny_model_dir, policy, fake_vllm):
    """A call's SamplingSettings override the configured ones field by field; n samples
    of a prompt are n rows with seeds of their own (greedy = vLLM's temperature 0)."""
    _, tokenizer = policy
    engine = make(tiny_model_dir, tokenizer)
    llm = FakeLLM.instances[-1]
    prompts = encode_prompts(tokenizer, ["1 + 1?", "Say hi."])
    out = engine.generate(
        prompts, seed=5, sampling=SamplingSettings(temperature=0.0, max_new_tokens=3, n=3)
    )
    sent, params, _ = llm.generate_calls[-1]
    assert sent == [{"prompt_token_ids": p} for p in prompts for _ in range(3)]
    assert [p.kwargs.pop("seed") for p in params] == prompt_seeds(5, 6)
    for p in params:
        assert p.kwargs == {
            "n": 1,
            "temperature": 0.0,
            "top_p": 0.9,
            "max_tokens": 3,
            "logprobs": 0,
        }
    assert len(out) == 6 and out.prompt_tokens == [p for p in prompts for _ in range(3)]
    assert max(len(c) for c in out.completion_ids) <= 3
    engine.generate(prompts, seed=5, sampling=SamplingSettings(top_p=0.5))
    for p in llm.generate_calls[-1][1]:
        assert (p.kwargs["temperature"], p.kwargs["top_p"], p.kwargs["max_tokens"]) == (0.7, 0.5, 6)


def test_full_weight_sync_loads_every_tensor_and_drops_the_prefix_cache(
    tiny_model_dir, policy, fake_vllm
):
    model, tokenizer = policy
    engine = make(tiny_model_dir, tokenizer)
    llm = FakeLLM.instances[-1]
    engine.sync_weights(model)
    (loaded,) = llm.model.loaded
    state = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert llm.prefix_resets == 1


def test_lora_sync_sends_only_the_adapter(tiny_model_dir, policy, fake_vllm, tmp_path):
    from spo.policy.lora import apply_lora, lora_kwargs
    from spo.train.config import LoraConfig

    base, tokenizer = load_policy(str(tiny_model_dir))
    peft_model = apply_lora(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    cfg = lora_kwargs(LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    engine = make(tiny_model_dir, tokenizer, lora=cfg, lora_dir=tmp_path / "lora")
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_lora_rank"] == 4
    engine.sync_weights(peft_model)
    engine.sync_weights(peft_model)
    assert llm.model.loaded == []  # never the full model
    request = engine.lora_request
    assert request.int_id == 2 and request.name == "policy-2"
    assert not (tmp_path / "lora/v000001").exists()  # the superseded adapter is removed
    saved = load_file(f"{request.path}/adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    config = json.loads((tmp_path / "lora/v000002/adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    assert config["target_modules"] == ["q_proj", "v_proj"]
    engine.generate(encode_prompts(tokenizer, ["hi"]), seed=0)
    assert llm.generate_calls[-1][2]["lora_request"] is request


def test_trainer_runs_on_the_vllm_engine_with_tis(tiny_model_dir, fake_vllm, tmp_path, monkeypatch):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "train"))
    from test_trainer import REWARD_SRC, tiny_overrides

    from spo.train.config import load_config
    from spo.train.trainer import Trainer

    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"p{i}", "answer": "x"}) + "\n" for i in range(40))
    )
    (tmp_path / "reward.py").write_text(REWARD_SRC)
    files = {"data": str(data), "reward": f"{tmp_path / 'reward.py'}:reward"}
    overrides = tiny_overrides(tiny_model_dir, files, tmp_path / "run", steps=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the trainer stays on CPU
    cfg = load_config(
        None, [*overrides, "rollout.engine=vllm", "loss.tis_cap=2.0", "model.device=cpu"]
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    trainer = Trainer(cfg)
    try:
        metrics = [trainer.train_step() for _ in range(2)]
    finally:
        trainer.close()
    llm = FakeLLM.instances[-1]
    assert len(llm.model.loaded) == 3  # at start and after each of the 2 updates
    final = trainer.model.state_dict()
    assert all(torch.equal(llm.model.loaded[-1][k], final[k]) for k in final)
    # fake behaviour log-probs (about -0.5) are far above the tiny model's (about -5.6):
    # every token's ratio exp(old - behaviour) is far below the cap
    assert 0 < metrics[-1]["train/tis_weight_mean"] < 0.1
    assert metrics[-1]["train/tis_clip_fraction"] == 0.0
