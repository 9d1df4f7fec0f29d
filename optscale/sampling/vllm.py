"""vLLM in-process sampler (the paper's generator on one GPU node).

``VLLMSampler`` wraps ``vllm.LLM``: one ``SamplingParams(n=request.n, temperature, top_p,
max_tokens, logprobs=k, seed=request.seed, stop=...)`` per request, all requests of a call
submitted in one ``LLM.generate`` so vLLM batches them, and prefix caching on so the ``n``
samples of a question, and later calls that ask for more samples of it (adaptive policies), share
the prompt's KV cache.

Prompts follow the paper's generator (``run_para_inference.py``): the user message goes through
the model's chat template with ``add_generation_prompt=True``. The templated text is tokenized
here without adding special tokens and passed as token ids, because the chat template already
holds the BOS token (letting vLLM tokenize the text would add a second BOS for Llama-style
tokenizers such as DeepSeek-R1-Distill's). ``request.prefix`` is appended after the template, so
generation continues a partial assistant answer (particle filtering).

Every field of :class:`~optscale.sampling.base.Completion` comes from vLLM's outputs: the token
count is ``len(output.token_ids)``, the chosen token's log-prob and the top-k log-probs come from
``output.logprobs`` (vLLM returns log-probs of the raw model distribution, before temperature
and top-p, by default), and the token end offsets from the decoded tokens.

vLLM is imported only when the sampler is built; without vLLM or CUDA the constructor raises a
:class:`~optscale.sampling.base.SamplerError` that says what is missing. Tests inject a fake
``llm`` and ``sampling_params_cls`` (the conversion code is the same).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..config import SamplingConfig
from .base import Completion, SampleRequest, Sampler, SamplerError, load_prompt_template, validate_completion
from .convert import char_ends_from_tokens, topk_mean
from .hf_models import resolve_dtype

__all__ = ["VLLMSampler", "sampling_params_kwargs", "completions_from_vllm_output", "require_vllm"]


def require_vllm() -> Any:
    """Import vLLM and check that a CUDA device is visible; a clear SamplerError otherwise."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise SamplerError(
            "sampling.backend='vllm' needs vLLM on a CUDA machine: `pip install -e .[gpu]` "
            f"(pip install vllm). Import failed: {e}. Without a GPU use backend 'hf-cpu', "
            "'llama-cpp', or 'openai' against remote `vllm serve` endpoints."
        ) from None
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        has_cuda = False
    if not has_cuda:
        raise SamplerError(
            "sampling.backend='vllm': vLLM is installed but no CUDA device is visible "
            "(torch.cuda.is_available() is False). Run on a GPU machine, or use backend 'openai' "
            "with sampling.endpoints pointing at `vllm serve` replicas."
        )
    return vllm


def sampling_params_kwargs(req: SampleRequest, config: SamplingConfig) -> dict[str, Any]:
    """The ``vllm.SamplingParams`` keyword arguments for one request."""
    kw: dict[str, Any] = {
        "n": req.n,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_tokens": req.max_new_tokens,
        "logprobs": config.top_k_logprobs,
        "seed": req.seed,
        "skip_special_tokens": True,
    }
    if req.stop:
        kw["stop"] = list(req.stop)
        kw["include_stop_str_in_output"] = False
    return kw


def _finish_reason(output: Any) -> str:
    """vLLM's ``finish_reason`` ("stop" | "length" | "abort") and ``stop_reason`` (None: EOS,
    int: a stop token id, str: the stop string that matched) to the pool's vocabulary."""
    fr = getattr(output, "finish_reason", None)
    if fr == "length":
        return "length"
    if fr == "stop":
        return "stop_string" if isinstance(getattr(output, "stop_reason", None), str) else "stop"
    raise SamplerError(f"vLLM returned finish_reason={fr!r} (request aborted?)")


