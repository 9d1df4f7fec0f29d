"""llama.cpp in-process sampler (``llama-cpp-python``): the fast CPU backend for GGUF models.

Many sequences are decoded in one batch through llama.cpp's own batch API: the prompt of a
request is evaluated once, with every one of its sample sequences attached to the same KV cells
(a unified KV cache, as in llama.cpp's ``batched`` example), then each step decodes one token of
every unfinished sequence in a single ``llama_decode`` call. A sequence that ends leaves the
batch and its KV cells are freed. Several requests (questions) share a batch when their samples
fit in ``sampling.batch_size`` sequences; a request with more samples is split into chunks.

Sampling uses llama.cpp's sampler chain, one per sequence: top-k (when ``sampling.top_k`` > 0),
a repetition penalty over the last 64 tokens (when ``sampling.repetition_penalty`` is not 1),
temperature, top-p, then a draw seeded with ``derive_seed(request.seed, sample index)``. The temperature is
applied before top-p, as in the transformers backend, so ``top_p`` means the same on both.
Per-token log-probabilities are read from the raw logits (the untempered model distribution,
before any penalty or truncation) for the chosen token and the top-``top_k_logprobs`` mean
(DeepConf's token confidence), as the other backends record them.

With ``prefix_cache=True`` (the live systems of notebooks 07–08, through
:func:`optscale.systems.live_sampler`; never pool generation) the KV cells of the last call's
sequences are kept, and a new prompt starts from the cached sequence sharing its longest token
prefix: only the rest is evaluated. A particle filter's continuation (``SampleRequest.prefix``)
then costs its new tokens instead of its whole history at every step.

Same seed, same outputs: a sequence's tokens depend on its seed and on the batch it was decoded
in (llama.cpp's CPU kernels compute each row of a batch on its own, but the order of the KV cells
of a shared batch can change floating-point sums); the batch composition is fixed by the request
order and ``batch_size``, so a rerun of the same configuration reproduces every sample (with the
prefix cache: the same sequence of calls reproduces every sample).

Install with ``scripts/install_llama_cpp.sh``: the default native build crashes on CPUs that
report AVX-512/AMX; the script builds a portable wheel once and caches it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import SamplingConfig
from .base import (Completion, SampleRequest, Sampler, SamplerError, chat_messages, derive_seed, load_prompt_template,
                   validate_completion)
from .cpu import default_threads

__all__ = ["LlamaCppSampler", "resolve_gguf"]


def resolve_gguf(model: str) -> Path:
    """The GGUF file for ``sampling.model``: an embedded model's name or a ``.gguf`` path."""
    from .hf_models import EMBEDDED_MODELS
    from .model_files import assemble_gguf

    if model in EMBEDDED_MODELS:
        return assemble_gguf(EMBEDDED_MODELS[model])
    p = Path(model)
    if p.suffix == ".gguf" and p.is_file():
        return p
    raise SamplerError(f"sampling.model={model!r}: backend 'llama-cpp' needs a .gguf file or an embedded model name")


