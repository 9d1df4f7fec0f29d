"""Sampling: the sampler registry and the parts that get and score samples.

``SAMPLERS`` / :func:`get_sampler`: backends are imported lazily (``get_sampler("vllm", cfg)`` imports
vLLM only then): :mod:`~optscale.sampling.hf_cpu` (transformers), :mod:`~optscale.sampling.llama_cpp`,
:mod:`~optscale.sampling.vllm`, :mod:`~optscale.sampling.openai_compat` (replicas over HTTP, with
:mod:`~optscale.sampling.endpoints` and :mod:`~optscale.sampling.convert`) and
:mod:`~optscale.sampling.fake`. The interface is in :mod:`~optscale.sampling.base`. Also here: the
embedded model files (:mod:`~optscale.sampling.model_files`, :mod:`~optscale.sampling.hf_models`)
and Ray (:mod:`~optscale.sampling.distributed`). Scorers are a stage of their own: :mod:`optscale.scoring`.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from ..registry import Registry
from .base import Completion, SampleRequest, Sampler, SamplerError, derive_seed, load_prompt_template

if TYPE_CHECKING:  # pragma: no cover
    from ..config import SamplingConfig

SAMPLERS: Registry = Registry("sampler")
SAMPLERS.register("hf-cpu", "optscale.sampling.hf_cpu:HFSampler")
SAMPLERS.register("fake", "optscale.sampling.fake:FakeSampler")
SAMPLERS.register("vllm", "optscale.sampling.vllm:VLLMSampler")
SAMPLERS.register("openai", "optscale.sampling.openai_compat:OpenAICompatSampler")
SAMPLERS.register("llama-cpp", "optscale.sampling.llama_cpp:LlamaCppSampler")


def get_sampler(name: str, config: "SamplingConfig", **kwargs) -> Sampler:
    return SAMPLERS.build(name, config, **kwargs)


# Backends whose library is not a dependency of the package: the module each imports and how to get it.
BACKEND_LIBRARIES: dict[str, tuple[str, str]] = {
    "llama-cpp": ("llama_cpp", "bash scripts/install_llama_cpp.sh"),
    "vllm": ("vllm", 'pip install -e ".[gpu]", on a machine with a CUDA GPU'),
}


def missing_backend_library(name: str) -> str | None:
    """None when sampler backend ``name`` can be imported here, else one line saying what to install
    (checked without importing the library, so a run can refuse before it starts)."""
    if name not in BACKEND_LIBRARIES:
        return None
    module, how = BACKEND_LIBRARIES[name]
    if importlib.util.find_spec(module) is not None:
        return None
    return f"sampling.backend={name!r} needs the Python module {module!r}, which is not installed: {how}"


__all__ = [
    "SAMPLERS",
    "get_sampler",
    "BACKEND_LIBRARIES",
    "missing_backend_library",
    "Sampler",
    "SampleRequest",
    "Completion",
    "SamplerError",
    "derive_seed",
    "load_prompt_template",
]
