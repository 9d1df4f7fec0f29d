"""OpenAI-compatible HTTP sampler: one or many replicas (``vllm serve``, ``llama_cpp.server``, ...).

This is the distributed path. Scaling out is adding replicas to ``sampling.endpoints``; the
sampler spreads the work over them:

- **One HTTP request per sample.** ``llama.cpp``'s server ignores ``n``, and single-sample
  requests shard evenly, so a request for ``n`` samples becomes ``n`` work items, sample ``j``
  seeded with ``derive_seed(request.seed, j)``. The pool's content therefore does not depend on
  which replica served which sample, or on the order they finished in (where the server honours
  ``seed``).
- **Load-balanced, bounded concurrency.** Each sample goes to the live replica with the fewest
  requests in flight, at most ``max_in_flight_per_endpoint`` per replica, so every replica is
  used from the first request on and faster replicas take more. A direct call queues samples
  sample-index-major (every request's sample 0 first), so live policies see early samples of
  every question before later samples of any are sent. :meth:`OpenAICompatSampler.iter_complete`
  streams requests for pool generation: a new question is admitted while fewer samples wait than
  the live replicas have slots, and each question comes back as soon as its last sample arrives.
- **Retries elsewhere.** Timeouts, connection errors, HTTP 5xx and 429 send the sample again, to
  another live replica when there is one; the failing replica gets no new work for ``backoff_base_s
  * 2**(strikes-1)`` (capped, with jitter). A sample that failed ``max_retries + 1`` times fails the
  call. Other HTTP errors (4xx: a bad request) fail the call at once with the server's message.
- **Dead replicas, per replica and for the whole run.** A failure is a *strike* against its replica
  only if the request was sent after the replica's previous strike, so a burst of simultaneous
  errors (one incident) is one strike, and a success clears them. ``dead_after`` strikes in a row,
  one request timeout or a refused connection (no server) mark the replica dead. So does a hang:
  no answer for ``stall_factor`` x the longest answer seen so far (at least ``stall_min_s``, 30 s)
  while other replicas answer; its requests go to the others then instead of after
  ``request_timeout_s`` (1800 s in ``endpoint.yaml``). The state lives on the sampler,
  so later calls (the next questions) skip it. A dead replica is health-probed (``GET /models``)
  after a cool-down (``cooldown_s``, doubling per failed probe up to ``cooldown_max_s``) and comes
  back when it answers. When no replica is alive, each is probed at once; if none answers, the
  call fails naming each replica's last error, with the samples that finished in the error
  (:class:`PartialResultsError`). ``sampler.stats`` / :meth:`~OpenAICompatSampler.run_summary`
  give per replica the samples served, failed and retried requests, and since when it is dead.
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
import logging
import queue
import random
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..config import SamplingConfig
from .base import (Completion, SampleRequest, Sampler, SamplerError, derive_seed, load_prompt_template,
                   run_coroutine_sync)

__all__ = [
    "OpenAICompatSampler",
    "EndpointStats",
    "PartialResultsError",
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
log = logging.getLogger("optscale.samplers.openai")


class _Retryable(Exception):
    def __init__(self, msg: str, down: bool = False, answered: bool = False):
        super().__init__(msg)
        self.down = down  # the replica looks down (a request timed out, nothing listens): dead at once
        self.answered = answered  # the server responded (HTTP 5xx / 429): it is not hung


class PartialResultsError(SamplerError):
    """A call that failed part-way. ``results`` holds, per request, the samples that finished
    (``{sample_index: Completion}``), so nothing already paid for is lost."""

    def __init__(self, msg: str, results: list[dict[int, Completion]]):
        super().__init__(msg)
        self.results = results

    @property
    def n_finished(self) -> int:
        return sum(len(r) for r in self.results)


@dataclass
class EndpointStats:
    """One replica's counters and health, kept for the sampler's lifetime (the whole run):
    a replica found dead stays dead for later calls until a health probe brings it back."""

    url: str
    ok: int = 0  # samples served
    failed: int = 0  # failed requests (timeouts, connection errors, HTTP 5xx / 429)
    retried: int = 0  # of those, sent again (to another live replica when there is one)
    tokens: int = 0
    alive: bool = True
    consecutive_failures: int = 0  # strikes: failures of requests sent after its previous strike
    last_error: str = ""
    dead_since: float | None = None  # time.time() when last marked dead
    deaths: int = 0
    revived: int = 0
    in_flight: int = 0
    epoch: int = 0  # bumped at each strike; a failure of a request sent in an older epoch is no new strike
    backoff_until: float = 0.0  # time.monotonic(): no new request before this
    probe_at: float = 0.0  # time.monotonic() of the next health probe while dead
    last_answer: float = 0.0  # time.monotonic() of its last response (success or HTTP error)
    check: bool = False  # probe it now: its connection failed (a crash resets every open request)
    cooldown_s: float = 0.0

    @property
    def served(self) -> int:
        return self.ok

    def summary(self) -> dict[str, Any]:
        return {
            "url": self.url, "served": self.ok, "failed": self.failed, "retried": self.retried,
            "tokens": self.tokens, "alive": self.alive, "deaths": self.deaths, "revived": self.revived,
            "dead_since": (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.dead_since))
                           if self.dead_since is not None and not self.alive else None),
            "last_error": self.last_error,
        }


@dataclass
class _ReqState:
    index: int
    req: SampleRequest
    prompt: str | None
    tag: Any = None
    results: dict[int, Completion] = field(default_factory=dict)
    left: int = 0


@dataclass
class _Item:
    state: _ReqState
    sample_idx: int
    seed: int
    key: str
    attempts: int = 0
    failed_on: set[int] = field(default_factory=set)


class _Session:
    """One event loop's share of the work: a queue of samples dispatched to the replica with the
    fewest requests in flight, retries steered away from the replica that failed them, health
    probes of dead replicas, and (for streams) admission of new requests while the queue runs low."""

    def __init__(self, sampler: "OpenAICompatSampler", on_completion: Callable | None = None,
                 on_request_done: Callable[[_ReqState], None] | None = None,
                 source: Iterator[tuple[Any, SampleRequest]] | None = None, max_open: int | None = None,
                 stop: threading.Event | None = None):
        self.s = sampler
        self.loop = asyncio.get_running_loop()
        self.on_completion, self.on_request_done = on_completion, on_request_done
        self.source, self.source_done = source, source is None
        self.max_open = max_open or sampler.questions_in_flight
        self.stop = stop
        self.states: list[_ReqState] = []
        self.open = 0
        self.keys: set[str] = set()
        self.cancelled: set[str] = set()
        self.fresh: deque[_Item] = deque()
        self.retry: deque[_Item] = deque()
        self.inflight: dict[str, set[asyncio.Task]] = defaultdict(set)
        self.tasks: set[asyncio.Task] = set()
        self.wake = asyncio.Event()
        self.error: BaseException | None = None
        self.closing = False
        self.probing: set[int] = set()
        self.probed: set[int] = set()  # dead replicas whose probe failed during this session
        self.sent: dict[asyncio.Task, tuple[int, float]] = {}  # in-flight request -> (replica, time sent)
        self.stalled: set[asyncio.Task] = set()  # cancelled because their replica stopped answering
        self.next_stall_check = 0.0
        self.clients: dict[int, Any] = {}

    # -- requests -------------------------------------------------------------------------------
    def _state(self, req: SampleRequest, tag: Any = None) -> _ReqState:
        prompt = self.s.prompt_text(req) if self.s.api == "completions" else None
        st = _ReqState(len(self.states), req, prompt, tag, left=req.n)
        self.states.append(st)
        self.keys.add(req.key)
        self.open += 1
        if req.n == 0:
            self._request_done(st)
        return st

    def add_all(self, requests: Sequence[SampleRequest]) -> None:
        """Every request at once, queued sample-index-major (every request's sample 0 first), so a
        live policy sees early samples of every question before later samples of any are sent."""
        states = [self._state(r) for r in requests]
        for j in range(max((r.n for r in requests), default=0)):
            for st in states:
                if j < st.req.n:
                    self.fresh.append(_Item(st, j, derive_seed(st.req.seed, j), st.req.key))

    def _admit(self) -> None:
        stats = self.s.stats
        cap = self.s.config.max_in_flight_per_endpoint
        while not self.source_done and self.open < self.max_open:
            live = cap * sum(st.alive for st in stats)
            if live == 0 or len(self.fresh) + len(self.retry) >= live:
                return
            try:
                tag, req = next(self.source)  # type: ignore[arg-type]
            except StopIteration:
                self.source_done = True
                return
            st = self._state(req, tag)
            for j in range(req.n):
                self.fresh.append(_Item(st, j, derive_seed(req.seed, j), req.key))

    def _resolve(self, item: _Item, comp: Completion | None) -> None:
        st = item.state
        if comp is not None:
            st.results[item.sample_idx] = comp
        st.left -= 1
        if st.left == 0:
            self._request_done(st)

    def _request_done(self, st: _ReqState) -> None:
        self.open -= 1
        if self.on_request_done is not None:
            self.on_request_done(st)

    def cancel_key(self, key: str) -> None:
        self.cancelled.add(key)
        for q in (self.fresh, self.retry):
            keep = [it for it in q if it.key != key]
            dropped = [it for it in q if it.key == key]
            q.clear()
            q.extend(keep)
            for it in dropped:
                self._resolve(it, None)
        for task in list(self.inflight.get(key, ())):
            task.cancel()
        self.wake.set()

    # -- dispatch -------------------------------------------------------------------------------
    def _client(self, e: int) -> Any:
        if e not in self.clients:
            from openai import AsyncOpenAI

            self.clients[e] = AsyncOpenAI(base_url=self.s.endpoints[e], api_key=self.s.api_key,
                                          timeout=self.s.config.request_timeout_s, max_retries=0)
        return self.clients[e]

    def _place(self, now: float) -> None:
        stats, cap = self.s.stats, self.s.config.max_in_flight_per_endpoint
        for q in (self.retry, self.fresh):
            for _ in range(len(q)):
                free = [e for e, st in enumerate(stats) if st.alive and st.in_flight < cap and now >= st.backoff_until]
                if not free:
                    return
                item = q.popleft()
                if item.key in self.cancelled:
                    self._resolve(item, None)
                    continue
                e = self._choose(item, free)
                if e is None:  # waits for a replica other than the ones that failed it
                    q.append(item)
                    continue
                self._start(item, e)

    def _choose(self, item: _Item, free: list[int]) -> int | None:
        stats = self.s.stats
        preferred = [e for e in free if e not in item.failed_on]
        if preferred:
            return min(preferred, key=lambda e: (stats[e].in_flight, e))
        if any(st.alive and e not in item.failed_on for e, st in enumerate(stats)):
            return None
        return min(free, key=lambda e: (stats[e].in_flight, e))

    def _start(self, item: _Item, e: int) -> None:
        st = self.s.stats[e]
        with self.s._stats_lock:
            st.in_flight += 1
        task = self.loop.create_task(self._one(item, e, st.epoch))
        self.sent[task] = (e, time.monotonic())
        self.inflight[item.key].add(task)
        self.tasks.add(task)

    async def _one(self, item: _Item, e: int, epoch: int) -> None:
        st = self.s.stats[e]
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                with self.s._stats_lock:
                    st.in_flight -= 1
                self.wake.set()

        task = asyncio.current_task()
        try:
            comp = await self.s._request(self._client(e), item.state.req, item, item.state.prompt)
        except asyncio.CancelledError:
            release()
            if task in self.stalled and not self.closing:  # its replica hangs: send it elsewhere
                self.stalled.discard(task)
                self._failure(item, e, epoch, _Retryable(
                    f"no answer for {time.monotonic() - self.sent.get(task, (e, 0.0))[1]:.1f} s while other "
                    "replicas answered (hung?)", down=True))
                return
            if self.closing:
                raise
            self._resolve(item, None)  # cancelled by a stopping policy
            return
        except _Retryable as err:
            release()
            self._failure(item, e, epoch, err)
            return
        except BaseException as err:  # 4xx, a malformed response: fails the call at once
            release()
            self._fail(err)
            return
        finally:
            release()
            self.inflight[item.key].discard(task)
            self.tasks.discard(task)
            sent = self.sent.pop(task, None)
        if sent is not None:
            self.s._max_latency = max(self.s._max_latency, time.monotonic() - sent[1])
            self.s._answers += 1
        with self.s._stats_lock:
            st.last_answer = time.monotonic()
            st.ok += 1
            st.tokens += comp.n_tokens
            st.consecutive_failures = 0
        if self.on_completion is not None and item.key not in self.cancelled:
            try:
                r = self.on_completion(item.state.index, item.sample_idx, comp)
                if asyncio.iscoroutine(r):
                    await r
            except Exception as err:  # a failing callback fails the call, visibly
                item.state.results[item.sample_idx] = comp
                self._fail(err)
                return
        self._resolve(item, comp)

    def _failure(self, item: _Item, e: int, epoch: int, err: _Retryable) -> None:
        s, st, now = self.s, self.s.stats[e], time.monotonic()
        with s._stats_lock:
            st.failed += 1
            st.last_error = str(err)
            if err.answered:
                st.last_answer = now
            if epoch == st.epoch:  # sent after the previous strike: a new strike (one per incident)
                st.epoch += 1
                st.consecutive_failures = s.dead_after if err.down else st.consecutive_failures + 1
                delay = min(s.backoff_max_s, s.backoff_base_s * 2 ** (st.consecutive_failures - 1))
                st.backoff_until = now + delay * (0.5 + 0.5 * s._rng.random())
                if st.alive and st.consecutive_failures >= s.dead_after:
                    self._mark_dead(e, now)
                elif st.alive and not err.answered:
                    st.check = True
        item.attempts += 1
        item.failed_on.add(e)
        if item.key in self.cancelled:
            self._resolve(item, None)
        elif item.attempts > s.config.max_retries:
            self._fail(SamplerError(f"request {item.key!r} sample {item.sample_idx} failed {item.attempts} times; "
                                    f"last on {st.url}: {err}"))
        else:
            st.retried += 1
            self.retry.append(item)
        self.wake.set()

    def _mark_dead(self, e: int, now: float) -> None:
        s, st = self.s, self.s.stats[e]
        st.alive = False
        st.dead_since = time.time()
        st.deaths += 1
        st.cooldown_s = min(s.cooldown_max_s, s.cooldown_s * 2 ** (st.deaths - 1))
        st.probe_at = now + st.cooldown_s
        log.warning("endpoint %s marked dead (%d strike(s); last: %s); %d replica(s) left; health probe in %.0f s",
                    st.url, st.consecutive_failures, st.last_error, sum(x.alive for x in s.stats), st.cooldown_s)

    # -- health probes --------------------------------------------------------------------------
    def _probes(self, now: float) -> None:
        stats = self.s.stats
        all_dead = not any(st.alive for st in stats)
        for e, st in enumerate(stats):
            if e in self.probing:
                continue
            if st.alive:  # a live replica whose connection failed: is the server still there?
                if st.check:
                    st.check = False
                    self.probing.add(e)
                    t = self.loop.create_task(self._probe(e))
                    self.tasks.add(t)
                    t.add_done_callback(self.tasks.discard)
                continue
            # due after the cool-down; at once when no replica is left (nothing else can run)
            if now >= st.probe_at or (all_dead and e not in self.probed):
                self.probing.add(e)
                t = self.loop.create_task(self._probe(e))
                self.tasks.add(t)
                t.add_done_callback(self.tasks.discard)

    async def _probe(self, e: int) -> None:
        s, st = self.s, self.s.stats[e]
        try:
            await self._client(e).with_options(timeout=s.probe_timeout_s).models.list()
            ok, why = True, ""
        except asyncio.CancelledError:
            self.probing.discard(e)
            raise
        except Exception as err:  # any failure keeps it dead
            ok, why = False, f"{type(err).__name__}: {err}"
        with s._stats_lock:
            if st.alive:  # the check of a live replica after a connection failure
                if not ok:
                    st.last_error = f"{st.last_error}; health probe: {why}"
                    self._mark_dead(e, time.monotonic())
                self.probing.discard(e)
                self.wake.set()
                return
            if ok:
                if not st.alive:
                    st.alive = True
                    st.consecutive_failures = 0
                    st.epoch += 1
                    st.backoff_until = 0.0
                    st.revived += 1
                    log.warning("endpoint %s answers its health probe again: back in service", st.url)
                self.probed.discard(e)
            else:
                st.cooldown_s = min(s.cooldown_max_s, max(st.cooldown_s, s.cooldown_s) * 2)
                st.probe_at = time.monotonic() + st.cooldown_s
                self.probed.add(e)
                log.info("endpoint %s still dead (health probe: %s)", st.url, why)
        self.probing.discard(e)
        self.wake.set()

    def _stalls(self, now: float) -> None:
        """A replica whose oldest request has waited ``stall_factor`` times the longest answer seen
        so far (and at least ``stall_min_s``) with no answer of its own in that time, while another
        replica answered after that request was sent, is hung: it is marked dead and its requests go
        elsewhere, long before ``request_timeout_s``. Active once ``stall_min_answers`` answers
        were seen (the longest of them stands for the slow tail)."""
        s = self.s
        if now < self.next_stall_check or s._answers < s.stall_min_answers:
            return
        self.next_stall_check = now + 0.25
        limit = max(s.stall_min_s, s.stall_factor * s._max_latency)
        oldest: dict[int, float] = {}
        for task, (e, t) in self.sent.items():
            if not task.done():
                oldest[e] = min(oldest.get(e, t), t)
        for e, t in oldest.items():
            st = s.stats[e]
            if not st.alive or now - t < limit or now - st.last_answer < limit:
                continue
            if not any(o is not st and o.last_answer > t for o in s.stats):
                continue  # nobody answered since: no evidence against this replica in particular
            log.warning("endpoint %s: no answer for %.1f s (limit %.1f s = max(%.0f s, %.1f x the longest answer "
                        "%.2f s)) while other replicas answered: treating it as hung", st.url, now - t, limit,
                        s.stall_min_s, s.stall_factor, s._max_latency)
            for task, (e2, _) in list(self.sent.items()):
                if e2 == e and not task.done():
                    self.stalled.add(task)
                    task.cancel()

    # -- the loop -------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.wake.set()

    def _left(self) -> int:
        return sum(st.left for st in self.states)

    async def run(self) -> None:
        stats = self.s.stats
        try:
            while True:
                self.wake.clear()
                if self.error is not None:
                    raise self.error
                if self.stop is not None and self.stop.is_set():
                    return
                self._admit()
                if self.open == 0 and self.source_done:
                    return
                now = time.monotonic()
                self._probes(now)
                self._stalls(now)
                self._place(now)
                if (not any(st.alive for st in stats) and not self.probing
                        and len(self.probed) == len(stats)):
                    msgs = "; ".join(f"{st.url}: {st.last_error}" for st in stats)
                    self._fail(SamplerError(f"all {len(stats)} endpoints are dead with {self._left()} samples of "
                                            f"{self.open} open request(s) left ({msgs})"))
                    continue
                # sleep until something happens, or a backoff / probe time comes
                times = [st.backoff_until for st in stats if st.alive and st.backoff_until > now]
                times += [st.probe_at for st in stats if not st.alive]
                timeout = min([0.5] + [max(t - now, 0.005) for t in times])
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.closing = True
            tasks = list(self.tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)


class OpenAICompatSampler(Sampler):
    name = "openai"

    def __init__(self, config: SamplingConfig, endpoints: Sequence[str] | None = None, api: str = "completions",
                 tokenizer: Any = None, served_model: str | None = None, api_key: str = "EMPTY",
                 dead_after: int = 3, backoff_base_s: float = 0.5, backoff_max_s: float = 8.0,
                 extra_body: dict[str, Any] | None = None, cooldown_s: float = 10.0, cooldown_max_s: float = 300.0,
                 probe_timeout_s: float = 10.0, questions_in_flight: int | None = None,
                 stall_factor: float = 3.0, stall_min_s: float = 30.0, stall_min_answers: int = 20):
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
        if dead_after < 1:
            raise SamplerError("dead_after must be >= 1")
        self.config = config
        self.endpoints = [normalize_base_url(u) for u in urls]
        if len(set(self.endpoints)) != len(self.endpoints):
            raise SamplerError(f"sampling.endpoints has duplicates: {self.endpoints}")
        self.api = api
        self.served_model = served_model or config.model
        self.api_key = api_key
        self.dead_after = dead_after
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.cooldown_s, self.cooldown_max_s = cooldown_s, cooldown_max_s
        self.probe_timeout_s = min(probe_timeout_s, config.request_timeout_s)
        self.stall_factor, self.stall_min_s, self.stall_min_answers = stall_factor, stall_min_s, stall_min_answers
        self._max_latency = 0.0  # longest successful request so far (seconds), for hang detection
        self._answers = 0
        self._questions_in_flight = questions_in_flight
        self.extra_body = dict(extra_body or {})
        self.template = load_prompt_template(config.prompt_template)
        self._tokenizer = tokenizer
        self._sessions: list[_Session] = []
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: list[EndpointStats] = [EndpointStats(u) for u in self.endpoints]
        self._rng = random.Random(config.seed)  # backoff jitter only; never affects samples

    @property
    def last_stats(self) -> list[EndpointStats]:
        """Per-replica counters and health since the sampler was made (kept across calls)."""
        return self.stats

    @property
    def questions_in_flight(self) -> int:
        """At most this many requests open at once in :meth:`iter_complete` (pool generation).
        New ones are admitted only while fewer samples wait than the live replicas have slots, so
        this bound matters only when a hung replica holds samples of many questions."""
        if self._questions_in_flight:
            return self._questions_in_flight
        return 2 * len(self.endpoints) * self.config.max_in_flight_per_endpoint + 2

    @property
    def parallel_slots(self) -> int:
        """Samples in flight at once when every replica is busy."""
        return len(self.endpoints) * self.config.max_in_flight_per_endpoint

    def run_summary(self) -> list[dict[str, Any]]:
        """Per replica: samples served, failed requests, retried requests, tokens, whether it is alive,
        and since when it is dead."""
        return [st.summary() for st in self.stats]

    def format_summary(self) -> str:
        lines = []
        total = sum(st.ok for st in self.stats) or 1
        for st in self.stats:
            state = "alive" if st.alive else f"DEAD since {st.summary()['dead_since']} ({st.last_error})"
            lines.append(f"  {st.url}: served {st.ok} ({100 * st.ok / total:.0f}%), failed {st.failed}, "
                         f"retried {st.retried}, deaths {st.deaths}, revived {st.revived}, {state}")
        return "\n".join(lines)

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
            sessions = [s for s in self._sessions if key in s.keys]
        for sess in sessions:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is sess.loop:
                sess.cancel_key(key)
            else:
                sess.loop.call_soon_threadsafe(sess.cancel_key, key)

    def _register(self, sess: _Session) -> None:
        with self._lock:
            self._sessions.append(sess)

    def _unregister(self, sess: _Session) -> None:
        with self._lock:
            self._sessions.remove(sess)

    # -- sync entry points ----------------------------------------------------------------------
    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        out = run_coroutine_sync(lambda: self.agenerate(requests))
        for req, comps in zip(requests, out):
            if len(comps) != req.n:
                raise SamplerError(f"request {req.key!r}: {len(comps)} of {req.n} samples (cancelled?)")
        return out

    def iter_complete(self, jobs: Iterable[tuple[Any, SampleRequest]], max_open: int | None = None
                      ) -> Iterator[tuple[Any, list[Completion]]]:
        """Stream many requests through the replicas: ``jobs`` yields ``(tag, request)`` pairs and
        is read lazily (a new request is taken when fewer samples wait than the live replicas
        have slots, with at most ``max_open`` requests open); ``(tag, completions)`` comes back
        for each request as soon as its last sample arrives, in completion order.

        The HTTP work runs on an event loop in a background thread, so the caller can grade,
        score and checkpoint while requests are in flight. If the run fails (every replica dead,
        a 4xx), every request that finished first is yielded, then the error is raised."""
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        source = iter(jobs)
        box: dict[str, Any] = {}

        def done(st: _ReqState) -> None:
            out.put(("done", st.tag, [st.results[j] for j in sorted(st.results)]))

        async def main() -> None:
            sess = _Session(self, on_request_done=done, source=source, max_open=max_open, stop=stop)
            box["sess"] = sess
            self._register(sess)
            try:
                await sess.run()
            finally:
                self._unregister(sess)

        def target() -> None:
            try:
                asyncio.run(main())
                out.put(("end",))
            except BaseException as e:  # handed to the consumer after the finished requests
                out.put(("error", e))

        t = threading.Thread(target=target, name="optscale-endpoints", daemon=True)
        t.start()
        try:
            while True:
                msg = out.get()
                if msg[0] == "done":
                    yield msg[1], msg[2]
                elif msg[0] == "end":
                    return
                else:
                    raise msg[1]
        finally:
            stop.set()
            sess = box.get("sess")
            if sess is not None and t.is_alive():
                try:
                    sess.loop.call_soon_threadsafe(sess.wake.set)
                except RuntimeError:  # the loop already closed
                    pass
            t.join(timeout=60)

    # -- async core -------------------------------------------------------------------------------
    async def agenerate(self, requests: Sequence[SampleRequest],
                        on_completion: Callable[[int, int, Completion], Any] | None = None) -> list[list[Completion]]:
        """Sample every request across the endpoints; one list per request, samples ordered by
        sample index. ``on_completion(request_index, sample_index, completion)`` runs as each
        sample arrives (it may call :meth:`cancel`). A cancelled request's list holds only the
        samples that finished before the cancellation. If the call fails, the error is a
        :class:`PartialResultsError` holding the samples that finished (a failing callback's own
        exception is raised as it is, with the same ``results`` attribute)."""
        sess = _Session(self, on_completion=on_completion)
        sess.add_all(requests)
        self._register(sess)
        try:
            await sess.run()
        except SamplerError as err:
            raise PartialResultsError(str(err), [st.results for st in sess.states]) from err
        except Exception as err:
            err.results = [st.results for st in sess.states]  # type: ignore[attr-defined]
            raise
        finally:
            self._unregister(sess)
        return [[st.results[j] for j in sorted(st.results)] for st in sess.states]

    async def _request(self, client: Any, req: SampleRequest, item: _Item, prompt: str | None) -> Completion:
        import openai

        body = self._payload(req, item.seed, prompt)
        try:
            if self.api == "chat":
                resp = await client.chat.completions.create(**body)
            else:
                resp = await client.completions.create(**body)
        except openai.APITimeoutError as e:
            raise _Retryable(f"{type(e).__name__}: {e} (after {self.config.request_timeout_s} s)", down=True) from None
        except openai.APIConnectionError as e:
            # nothing listens there (httpx's ConnectError; matched by name, as openai may vendor httpx)
            refused = type(e.__cause__).__name__ == "ConnectError"
            raise _Retryable(f"{type(e).__name__}: {e}" + (f" ({e.__cause__})" if refused else ""), down=refused) from None
        except (openai.RateLimitError, openai.InternalServerError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}", answered=True) from None
        except openai.APIStatusError as e:
            if e.status_code >= 500:
                raise _Retryable(f"HTTP {e.status_code}: {e}", answered=True) from None
            raise SamplerError(f"{client.base_url}: HTTP {e.status_code} for request {req.key!r}: {e}") from None
        except openai.APIResponseValidationError as e:
            raise SamplerError(f"{client.base_url}: malformed response for request {req.key!r}: {e}") from None
        if not resp.choices:
            raise _Retryable(f"empty choices from {client.base_url}")
        return completion_from_choice(resp.choices[0], resp.usage, item.seed, req.stop,
                                      self.config.top_k_logprobs, api=self.api)
