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
- **Invalid replies are replica faults.** A 200 whose body is not a JSON completion (truncated, a
  proxy's HTML page) or whose completion fails :func:`~optscale.sampling.base.validate_completion`
  (no text, no log-probs although asked for, a log-prob above 0 or not finite, a token count that
  cannot be) is retried like a 5xx, to another replica when there is one; the replica is named in
  a warning and in the error when every try failed. Nothing from such a reply reaches a pool.
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
import json
import queue
import random
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..config import SamplingConfig
from .base import (Completion, InvalidReplyError, SampleRequest, Sampler, SamplerError, load_prompt_template,
                   run_coroutine_sync, validate_completion)
from .convert import completion_from_choice, load_chat_tokenizer, normalize_base_url
from .endpoints import EndpointStats, PartialResultsError, _Item, _ReqState, _Retryable, _Session

__all__ = [
    "OpenAICompatSampler",
]


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
        """Per replica: samples served, failed requests (of them invalid replies), retried requests,
        tokens, whether it is alive, and since when it is dead."""
        return [st.summary() for st in self.stats]

    def format_summary(self) -> str:
        lines = []
        total = sum(st.ok for st in self.stats) or 1
        for st in self.stats:
            state = "alive" if st.alive else f"DEAD since {st.summary()['dead_since']} ({st.last_error})"
            lines.append(f"  {st.url}: served {st.ok} ({100 * st.ok / total:.0f}%), failed {st.failed} "
                         f"({st.invalid} invalid replies), "
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
        except openai.APIResponseValidationError as e:  # strict response validation only
            raise _Retryable(f"invalid reply: malformed body (HTTP {e.status_code}): {e}", answered=True,
                             invalid=True) from None
        except openai.APIStatusError as e:
            if e.status_code >= 500:
                raise _Retryable(f"HTTP {e.status_code}: {e}", answered=True) from None
            raise SamplerError(f"{client.base_url}: HTTP {e.status_code} for request {req.key!r}: {e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a JSON body cut off, or not text
            raise _Retryable(f"invalid reply: the body is not valid JSON ({type(e).__name__}: {e})", answered=True,
                             invalid=True) from None
        if isinstance(resp, str):  # the openai client hands back a body that is not JSON as text
            raise _Retryable(f"invalid reply: the body is not a JSON completion (it starts {resp[:80]!r})",
                             answered=True, invalid=True)
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise _Retryable(f"invalid reply: no choices (choices={choices!r:.80})", answered=True, invalid=True)
        try:
            comp = completion_from_choice(choices[0], getattr(resp, "usage", None), item.seed, req.stop,
                                          self.config.top_k_logprobs, api=self.api, max_tokens=req.max_new_tokens)
            return validate_completion(comp, req)
        except InvalidReplyError as e:
            raise _Retryable(f"invalid reply: {e}", answered=True, invalid=True) from None