@dataclass
class _Sequence:
    request: int  # index into the call's requests
    sample: int  # sample index j within the request
    seed: int
    slot: int  # llama.cpp sequence id
    pos: int  # next position
    chain: Any = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    finish: str = "length"
    output: int = -1  # row of this sequence in the last decode's logits
    stop: tuple[str, ...] = ()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class LlamaCppSampler(Sampler):
    name = "llama-cpp"

    def __init__(self, config: SamplingConfig, n_ctx: int | None = None, n_threads: int | None = None,
                 tokenizer: Any = None, prefix_cache: bool = False):
        self.config = config
        self.prefix_cache = bool(prefix_cache)
        self._cached: dict[int, list[int]] = {}  # slot -> tokens whose KV cells it holds (prefix cache)
        self.template = load_prompt_template(config.prompt_template)
        try:
            import llama_cpp
            from llama_cpp import _internals
            from llama_cpp._logger import set_verbose
        except ImportError as e:
            raise SamplerError(
                "sampling.backend='llama-cpp' needs llama-cpp-python: run scripts/install_llama_cpp.sh "
                f"(a portable build; `pip install llama-cpp-python` alone may crash here). Import failed: {e}"
            ) from None
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._L = llama_cpp
        set_verbose(False)  # llama.cpp's own log: errors only
        llama_cpp.llama_backend_init()
        self.gguf = resolve_gguf(config.model)
        self.max_seqs = max(1, int(config.batch_size))
        self.max_new = max(config.max_new_tokens.values(), default=512)
        self.prompt_budget = 2048  # prompt tokens per batch (all requests of a wave together)
        self.n_threads = n_threads or default_threads()  # $OPTSCALE_TORCH_THREADS, else every core
        self.lm = _internals.LlamaModel(path_model=str(self.gguf), params=llama_cpp.llama_model_default_params(),
                                        verbose=False)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx or (self.max_seqs * self.max_new + self.prompt_budget)
        cp.n_batch = 512
        cp.n_ubatch = 512
        # the prefix cache parks a reused prefix on a spare sequence id while the slots are reassigned
        cp.n_seq_max = self.max_seqs * (2 if self.prefix_cache else 1)
        cp.kv_unified = True
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.no_perf = True
        self.ctx = _internals.LlamaContext(model=self.lm, params=cp, verbose=False)
        self.n_ctx = int(cp.n_ctx)
        self.n_batch = int(cp.n_batch)
        self.batch = _internals.LlamaBatch(n_tokens=max(self.n_batch, self.max_seqs), embd=0,
                                           n_seq_max=self.max_seqs, verbose=False)
        self.n_vocab = self.lm.n_vocab()
        self._tokenizer = tokenizer

    # --- prompts ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer whose chat template formats prompts (as the other backends)."""
        if self._tokenizer is None:
            from .convert import load_chat_tokenizer

            self._tokenizer = load_chat_tokenizer(self.config.model)
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        from .model_files import gguf_summary

        c = self.config
        meta = gguf_summary(self.gguf)
        return {
            **super().describe(),
            "gguf": self.gguf.name,
            "gguf_name": meta["general.name"],
            "gguf_tensor_types": meta["tensor_types"],
            "top_k": c.top_k,
            "repetition_penalty": c.repetition_penalty,
            "prefix_cache": self.prefix_cache,
            "system_prompt": c.system_prompt,
            "batch_size": self.max_seqs,
            "n_threads": self.n_threads,
            "llama_cpp_python": getattr(self._L, "__version__", None),
            "seeding": "one llama.cpp sampler chain per sample, seed = derive_seed(request seed, sample index)",
            "logprobs": "raw model distribution (temperature 1), chosen token and top-%d mean" % c.top_k_logprobs,
        }

    def prompt_text(self, req: SampleRequest) -> str:
        text = self.tokenizer.apply_chat_template(chat_messages(self.config, req.prompt), tokenize=False,
                                                  add_generation_prompt=True)
        return text + req.prefix

    def prompt_tokens(self, req: SampleRequest) -> list[int]:
        return self.lm.tokenize(self.prompt_text(req).encode("utf-8"), add_bos=False, special=True)

    # --- sampling --------------------------------------------------------------------------
    def _chain(self, seed: int, prompt: list[int]) -> Any:
        L, c = self._L, self.config
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if c.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if c.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(c.top_k))
        if c.repetition_penalty != 1.0:
            # after top-k, as llama.cpp advises (a penalty over the full vocabulary is slow)
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(self.n_vocab, 64, c.repetition_penalty,
                                                                            0.0, 0.0))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(c.temperature))
        if c.top_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(c.top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
        return chain

    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        """Requests are packed, in order, into waves of at most ``batch_size`` sequences."""
        out: list[list[Completion | None]] = [[None] * r.n for r in requests]
        pending = [(i, j) for i, r in enumerate(requests) for j in range(r.n)]
        prompts: dict[int, list[int]] = {}
        while pending:
            wave = pending[: self.max_seqs]
            pending = pending[self.max_seqs:]
            for i, _ in wave:
                if i not in prompts:
                    prompts[i] = self.prompt_tokens(requests[i])
            for seq in self._decode_wave(requests, prompts, wave):
                out[seq.request][seq.sample] = validate_completion(self._to_completion(requests[seq.request], seq),
                                                                   requests[seq.request], source=self.name)
        return out  # type: ignore[return-value]

    def _decode_wave(self, requests: Sequence[SampleRequest], prompts: dict[int, list[int]],
                     wave: list[tuple[int, int]]) -> list[_Sequence]:
        L = self._L
        mem = L.llama_get_memory(self.ctx.ctx)
        seqs = [_Sequence(request=i, sample=j, seed=derive_seed(requests[i].seed, j), slot=s, pos=0,
                          stop=tuple(requests[i].stop)) for s, (i, j) in enumerate(wave)]
        need = sum(len(prompts[i]) for i in {s.request for s in seqs}) + sum(requests[s.request].max_new_tokens for s in seqs)
        if need > self.n_ctx:
            raise SamplerError(f"llama-cpp: a batch needs {need} KV cells but n_ctx is {self.n_ctx}; "
                               "lower sampling.batch_size or the token cap")
        by_request: dict[int, list[_Sequence]] = {}
        for s in seqs:
            by_request.setdefault(s.request, []).append(s)
        reused = self._reuse_prefixes(mem, by_request, prompts) if self.prefix_cache else {}
        if not self.prefix_cache:
            L.llama_memory_clear(mem, True)
        try:
            # 1. each distinct prompt once (past a reused prefix), attached to all of its sequences
            for i, group in by_request.items():
                toks = prompts[i]
                slots = [s.slot for s in group]
                for lo in range(reused.get(i, 0), len(toks), self.n_batch):
                    chunk = toks[lo:lo + self.n_batch]
                    last = lo + len(chunk) == len(toks)
                    self._fill(chunk, lo, slots, logits_last=last)
                    self._decode()
                for s in group:
                    s.pos = len(toks)
                    s.chain = self._chain(s.seed, toks)
                    s.output = 0  # the prompt's last token is output row 0 of that decode
                # sample the first token of every sequence of this request from the same logits
                self._step(group, n_outputs=1, shared=True)

            def running(s: _Sequence) -> bool:  # no EOS / stop string yet and under the token cap
                return s.finish == "length" and len(s.tokens) < requests[s.request].max_new_tokens

            active = [s for s in seqs if running(s)]
            # 2. one token per active sequence per decode
            while active:
                b = self.batch.batch
                b.n_tokens = len(active)
                for k, s in enumerate(active):
                    b.token[k] = s.tokens[-1]
                    b.pos[k] = s.pos
                    b.n_seq_id[k] = 1
                    b.seq_id[k][0] = s.slot
                    b.logits[k] = True
                    s.pos += 1
                    s.output = k
                self._decode()
                self._step(active, n_outputs=len(active), shared=False)
                if not self.prefix_cache:  # (the cache keeps a finished sequence's cells for the next call)
                    for s in active:
                        if not running(s):
                            L.llama_memory_seq_rm(mem, s.slot, -1, -1)
                active = [s for s in active if running(s)]
            if self.prefix_cache:  # the tokens each slot's cells now hold: prompt + decoded tokens
                self._cached = {s.slot: (prompts[s.request] + s.tokens)[:s.pos] for s in seqs}
        except BaseException:
            if self.prefix_cache:  # a wave cut short leaves cells the bookkeeping does not know
                L.llama_memory_clear(mem, True)
                self._cached = {}
            raise
        finally:
            for s in seqs:
                if s.chain is not None:
                    L.llama_sampler_free(s.chain)
                    s.chain = None
        return seqs

    def _reuse_prefixes(self, mem: Any, by_request: dict[int, list[_Sequence]],
                        prompts: dict[int, list[int]]) -> dict[int, int]:
        """Prefix cache: give each request's slots the KV cells of the cached sequence that shares
        the longest token prefix with its prompt (at least the prompt's last token is evaluated
        again, for its logits) and free every other cell. Returns {request: reused length}."""
        L = self._L
        parked: dict[int, tuple[int, int]] = {}  # request -> (spare sequence id, reused length)
        for k, (i, _) in enumerate(by_request.items()):
            toks = prompts[i]
            best_slot, best = -1, 0
            for slot, cached in self._cached.items():
                n = _common_prefix(cached, toks)
                if n > best:
                    best_slot, best = slot, n
            best = min(best, len(toks) - 1)
            if best > 0:
                spare = self.max_seqs + k
                L.llama_memory_seq_cp(mem, best_slot, spare, 0, best)  # positions [0, best)
                parked[i] = (spare, best)
        for slot in range(self.max_seqs):
            L.llama_memory_seq_rm(mem, slot, -1, -1)
        for i, (spare, _) in parked.items():
            for s in by_request[i]:
                L.llama_memory_seq_cp(mem, spare, s.slot, -1, -1)
            L.llama_memory_seq_rm(mem, spare, -1, -1)
        self._cached = {}
        return {i: n for i, (_, n) in parked.items()}

    def _fill(self, tokens: list[int], pos0: int, slots: list[int], logits_last: bool) -> None:
        b = self.batch.batch
        b.n_tokens = len(tokens)
        for k, t in enumerate(tokens):
            b.token[k] = t
            b.pos[k] = pos0 + k
            b.n_seq_id[k] = len(slots)
            for m, slot in enumerate(slots):
                b.seq_id[k][m] = slot
            b.logits[k] = False
        if logits_last:
            b.logits[len(tokens) - 1] = True

    def _decode(self) -> None:
        rc = self._L.llama_decode(self.ctx.ctx, self.batch.batch)
        if rc != 0:
            raise SamplerError(f"llama_decode returned {rc} (1: no KV slot for the batch; <0: error)")

    def _step(self, seqs: list[_Sequence], n_outputs: int, shared: bool) -> None:
        """Sample one token for each sequence from the last decode's outputs and record its
        raw log-prob and the top-k mean log-prob."""
        L, c = self._L, self.config
        logits = np.ctypeslib.as_array(L.llama_get_logits(self.ctx.ctx), shape=(n_outputs, self.n_vocab))
        # log-sum-exp per row, max-shifted (scipy.special.logsumexp gives the same values but took
        # 27 ms against 2 ms here for 16 x 151,936 float32 logits, every decode step)
        peak = logits.max(axis=1)
        lse = np.log(np.exp(logits - peak[:, None]).sum(axis=1)) + peak
        k = c.top_k_logprobs
        top = np.partition(logits, self.n_vocab - k, axis=1)[:, self.n_vocab - k:]
        conf = top.mean(axis=1) - lse
        for s in seqs:
            # llama.cpp indexes logits by position in the batch (-1: its last token), the array
            # returned by llama_get_logits by output row; after a prompt both are its last token.
            row = 0 if shared else s.output
            tok = int(L.llama_sampler_sample(s.chain, self.ctx.ctx, -1 if shared else s.output))
            if L.llama_vocab_is_eog(self.lm.vocab, tok):
                s.finish = "stop"
                continue
            s.tokens.append(tok)
            s.logprobs.append(float(logits[row, tok] - lse[row]))
            s.confidence.append(float(conf[row]))
            if s.stop and self._hit_stop(s.tokens, s.stop):
                s.finish = "stop_string"

    def _hit_stop(self, toks: list[int], stop: tuple[str, ...]) -> bool:
        tail = self.lm.detokenize(toks[-8:]).decode("utf-8", errors="ignore")
        return any(x in tail for x in stop)

    def _to_completion(self, req: SampleRequest, s: _Sequence) -> Completion:
        pieces = b""
        ends = []
        for t in s.tokens:
            pieces += self.lm.detokenize([t])
            ends.append(len(pieces.decode("utf-8", errors="ignore")))
        text = pieces.decode("utf-8", errors="replace")
        ends = [min(e, len(text)) for e in ends]
        if s.finish == "stop_string":
            hits = [text.find(x) for x in req.stop if x in text]
            cut = min(hits) if hits else len(text)
            text = text[:cut]
            ends = [min(e, cut) for e in ends]
        return Completion(text=text, n_tokens=len(s.tokens), finish_reason=s.finish, seed=s.seed,
                          token_logprobs=s.logprobs, token_confidence=s.confidence, token_char_ends=ends)

    def close(self) -> None:
        for obj in ("batch", "ctx", "lm"):
            o = getattr(self, obj, None)
            if o is not None:
                o.close()
