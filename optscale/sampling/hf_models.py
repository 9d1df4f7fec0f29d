"""Load causal LMs for transformers on CPU (or GPU), shared by the sampler and the LM judge.

``load_causal_lm("qwen2.5-coder-0.5b-instruct-q4")`` assembles the embedded GGUF (see
:mod:`optscale.sampling.model_files`), lets transformers dequantise it (``gguf_file=``, ~35 s here) and
saves the result once as safetensors in the cache, so later loads take a few seconds. Any other
name is a local directory or a hub id (hub access is not available on the default machines).
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from .model_files import EMBEDDED_GGUFS, assemble_gguf, cache_dir

__all__ = ["load_causal_lm", "EMBEDDED_MODELS", "DTYPES", "resolve_dtype", "resolve_torch_dtype", "dtype_choice"]

EMBEDDED_MODELS = EMBEDDED_GGUFS
_lock = threading.Lock()


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """The dtype ``sampling.dtype`` means on ``device``: itself, or for ``"auto"`` bfloat16 on a GPU
    (as before ``auto`` existed) and on a CPU that computes bf16 natively
    (:func:`optscale.sampling.cpu.native_bf16`: an AVX512_BF16 / AMX flag confirmed by a matmul
    probe), else float32 (an AVX2-only CPU emulates bf16 ~40x slower than float32)."""
    if name not in DTYPES:
        raise ValueError(f"sampling.dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    if name != "auto":
        return name
    if not str(device).startswith("cpu"):
        return "bfloat16"
    from .cpu import native_bf16

    return "bfloat16" if native_bf16()[0] else "float32"


def resolve_torch_dtype(name: str, device: str = "cpu"):
    """The ``torch.dtype`` of :func:`resolve_dtype`; every transformers load goes through it."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[resolve_dtype(name, device)]


def dtype_choice(name: str, device: str = "cpu") -> dict[str, Any]:
    """What :func:`resolve_dtype` chose and why (for the run manifest)."""
    out: dict[str, Any] = {"configured": name, "device": device, "chosen": resolve_dtype(name, device)}
    if name == "auto" and str(device).startswith("cpu"):
        from .cpu import bf16_matmul_probe, cpu_flags, BF16_FLAGS, native_bf16

        out["reason"] = native_bf16()[1]
        if any(f in cpu_flags() for f in BF16_FLAGS):
            out["probe"] = bf16_matmul_probe()
    elif name == "auto":
        out["reason"] = "GPU: bfloat16"
    else:
        out["reason"] = "set in the profile"
    return out


def load_causal_lm(model: str, dtype: str = "auto", device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer), cached per (model, resolved dtype, device); the model is in eval mode.
    ``dtype``: one of :data:`DTYPES` (``auto``: :func:`resolve_dtype`)."""
    return _load_causal_lm(model, resolve_dtype(dtype, device), device)


@lru_cache(maxsize=4)
def _load_causal_lm(model: str, dtype: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "cpu":
        import torch

        from .cpu import default_threads

        torch.set_num_threads(default_threads())
    td = resolve_torch_dtype(dtype, device)
    with _lock:
        if model in EMBEDDED_MODELS:
            spec = EMBEDDED_MODELS[model]
            gguf = assemble_gguf(spec)
            converted = cache_dir() / f"{spec.name}-{dtype}-hf-{spec.sha256[:12]}"
            if not (converted / "config.json").is_file():
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=td)
                # Without the optional `kernels` package transformers dequantises every tensor, but
                # still marks the model as GGUF-quantised (not serialisable, not trainable). The
                # weights are plain tensors by now: drop the marker and save them as safetensors.
                lm.hf_quantizer = None
                for attr in ("quantization_config", "_pre_quantization_dtype"):
                    if hasattr(lm.config, attr):
                        delattr(lm.config, attr)
                lm.is_quantized = False
                tmp = converted.with_name(converted.name + ".tmp")
                lm.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                os.replace(tmp, converted) if not converted.exists() else None
            source: str | Path = converted
        else:
            source = model
        tok = AutoTokenizer.from_pretrained(str(source))
        lm = AutoModelForCausalLM.from_pretrained(str(source), dtype=td)
    lm.to(device)
    lm.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok
