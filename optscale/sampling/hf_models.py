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

__all__ = ["load_causal_lm", "EMBEDDED_MODELS", "torch_dtype"]

EMBEDDED_MODELS = EMBEDDED_GGUFS
_lock = threading.Lock()


def torch_dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name!r}") from None


@lru_cache(maxsize=4)
def load_causal_lm(model: str, dtype: str = "bfloat16", device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer), cached per (model, dtype, device); the model is in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "cpu":
        import torch

        torch.set_num_threads(int(os.environ.get("OPTSCALE_TORCH_THREADS", os.cpu_count() or 1)))
    td = torch_dtype(dtype)
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
