"""llama.cpp in-process sampler (``llama-cpp-python``): a faster CPU backend for GGUF models.

The same request semantics as the OpenAI-compatible sampler, without HTTP: each of a request's
``n`` samples is one ``Llama.create_completion`` call seeded with ``derive_seed(request.seed,
j)``, the prompt is the model's chat template (from the same Hugging Face tokenizer the other
backends use) plus ``request.prefix``, and the completion dict is converted by the same code
(:func:`~optscale.samplers.openai_compat.completion_from_choice`). So a pool sampled in-process
and one sampled through ``llama_cpp.server`` replicas hold the same samples (on the same build and
thread count). llama.cpp reuses the KV cache of the longest common prompt prefix between calls,
so the ``n`` samples of a question pay for its prompt once.

Log-probs need ``logits_all=True`` (about 3x slower decoding than without, measured on the 2-core
default machine: ~5 vs ~15 tokens/s). Install with ``scripts/install_llama_cpp.sh``: the default
native build crashes on CPUs that report AVX-512/AMX, the script builds a portable wheel once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..config import SamplingConfig
from .base import Completion, SampleRequest, Sampler, SamplerError, derive_seed, load_prompt_template
from .openai_compat import completion_from_choice, load_chat_tokenizer

__all__ = ["LlamaCppSampler", "resolve_gguf"]


def resolve_gguf(model: str) -> Path:
    """The GGUF file for ``sampling.model``: the embedded CPU model's name or a ``.gguf`` path."""
    from ..hf_models import EMBEDDED_MODELS
    from ..model_files import assemble_gguf

    if model in EMBEDDED_MODELS:
        return assemble_gguf(EMBEDDED_MODELS[model])
    p = Path(model)
    if p.suffix == ".gguf" and p.is_file():
        return p
    raise SamplerError(f"sampling.model={model!r}: backend 'llama-cpp' needs a .gguf file or an embedded model name")


class LlamaCppSampler(Sampler):
    name = "llama-cpp"

    def __init__(self, config: SamplingConfig, llama: Any = None, tokenizer: Any = None, n_ctx: int | None = None,
                 n_threads: int | None = None):
        self.config = config
        self.template = load_prompt_template(config.prompt_template)
        self.gguf = None
        if llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as e:
                raise SamplerError(
                    "sampling.backend='llama-cpp' needs llama-cpp-python: run scripts/install_llama_cpp.sh "
                    f"(a portable build; `pip install llama-cpp-python` alone may crash here). Import failed: {e}"
                ) from None
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            self.gguf = resolve_gguf(config.model)
            ctx = n_ctx or (max(config.max_new_tokens.values(), default=512) + 1024)
            llama = Llama(model_path=str(self.gguf), n_ctx=ctx, logits_all=True, seed=config.seed, verbose=False,
                          n_threads=n_threads or int(os.environ.get("OPTSCALE_TORCH_THREADS", os.cpu_count() or 1)))
        self.llm = llama
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_chat_tokenizer(self.config.model)
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            **super().describe(),
            "gguf": str(self.gguf) if self.gguf else None,
            "seeding": "one call per sample, seed = derive_seed(request seed, sample index)",
            "logprobs": "llama.cpp raw model log-probs: chosen token and top-%d mean" % c.top_k_logprobs,
        }

    def prompt_text(self, req: SampleRequest) -> str:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": req.prompt}], tokenize=False, add_generation_prompt=True
        )
        return text + req.prefix

    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        c = self.config
        out = []
        for req in requests:
            prompt = self.prompt_text(req)
            comps = []
            for j in range(req.n):
                seed = derive_seed(req.seed, j)
                res = self.llm.create_completion(
                    prompt=prompt, max_tokens=req.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                    seed=seed, logprobs=c.top_k_logprobs, stop=list(req.stop) or None,
                )
                comps.append(completion_from_choice(res["choices"][0], res.get("usage"), seed, req.stop,
                                                    c.top_k_logprobs))
            out.append(comps)
        return out
