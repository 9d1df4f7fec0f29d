"""Sampling: the sampler registry and the parts that get and score samples.

``SAMPLERS`` / :func:`get_sampler`: backends are imported lazily (``get_sampler("vllm", cfg)`` imports
vLLM only then): :mod:`~optscale.sampling.hf_cpu` (transformers), :mod:`~optscale.sampling.llama_cpp`,
:mod:`~optscale.sampling.vllm`, :mod:`~optscale.sampling.openai_compat` (replicas over HTTP, with
:mod:`~optscale.sampling.endpoints` and :mod:`~optscale.sampling.convert`) and
:mod:`~optscale.sampling.fake`. The interface is in :mod:`~optscale.sampling.base`. Also here: the
embedded model files (:mod:`~optscale.sampling.model_files`, :mod:`~optscale.sampling.hf_models`),
the scorers (:mod:`~optscale.sampling.scorers`, ``SCORERS``; the PRM in :mod:`~optscale.sampling.prm`),
the learned verifier combination (:mod:`~optscale.sampling.verifier_fit`) and Ray
(:mod:`~optscale.sampling.distributed`).
"""

from __future__ import annotations

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
