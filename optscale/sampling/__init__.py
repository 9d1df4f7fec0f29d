"""Sampler registry. Backends are imported lazily: ``get_sampler("vllm", cfg)`` imports vLLM only then."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import Registry
from .base import Completion, SampleRequest, Sampler, SamplerError, derive_seed, load_prompt_template

if TYPE_CHECKING:  # pragma: no cover
    from ..config import SamplingConfig

SAMPLERS: Registry = Registry("sampler")
SAMPLERS.register("hf-cpu", "optscale.samplers.hf_cpu:HFSampler")
SAMPLERS.register("fake", "optscale.samplers.fake:FakeSampler")
SAMPLERS.register("vllm", "optscale.samplers.vllm:VLLMSampler")
SAMPLERS.register("openai", "optscale.samplers.openai_compat:OpenAICompatSampler")
SAMPLERS.register("llama-cpp", "optscale.samplers.llama_cpp:LlamaCppSampler")


def get_sampler(name: str, config: "SamplingConfig", **kwargs) -> Sampler:
    return SAMPLERS.build(name, config, **kwargs)


__all__ = [
    "SAMPLERS",
    "get_sampler",
    "Sampler",
    "SampleRequest",
    "Completion",
    "SamplerError",
    "derive_seed",
    "load_prompt_template",
]