def completions_from_vllm_output(request_output: Any, req: SampleRequest, top_k: int) -> list[Completion]:
    """Convert one ``vllm.RequestOutput`` (``.outputs``: ``n`` ``CompletionOutput`` with
    ``text``, ``token_ids``, ``logprobs`` = one ``{token_id: Logprob(logprob, rank,
    decoded_token)}`` per generated token, ``finish_reason``, ``stop_reason``) into ``n``
    :class:`Completion` records in vLLM's sample order."""
    outs = list(request_output.outputs)
    if len(outs) != req.n:
        raise SamplerError(f"vLLM returned {len(outs)} samples for request {req.key!r}, expected {req.n}")
    comps = []
    for j, o in enumerate(outs):
        token_ids = list(o.token_ids)
        lps = o.logprobs
        if lps is None or len(lps) != len(token_ids):
            raise SamplerError(
                f"vLLM output {j} of request {req.key!r}: {0 if lps is None else len(lps)} log-prob entries "
                f"for {len(token_ids)} tokens (SamplingParams.logprobs must be set)"
            )
        chosen, conf, pieces = [], [], []
        for tid, entry in zip(token_ids, lps):
            if tid not in entry:
                raise SamplerError(f"vLLM output {j} of request {req.key!r}: sampled token {tid} missing from its logprobs")
            chosen.append(float(entry[tid].logprob))
            conf.append(topk_mean([lp.logprob for lp in entry.values()], top_k))
            pieces.append(entry[tid].decoded_token or "")
        text = o.text
        comps.append(validate_completion(Completion(
            text=text,
            n_tokens=len(token_ids),
            finish_reason=_finish_reason(o),
            seed=int(req.seed),
            token_logprobs=chosen,
            token_confidence=conf,
            token_char_ends=char_ends_from_tokens(pieces, text),
        ), req, source=f"vLLM output {j}"))
    return comps


class VLLMSampler(Sampler):
    """``vllm.LLM`` in-process. ``llm``/``sampling_params_cls`` may be injected (tests)."""

    name = "vllm"

    def __init__(self, config: SamplingConfig, llm: Any = None, sampling_params_cls: Callable[..., Any] | None = None,
                 max_model_len: int | None = None, **llm_kwargs: Any):
        self.config = config
        self.template = load_prompt_template(config.prompt_template)
        if llm is None or sampling_params_cls is None:
            vllm = require_vllm()
            sampling_params_cls = sampling_params_cls or vllm.SamplingParams
            if llm is None:
                # Room for the longest generation plus a generous prompt (questions + template).
                max_len = max_model_len or (max(config.max_new_tokens.values(), default=4096) + 2048)
                kwargs = dict(
                    model=config.model,
                    tensor_parallel_size=config.tensor_parallel_size,
                    gpu_memory_utilization=config.gpu_memory_utilization,
                    enable_prefix_caching=config.enable_prefix_caching,
                    seed=config.seed,
                    max_model_len=max_len,
                    dtype=resolve_dtype(config.dtype, "cuda"),  # auto: bfloat16, as before
                )
                kwargs.update(llm_kwargs)
                llm = vllm.LLM(**kwargs)
        self.llm = llm
        self.sampling_params_cls = sampling_params_cls
        self.tokenizer = llm.get_tokenizer()

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            **super().describe(),
            "tensor_parallel_size": c.tensor_parallel_size,
            "enable_prefix_caching": c.enable_prefix_caching,
            "logprobs": "vLLM raw model log-probs: chosen token and top-%d mean" % c.top_k_logprobs,
        }

    def prompt_token_ids(self, req: SampleRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": req.prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text + req.prefix, add_special_tokens=False)["input_ids"])

    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        prompts = [{"prompt_token_ids": self.prompt_token_ids(r)} for r in requests]
        params = [self.sampling_params_cls(**sampling_params_kwargs(r, self.config)) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if len(outputs) != len(requests):
            raise SamplerError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        return [completions_from_vllm_output(o, r, self.config.top_k_logprobs) for o, r in zip(outputs, requests)]
