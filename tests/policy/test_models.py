"""Loading policies: clear one-line errors for bad paths, a usable tokenizer, chat prompts."""

from __future__ import annotations

import json

import pytest
import torch

from spo.policy.models import ModelError, encode_prompts, load_policy, resolve_device


def test_load_policy_tiny(tiny_model_dir):
    model, tokenizer = load_policy(str(tiny_model_dir))
    assert not model.training
    # CPU default: eager attention (faster here, and the engine mirrors its numerics)
    assert model.config._attn_implementation == ("sdpa" if torch.cuda.is_available() else "eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tokenizer.pad_token_id is not None
    model32, _ = load_policy(str(tiny_model_dir), dtype="float32")
    assert next(model32.parameters()).dtype == torch.float32


@pytest.mark.parametrize("kind", ["missing", "no-config", "bad-config"])
def test_load_policy_bad_path_is_one_line(tmp_path, kind):
    path = tmp_path / "model"
    if kind != "missing":
        path.mkdir()
    if kind == "bad-config":
        (path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelError) as err:
        load_policy(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message


def test_load_policy_bad_dtype(tiny_model_dir):
    with pytest.raises(ModelError, match="dtype"):
        load_policy(str(tiny_model_dir), dtype="int8")


def test_pad_falls_back_to_eos(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, copy)
    cfg_path = copy / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    _, tokenizer = load_policy(str(copy))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_encode_prompts_uses_chat_template(tiny_model_dir):
    _, tokenizer = load_policy(str(tiny_model_dir))
    (ids,) = encode_prompts(tokenizer, ["What is 2 + 3?"])
    text = tokenizer.decode(ids)
    assert text == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    (with_system,) = encode_prompts(tokenizer, ["hi"], system_prompt="Be brief.")
    assert tokenizer.decode(with_system).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_encode_prompts_without_fewshot_is_unchanged_and_with_it_prefixes(tiny_model_dir):
    _, tokenizer = load_policy(str(tiny_model_dir))
    prompts = ["What is 2 + 3?", "hi"]
    # no few-shot: the same tokens as before the option existed (the template on [user])
    want = [
        tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )["input_ids"]
        for p in prompts
    ]
    assert encode_prompts(tokenizer, prompts) == want
    assert encode_prompts(tokenizer, prompts, fewshot=()) == want
    assert encode_prompts(tokenizer, prompts, fewshot=[]) == want
    shots = [
        {"role": "user", "content": "1 + 1?"},
        {"role": "assistant", "content": "```python\nprint(1 + 1)\n```"},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "2"},
    ]
    (ids,) = encode_prompts(tokenizer, ["hi"], system_prompt="S", fewshot=shots)
    assert tokenizer.decode(ids) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n1 + 1?<|im_end|>\n"
        "<|im_start|>assistant\n```python\nprint(1 + 1)\n```<|im_end|>\n"
        "<|im_start|>tool\n2<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for bad, msg in [("cuda", "CUDA is not available"), ("tpu", "not a device"), ("mps", "not")]:
        with pytest.raises(ModelError, match=msg) as e:
            resolve_device(bad)
        assert "\n" not in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ModelError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


def test_train_on_missing_cuda_is_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from spo.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["train", f"model.path={tiny_model_dir}", "model.device=cuda", f"run_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "spo: error: model.device=cuda but CUDA is not available: use model.device=cpu"
