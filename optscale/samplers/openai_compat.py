"""OpenAI-compatible HTTP sampler: one or many replicas (``vllm serve``, ``llama_cpp.server``, ...).

This is the distributed path. Scaling out is adding replicas to ``sampling.endpoints``; the
sampler spreads the work over them:

- **One HTTP request per sample.** ``llama.cpp``'s server ignores ``n``, and single-sample
  requests shard evenly, so a request for ``n`` samples becomes ``n`` work items, sample ``j``
  seeded with ``derive_seed(request.seed, j)``. The pool's content therefore does not depend on
  which replica served which sample, or on the order they finished in (where the server honours
  ``seed``).
- **Bounded concurrency.** Each live replica runs ``max_in_flight_per_endpoint`` workers that
  pull items from one shared queue, so fast replicas take more work. The queue is filled
  sample-index-major (every request's sample 0 first), so live policies see early samples of
  every question before later samples of any are sent.
- **Retries with backoff.** Timeouts, connection errors, HTTP 5xx and 429 put the item back on
  the shared queue (any replica may take it) and the failing worker waits ``backoff_base_s *
  2**(failures-1)`` (capped, with jitter). An item that failed ``max_retries + 1`` times fails the
  call. Other HTTP errors (4xx: a bad request) fail the call at once with the server's message.
- **Dead replicas.** After ``dead_after`` consecutive failures a replica is marked dead for the
  rest of the call; its items are already back on the queue, completed samples are kept. If every
  replica is dead the call fails naming each replica's last error.
- **Cancellation** (live adaptive sampling). ``agenerate(requests, on_completion=cb)`` calls
  ``cb(request_index, sample_index, completion)`` as each sample arrives; a stopping policy that
  decides a question is done calls :meth:`OpenAICompatSampler.cancel` with the request's ``key``:
  its queued items are dropped and its in-flight HTTP requests are cancelled (the connection is
  closed, which aborts generation on vLLM). ``agenerate`` then returns the samples that finished.

Two APIs (``api=``):

- ``"completions"`` (default): ``/v1/completions`` with the chat template applied here (the
  model's tokenizer, as the paper's generator does), so ``request.prefix`` continues a partial
  assistant answer on any server. Log-probs via ``logprobs=k``.
- ``"chat"``: ``/v1/chat/completions`` (no local tokenizer needed); a prefix is sent as a final
  assistant message with vLLM's ``continue_final_message``. Log-probs via ``top_logprobs=k``.

Completions carry the same fields as the CPU sampler's: the chosen tokens' log-probs and the mean
top-k log-prob per token as the server reports them (vLLM and llama.cpp report the raw model
distribution), token end offsets from the token strings, and ``usage.completion_tokens``.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..config import SamplingConfig
from .base import (Completion, SampleRequest, Sampler, SamplerError, derive_seed, load_prompt_template,
                   run_coroutine_sync)

__all__ = [
    "OpenAICompatSampler",
    "EndpointStats",
    "topk_mean",
    "char_ends_from_tokens",
    "completion_from_choice",
    "normalize_base_url",
    "load_chat_tokenizer",
]


# ---------------------------------------------------------------------------------------------
# Conversion helpers (shared with the vLLM and llama.cpp samplers)
# ---------------------------------------------------------------------------------------------
def topk_mean(logprobs: Sequence[float], k: int) -> float:
    """Mean of the ``k`` largest log-probs (fewer if fewer are given): DeepConf's token confidence."""
    vals = sorted((float(x) for x in logprobs), reverse=True)[: max(k, 1)]
    if not vals:
        raise SamplerError("no top log-probs for a generated token (did the server ignore `logprobs`?)")
    return sum(vals) / len(vals)


def char_ends_from_tokens(pieces: Sequence[str], text: str) -> list[int]:
    """End offset in ``text`` of each generated token, from the tokens' strings (clipped to the
    text, which a stop string may have shortened)."""
    ends, total = [], 0
    for p in pieces:
        total += len(p)
        ends.append(min(total, len(text)))
    return ends


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or key access, for both openai-client objects and plain dicts (llama.cpp)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    val = getattr(obj, name, default)
    if val is default and getattr(obj, "model_extra", None):
        val = obj.model_extra.get(name, default)
    return val


def _finish(choice: Any, stop: Sequence[str], tail: str) -> str:
    """Map OpenAI's finish_reason to stop | stop_string | length. vLLM reports ``stop_reason``
    (the matched stop string, or None for EOS); otherwise a stop string is recognised in the
    generated tokens past the returned text."""
    fr = _get(choice, "finish_reason")
    if fr == "length":
        return "length"
    if fr != "stop":
        raise SamplerError(f"server returned finish_reason={fr!r}")
    sr = _get(choice, "stop_reason")
    if isinstance(sr, str):
        return "stop_string"
    if stop and sr is None and any(s in tail for s in stop):
        return "stop_string"
    return "stop"


