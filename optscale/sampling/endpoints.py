"""Work dispatch over OpenAI-compatible replicas for :class:`~optscale.sampling.openai_compat.OpenAICompatSampler`:
one session per call, load-balanced bounded concurrency, retries elsewhere, strikes and dead
replicas, health probes, stalls and cancellation (the policy is described in that module).

An invalid reply (a body that is not a JSON completion, or a completion that fails
:func:`~optscale.sampling.base.validate_completion`) is a failure of the replica that sent it,
like an HTTP 5xx: a strike, a warning naming the replica, and the sample sent again elsewhere. A
sample that fails every try fails the call with an error naming each replica tried and its error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .base import Completion, SampleRequest, SamplerError, derive_seed

if TYPE_CHECKING:  # pragma: no cover
    from .openai_compat import OpenAICompatSampler

__all__ = ["EndpointStats", "PartialResultsError"]


log = logging.getLogger("optscale.sampling.openai_compat")


class _Retryable(Exception):
    def __init__(self, msg: str, down: bool = False, answered: bool = False, invalid: bool = False):
        super().__init__(msg)
        self.down = down  # the replica looks down (a request timed out, nothing listens): dead at once
        self.answered = answered  # the server responded (HTTP 5xx / 429, an invalid reply): it is not hung
        self.invalid = invalid  # it answered 200 with a reply that is not a valid completion


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
    failed: int = 0  # failed requests (timeouts, connection errors, HTTP 5xx / 429, invalid replies)
    invalid: int = 0  # of those, HTTP 200 answers that were not a valid completion
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
            "invalid": self.invalid, "tokens": self.tokens, "alive": self.alive, "deaths": self.deaths,
            "revived": self.revived,
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
    errors: list[tuple[str, str]] = field(default_factory=list)  # (replica URL, error) of each failed try


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
        if err.invalid:
            tries = s.config.max_retries + 1
            log.warning("endpoint %s: %s (request %r sample %d, try %d of %d)%s", st.url, err, item.key,
                        item.sample_idx, item.attempts + 1, tries,
                        "; sending it again" if item.attempts + 1 < tries else "")
        with s._stats_lock:
            st.failed += 1
            st.invalid += int(err.invalid)
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
        item.errors.append((st.url, str(err)))
        if item.key in self.cancelled:
            self._resolve(item, None)
        elif item.attempts > s.config.max_retries:
            urls = list(dict.fromkeys(u for u, _ in item.errors))
            earlier = list(dict.fromkeys(f"{u}: {m}" for u, m in item.errors[:-1] if (u, m) != (st.url, str(err))))
            self._fail(SamplerError(
                f"request {item.key!r} sample {item.sample_idx} failed {item.attempts} times on "
                f"{len(urls)} replica(s) ({', '.join(urls)}); last on {st.url}: {err}"
                + (f"; earlier: {'; '.join(earlier)}" if earlier else "")))
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
