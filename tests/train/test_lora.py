"""LoRA via peft on the tiny model: only adapters train, checkpoints hold the adapter,
resume is lossless, and an engine copy synced with adapter weights samples identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_trainer import params_of, run_collecting_ids, task_files, tiny_overrides  # noqa: F401

from spo.policy.lora import apply_lora
from spo.policy.models import encode_prompts, load_policy
from spo.policy.weights import policy_weights
from spo.rollout.hf import HFEngine
from spo.train.config import LoraConfig, load_config
from spo.train.trainer import Trainer

pytest.importorskip("peft")

LORA = {"model.lora.r": 4, "model.lora.alpha": 8, "optim.lr": 5e-2}


def test_only_adapters_train_and_checkpoints_hold_them(tiny_model_dir, task_files, tmp_path):  # noqa: F811
    cfg = load_config(None, tiny_overrides(tiny_model_dir, task_files, tmp_path / "r", **LORA))
    trainer = Trainer(cfg)
    before = params_of(trainer.model)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainer.optimizer.params) == len(trainable)
    try:
        trainer.run()
    finally:
        trainer.close()
    after = params_of(trainer.model)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and moved <= trainable  # adapters moved, the base did not
    ckpt = tmp_path / "r/checkpoints/step_000003"
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert (ckpt / "adapter_config.json").is_file()
    assert not (ckpt / "model.safetensors").exists()
    # the checkpoint loads back (as `spo eval` and resume do) with the trained adapter
    loaded, _ = load_policy(str(ckpt))
    again = params_of(loaded)
    for k in after:
        torch.testing.assert_close(again[k], after[k], rtol=0, atol=0)


def test_lora_resume_is_lossless(tiny_model_dir, task_files, tmp_path):  # noqa: F811
    def cfg(run, steps, resume=False):
        overrides = tiny_overrides(
            tiny_model_dir, task_files, tmp_path / run, steps=steps, resume=resume, **LORA
        )
        return load_config(None, overrides)

    straight, ids_straight = run_collecting_ids(cfg("a", 3))
    _, ids_first = run_collecting_ids(cfg("b", 2))
    resumed, ids_rest = run_collecting_ids(cfg("b", 3, resume=True))
    assert ids_first + ids_rest == ids_straight
    for key, value in straight.tracker.state_dict().items():
        other = resumed.tracker.state_dict()[key]
        assert np.array_equal(np.asarray(value), np.asarray(other)), key
    a, b = params_of(straight.model), params_of(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_adapter_only_sync_reproduces_the_policy(tiny_model_dir):
    lora = LoraConfig(r=4)
    trained = apply_lora(load_policy(str(tiny_model_dir))[0], lora)
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.5)  # B starts at 0: make the adapter matter
    copy, tokenizer = load_policy(str(tiny_model_dir))
    copy = apply_lora(copy, lora)
    weights = policy_weights(trained)
    assert weights and all("lora_" in k for k in weights)
    prompts = encode_prompts(tokenizer, [f"Tell me {i}." for i in range(6)])
    kw = {"max_new_tokens": 8, "batch_size": 6}
    want = HFEngine(trained, tokenizer, **kw).generate(prompts, seed=4)
    engine = HFEngine(copy, tokenizer, **kw)
    stale = engine.generate(prompts, seed=4)
    engine.sync_weights(weights)
    got = engine.generate(prompts, seed=4)
    assert stale.completion_ids != want.completion_ids
    assert got.completion_ids == want.completion_ids