def completion_from_choice(choice: Any, usage: Any, seed: int, stop: Sequence[str], top_k: int,
                           api: str = "completions") -> Completion:
    """One OpenAI ``choice`` (+ ``usage``) to a :class:`Completion`.

    ``completions`` API: ``choice.logprobs`` has ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (one ``{token: logprob}`` per token). ``chat`` API:
    ``choice.logprobs.content`` is a list of ``{token, logprob, top_logprobs: [{token, logprob}]}``.
    """
    if api == "chat":
        msg = _get(choice, "message")
        text = _get(msg, "content") or ""
        content = _get(_get(choice, "logprobs"), "content") or []
        tokens = [_get(t, "token") or "" for t in content]
        chosen = [float(_get(t, "logprob")) for t in content]
        tops = [[float(_get(x, "logprob")) for x in (_get(t, "top_logprobs") or [])] or [float(_get(t, "logprob"))]
                for t in content]
    else:
        text = _get(choice, "text") or ""
        lp = _get(choice, "logprobs")
        tokens = list(_get(lp, "tokens") or [])
        chosen = [float(x) for x in (_get(lp, "token_logprobs") or [])]
        tops = [list((d or {}).values()) for d in (_get(lp, "top_logprobs") or [])]
    if len(chosen) != len(tokens) or len(tops) != len(tokens):
        raise SamplerError(f"server returned {len(tokens)} tokens, {len(chosen)} log-probs, {len(tops)} top-k lists")
    # As in the CPU sampler, every generated token counts (a stop string's tokens included,
    # EOS excluded); the text ends before the stop string and the token ends are clipped to it.
    tail = "".join(tokens)[len(text):]
    n_usage = _get(usage, "completion_tokens") if usage is not None else None
    n_tokens = len(tokens) if tokens else int(n_usage or 0)
    return Completion(
        text=text,
        n_tokens=int(n_tokens),
        finish_reason=_finish(choice, stop, tail),
        seed=int(seed),
        token_logprobs=chosen,
        token_confidence=[topk_mean(t, top_k) for t in tops],
        token_char_ends=char_ends_from_tokens(tokens, text),
    )


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` or ``http://host:8000/v1/`` -> ``http://host:8000/v1``."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SamplerError(f"endpoint {url!r}: expected an http(s):// base URL such as http://127.0.0.1:8000/v1")
    return url if url.endswith("/v1") else url + "/v1"


def load_chat_tokenizer(model: str) -> Any:
    """The tokenizer whose chat template formats prompts for ``model``: the embedded CPU model's
    (from its converted cache or its GGUF), else a local directory or hub id."""
    from transformers import AutoTokenizer

    from ..hf_models import EMBEDDED_MODELS
    from ..model_files import assemble_gguf, cache_dir

    if model in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[model]
        for d in sorted(cache_dir().glob(f"{spec.name}-*-hf-{(spec.sha256 or '')[:12]}")):
            if (d / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(str(d))
        gguf = assemble_gguf(spec)
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        return AutoTokenizer.from_pretrained(model)
    except Exception as e:
        raise SamplerError(
            f"openai sampler (api='completions') formats prompts with {model!r}'s chat template but "
            f"cannot load its tokenizer ({type(e).__name__}: {e}). Give a local model directory as "
            "sampling.model, or use api='chat'."
        ) from None


# ---------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------
class _Retryable(Exception):
    pass


@dataclass
class EndpointStats:
    """Per-replica counters of the last call (``sampler.last_stats``)."""

    url: str
    ok: int = 0
    failed: int = 0
    tokens: int = 0
    alive: bool = True
    consecutive_failures: int = 0
    last_error: str = ""


@dataclass
class _Item:
    req_idx: int
    sample_idx: int
    seed: int
    key: str
    attempts: int = 0


@dataclass
class _Run:
    """State of one ``agenerate`` call."""

    loop: asyncio.AbstractEventLoop
    keys: set[str]
    cancelled: set[str] = field(default_factory=set)
    inflight: dict[str, set] = field(default_factory=lambda: defaultdict(set))


class OpenAICompatSampler(Sampler):
    name = "openai"

    def __init__(self, config: SamplingConfig, endpoints: Sequence[str] | None = None, api: str = "completions",
                 tokenizer: Any = None, served_model: str | None = None, api_key: str = "EMPTY",
                 dead_after: int = 3, backoff_base_s: float = 0.5, backoff_max_s: float = 8.0,
                 extra_body: dict[str, Any] | None = None):
        if api not in ("completions", "chat"):
            raise SamplerError(f"api={api!r}: use 'completions' or 'chat'")
        urls = list(endpoints if endpoints is not None else config.endpoints)
        if not urls:
            raise SamplerError(
                "sampling.backend='openai' needs sampling.endpoints, e.g. "
                "sampling.endpoints=[http://127.0.0.1:8000/v1] (one entry per `vllm serve` replica)"
            )
        if config.max_in_flight_per_endpoint < 1:
            raise SamplerError("sampling.max_in_flight_per_endpoint must be >= 1")
        self.config = config
        self.endpoints = [normalize_base_url(u) for u in urls]
        if len(set(self.endpoints)) != len(self.endpoints):
            raise SamplerError(f"sampling.endpoints has duplicates: {self.endpoints}")
        self.api = api
        self.served_model = served_model or config.model
        self.api_key = api_key
        self.dead_after = dead_after
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.extra_body = dict(extra_body or {})
        self.template = load_prompt_template(config.prompt_template)
        self._tokenizer = tokenizer
        self._runs: list[_Run] = []
        self._lock = threading.Lock()
        self.last_stats: list[EndpointStats] = []
        self._rng = random.Random(config.seed)  # backoff jitter only; never affects samples

    # -- metadata / prompts ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            **super().describe(),
            "model": self.served_model,
            "api": self.api,
            "endpoints": list(self.endpoints),
            "seeding": "one request per sample, seed = derive_seed(request seed, sample index)",
            "logprobs": "server-reported log-probs: chosen token and top-%d mean" % c.top_k_logprobs,
        }

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_chat_tokenizer(self.config.model)
        return self._tokenizer

    def prompt_text(self, req: SampleRequest) -> str:
        """The raw /v1/completions prompt: chat template + generation prompt + prefix."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": req.prompt}], tokenize=False, add_generation_prompt=True
        )
        return text + req.prefix

    def _payload(self, req: SampleRequest, seed: int, prompt: str | None) -> dict[str, Any]:
        c = self.config
        body: dict[str, Any] = {
            "model": self.served_model,
            "max_tokens": req.max_new_tokens,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "seed": seed,
            "n": 1,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        extra = dict(self.extra_body)
        if self.api == "chat":
            msgs = [{"role": "user", "content": req.prompt}]
            if req.prefix:
                msgs.append({"role": "assistant", "content": req.prefix})
                extra.update(continue_final_message=True, add_generation_prompt=False)
            body.update(messages=msgs, logprobs=True, top_logprobs=c.top_k_logprobs)
        else:
            body.update(prompt=prompt, logprobs=c.top_k_logprobs)
            # the chat template already holds any BOS; vLLM would otherwise add a second one
            extra.setdefault("add_special_tokens", False)
        if extra:
            body["extra_body"] = extra
        return body

    # -- cancellation ---------------------------------------------------------------------------
    def cancel(self, key: str) -> None:
        """Stop sampling for request ``key`` in every running call: queued samples are dropped,
        in-flight HTTP requests cancelled. Thread-safe; a no-op for unknown keys."""
        with self._lock:
            runs = [r for r in self._runs if key in r.keys]
        for run in runs:
            def _do(run: _Run = run) -> None:
                run.cancelled.add(key)
                for task in list(run.inflight.get(key, ())):
                    task.cancel()

            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is run.loop:
                _do()
            else:
                run.loop.call_soon_threadsafe(_do)

    # -- sync entry point -----------------------------------------------------------------------
    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        out = run_coroutine_sync(lambda: self.agenerate(requests))
        for req, comps in zip(requests, out):
            if len(comps) != req.n:
                raise SamplerError(f"request {req.key!r}: {len(comps)} of {req.n} samples (cancelled?)")
        return out

    # -- async core -------------------------------------------------------------------------------
    async def agenerate(self, requests: Sequence[SampleRequest],
                        on_completion: Callable[[int, int, Completion], Any] | None = None) -> list[list[Completion]]:
        """Sample every request across the endpoints; one list per request, samples ordered by
        sample index. ``on_completion(request_index, sample_index, completion)`` runs as each
        sample arrives (it may call :meth:`cancel`). A cancelled request's list holds only the
        samples that finished before the cancellation."""
        loop = asyncio.get_running_loop()
        run = _Run(loop=loop, keys={r.key for r in requests})
        prompts = [self.prompt_text(r) if self.api == "completions" else None for r in requests]
        # Sample-index-major order (every request's sample 0, then every sample 1, ...): each
        # question gets its first samples early, so a live policy can stop it before its later
        # samples are dispatched. The pool's content does not depend on this order.
        items = [_Item(i, j, derive_seed(r.seed, j), r.key)
                 for j in range(max((r.n for r in requests), default=0))
                 for i, r in enumerate(requests) if j < r.n]
        results: list[dict[int, Completion]] = [dict() for _ in requests]
        stats = [EndpointStats(u) for u in self.endpoints]
        self.last_stats = stats
        if not items:
            return [[] for _ in requests]

        from openai import AsyncOpenAI

        clients = [AsyncOpenAI(base_url=u, api_key=self.api_key, timeout=self.config.request_timeout_s,
                               max_retries=0) for u in self.endpoints]
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        for it in items:
            queue.put_nowait(it)
        outstanding = len(items)
        closing = False  # set when the call ends and the workers are cancelled
        done: asyncio.Future = loop.create_future()

        def resolve_one() -> None:
            nonlocal outstanding
            outstanding -= 1
            if outstanding == 0 and not done.done():
                done.set_result(None)

        def fail(exc: BaseException) -> None:
            if not done.done():
                done.set_exception(exc)

        def check_all_dead() -> None:
            if outstanding > 0 and not any(s.alive for s in stats):
                msgs = "; ".join(f"{s.url}: {s.last_error}" for s in stats)
                fail(SamplerError(f"all {len(stats)} endpoints are dead with {outstanding} samples left ({msgs})"))

        async def worker(e: int) -> None:
            st, client = stats[e], clients[e]
            consecutive = 0
            while st.alive:
                item = await queue.get()
                if not st.alive:  # marked dead while this worker waited: hand the item back
                    queue.put_nowait(item)
                    return
                if item.key in run.cancelled:
                    resolve_one()
                    continue
                req = requests[item.req_idx]
                task = asyncio.ensure_future(self._request(client, req, item, prompts[item.req_idx]))
                run.inflight[item.key].add(task)
                try:
                    comp = await task
                except asyncio.CancelledError:
                    if closing:  # the worker itself is being shut down
                        task.cancel()
                        raise
                    resolve_one()  # this request was cancelled by a policy
                    continue
                except _Retryable as err:
                    st.failed += 1
                    st.last_error = str(err)
                    item.attempts += 1
                    consecutive += 1
                    if item.attempts > self.config.max_retries:
                        fail(SamplerError(f"request {item.key!r} sample {item.sample_idx} failed "
                                          f"{item.attempts} times; last on {st.url}: {err}"))
                        return
                    if item.key in run.cancelled:
                        resolve_one()
                    else:
                        queue.put_nowait(item)  # any live replica may take it
                    st.consecutive_failures += 1
                    if st.consecutive_failures >= self.dead_after:
                        st.alive = False
                        check_all_dead()
                        return
                    delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (consecutive - 1))
                    await asyncio.sleep(delay * (0.5 + 0.5 * self._rng.random()))
                    continue
                except SamplerError as err:
                    fail(err)
                    return
                finally:
                    run.inflight[item.key].discard(task)
                consecutive = 0
                st.consecutive_failures = 0
                st.ok += 1
                st.tokens += comp.n_tokens
                results[item.req_idx][item.sample_idx] = comp
                if on_completion is not None:
                    try:
                        r = on_completion(item.req_idx, item.sample_idx, comp)
                        if asyncio.iscoroutine(r):
                            await r
                    except Exception as err:  # a failing callback fails the call, visibly
                        fail(err)
                        return
                resolve_one()

        with self._lock:
            self._runs.append(run)
        workers = [asyncio.ensure_future(worker(e)) for e in range(len(self.endpoints))
                   for _ in range(self.config.max_in_flight_per_endpoint)]
        try:
            await done
        finally:
            closing = True
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for tasks in run.inflight.values():
                for t in tasks:
                    t.cancel()
            with self._lock:
                self._runs.remove(run)
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        return [[res[j] for j in sorted(res)] for res in results]

    async def _request(self, client: Any, req: SampleRequest, item: _Item, prompt: str | None) -> Completion:
        import openai

        body = self._payload(req, item.seed, prompt)
        try:
            if self.api == "chat":
                resp = await client.chat.completions.create(**body)
            else:
                resp = await client.completions.create(**body)
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        except openai.APIStatusError as e:
            if e.status_code >= 500:
                raise _Retryable(f"HTTP {e.status_code}: {e}") from None
            raise SamplerError(f"{client.base_url}: HTTP {e.status_code} for request {req.key!r}: {e}") from None
        except openai.APIResponseValidationError as e:
            raise SamplerError(f"{client.base_url}: malformed response for request {req.key!r}: {e}") from None
        if not resp.choices:
            raise _Retryable(f"empty choices from {client.base_url}")
        return completion_from_choice(resp.choices[0], resp.usage, item.seed, req.stop,
                                      self.config.top_k_logprobs, api=self.api)

