"""A fake OpenAI-compatible server for tests and benchmarks of the endpoint path (no model).

It listens on 127.0.0.1 only and answers ``POST /v1/completions``, ``POST /v1/chat/completions``
and ``GET /v1/models`` with canned completions whose tokens, log-probs and length are a
deterministic function of the request's ``seed`` (:func:`scripted_tokens`), so the same request
gives the same sample on every replica. What a real replica does under load or in trouble is
scripted:

- ``latency_s``: seconds per request, a number or a ``(low, high)`` range (drawn from the seed);
- ``slots``: how many requests are served at once; the others wait for a slot (vLLM's batch);
- ``fail_rate`` / ``fail_first`` / ``fail_status``: HTTP errors, a seeded fraction of requests or
  the first few;
- ``hang``: accept requests and never answer (a wedged server; ``/v1/models`` hangs too);
- :meth:`FakeOpenAIServer.kill`: die like a crashed process (open connections are reset, new ones
  refused); ``kill_after``: die by itself after serving that many requests;
- ``bad_reply`` (one of :data:`BAD_REPLIES`) / ``bad_first``: answer HTTP 200 with a broken body,
  to every request or to the first few: no log-probs, a log-prob of 5.0 or NaN, a negative or
  absurd token count, no text, no choices, truncated JSON, or a proxy's HTML page.

Every wait loop is bounded (``max_wait_s``) and polls the kill flag, so no test can leave a thread
spinning. Run one as a process for command-line experiments::

    python -m optscale.sampling.fake_server --port 8101 --latency 0.2 --slots 4 [--fail-rate 0.3 | --hang]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAIServer", "scripted_tokens", "BAD_REPLIES", "main"]

WORDS = ("alpha", "beta", "gamma", "delta", "eps")

# HTTP 200 answers a broken or misconfigured server gives (``bad_reply=``), and what each one is
BAD_REPLIES: dict[str, str] = {
    "no_logprobs": "the server ignores `logprobs`: no log-probs in the choice",
    "positive_logprob": "the first token's log-prob is 5.0 (a probability above 1)",
    "nan_logprob": "the first token's log-prob is NaN",
    "negative_tokens": "usage.completion_tokens is -5 and no log-probs are returned",
    "huge_tokens": "usage.completion_tokens is 10**12",
    "no_text": "the choice has no text (chat: the message has no content)",
    "no_choices": "a JSON object that is not a completion: an error message with no choices",
    "truncated_json": "the JSON body is cut off half-way (Content-Type application/json)",
    "html": "a proxy's HTML error page (Content-Type text/html)",
}
PROXY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


def spoil_answer(answer: dict, how: str) -> dict:
    """``answer`` (a good completion or chat completion body) broken as :data:`BAD_REPLIES` says
    (the body-level modes; ``truncated_json`` and ``html`` are made when sending)."""
    choice = answer["choices"][0]
    chat = "message" in choice
    if how == "no_logprobs":
        choice["logprobs"] = None
    elif how in ("positive_logprob", "nan_logprob"):
        value = 5.0 if how == "positive_logprob" else float("nan")
        if chat:
            choice["logprobs"]["content"][0]["logprob"] = value
        else:
            choice["logprobs"]["token_logprobs"][0] = value
    elif how == "negative_tokens":
        choice["logprobs"] = None
        answer["usage"]["completion_tokens"] = -5
    elif how == "huge_tokens":
        answer["usage"]["completion_tokens"] = 10**12
    elif how == "no_text":
        if chat:
            del choice["message"]["content"]
        else:
            del choice["text"]
    elif how == "no_choices":
        return {"object": "error", "message": "the model is overloaded", "type": "ServiceUnavailable"}
    elif how not in ("truncated_json", "html"):
        raise ValueError(f"bad_reply={how!r}: expected one of {sorted(BAD_REPLIES)}")
    return answer


def scripted_tokens(seed: int, n: int) -> list[str]:
    """The fake model: ``n`` tokens determined by the seed."""
    return [f" {WORDS[(seed >> (3 * i)) % 5]}{i}" for i in range(n)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    def log_message(self, *args: Any) -> None:  # keep test and benchmark output clean
        pass

    def _die(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:
        f: FakeOpenAIServer = self.server.fake
        if f.dead:
            return self._die()
        if f.hang:
            f._wait(lambda: not f.hang, f.max_wait_s)
            if f.dead or f.hang:
                return self._die()
        if self.path.rstrip("/").endswith("/models"):
            return self._send(200, {"object": "list", "data": [{"id": f.model, "object": "model"}]})
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        f: FakeOpenAIServer = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw:  # the client gave up before sending its body
            self.close_connection = True
            return
        body = json.loads(raw)
        with f.lock:
            f.requests.append(body)
            n_seen = len(f.requests)
            f.active += 1
            f.max_active = max(f.max_active, f.active)
        try:
            if f.dead:
                return self._die()
            if n_seen <= f.fail_first or (f.fail_rate and f._rng.random() < f.fail_rate):
                with f.lock:
                    f.failed += 1
                return self._send(f.fail_status, {"error": {"message": "injected failure", "code": f.fail_status}})
            if f.hang:
                f._wait(lambda: False, f.max_wait_s)
                return self._die()
            # wait for a slot, then "generate" for the request's latency
            t_end = time.monotonic() + f.max_wait_s
            while not f.slots.acquire(timeout=0.01):
                if f.dead or time.monotonic() > t_end:
                    return self._die()
            try:
                if not f._wait(lambda: False, f.latency(int(body.get("seed") or 0))) and f.dead:
                    return self._die()
                if f.dead:
                    return self._die()
                if f.bad_reply is not None and (f.bad_first is None or n_seen <= f.bad_first):
                    with f.lock:
                        f.bad += 1
                    self._send_bad(f.bad_reply, f.answer(body))
                else:
                    self._send(200, f.answer(body))
            finally:
                f.slots.release()
            with f.lock:
                f.completed += 1
                done = f.completed
            if f.kill_after is not None and done >= f.kill_after:
                threading.Thread(target=f.kill, daemon=True).start()
        finally:
            with f.lock:
                f.active -= 1

    def _send_bad(self, how: str, answer: dict) -> None:
        if how == "html":
            return self._send_raw(200, PROXY_PAGE, "text/html")
        if how == "truncated_json":
            data = json.dumps(answer).encode()
            return self._send_raw(200, data[: len(data) // 2], "application/json")
        self._send(200, spoil_answer(answer, how))

    def _send(self, status: int, payload: dict) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json")

    def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away (cancelled request)
            self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a real server's backlog; the stdlib default (5) resets bursts of connections
    fake: "FakeOpenAIServer"

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self.fake.lock:
            self.fake.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self.fake.lock:
            self.fake.connections.discard(request)
        super().shutdown_request(request)


class FakeOpenAIServer:
    """One fake replica on ``127.0.0.1:<port>`` (0 = a free port), serving from a background thread.

    ``requests`` holds every POST body received, ``completed`` counts 200 answers (``bad`` of
    them broken on purpose), ``max_active`` the most requests open at once. Use as a context
    manager or call :meth:`kill`.
    """

    def __init__(self, port: int = 0, latency_s: float | tuple[float, float] = 0.0, slots: int = 64,
                 fail_rate: float = 0.0, fail_first: int = 0, fail_status: int = 500, hang: bool = False,
                 stop_at: int | tuple[int, int] = 3, kill_after: int | None = None, model: str = "fake",
                 seed: int = 0, max_wait_s: float = 120.0, bad_reply: str | None = None,
                 bad_first: int | None = None):
        if slots < 1:
            raise ValueError("slots must be >= 1")
        if bad_reply is not None and bad_reply not in BAD_REPLIES:
            raise ValueError(f"bad_reply={bad_reply!r}: expected one of {sorted(BAD_REPLIES)}")
        self.bad_reply = bad_reply  # answer 200 with this broken body (BAD_REPLIES) ...
        self.bad_first = bad_first  # ... to the first this many requests (None: to every request)
        self.latency_s = latency_s
        self.slots = threading.BoundedSemaphore(slots)
        self.n_slots = slots
        self.fail_rate, self.fail_first, self.fail_status = fail_rate, fail_first, fail_status
        self.hang = hang
        self.stop_at = stop_at  # a sample shorter than max_tokens ends with EOS after this many tokens
        self.kill_after = kill_after
        self.model = model
        self.max_wait_s = max_wait_s
        self._rng = random.Random(seed)  # which requests fail; never what a sample says
        self.dead = False
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.connections: set[socket.socket] = set()
        self.active = self.max_active = self.completed = self.failed = 0
        self.bad = 0  # broken 200 answers sent (bad_reply)
        self.httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.fake = self
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-openai-{self.port}", daemon=True)
        self._thread.start()

    def __enter__(self) -> "FakeOpenAIServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()

    # -- behaviour ------------------------------------------------------------------------------
    def latency(self, seed: int) -> float:
        if isinstance(self.latency_s, (tuple, list)):
            lo, hi = self.latency_s
            return lo + (hi - lo) * random.Random(seed).random()
        return float(self.latency_s)

    def _wait(self, until: Any, seconds: float) -> bool:
        """Sleep up to ``seconds`` in short steps; True when ``until()`` became true, False on
        timeout or death."""
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            if self.dead:
                return False
            if until():
                return True
            time.sleep(min(0.01, max(t_end - time.monotonic(), 0)))
        return False

    def answer(self, body: dict) -> dict:
        seed = int(body.get("seed") or 0)
        mt = int(body["max_tokens"])
        stop_at = self.stop_at
        if isinstance(stop_at, (tuple, list)):
            stop_at = stop_at[0] + seed % (stop_at[1] - stop_at[0] + 1)
        n = min(mt, stop_at)
        toks = scripted_tokens(seed, n)
        finish = "length" if n == mt else "stop"
        text = "".join(toks)
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        if "messages" in body:
            k = int(body.get("top_logprobs") or 1)
            content = [{"token": t, "logprob": -0.5, "bytes": None,
                        "top_logprobs": [{"token": t, "logprob": -0.5, "bytes": None}]
                        + [{"token": f"alt{i}", "logprob": -1.0 - i, "bytes": None} for i in range(k - 1)]}
                       for t in toks]
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                      "logprobs": {"content": content}}
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [choice], "usage": usage}
        k = int(body.get("logprobs") or 1)
        top = [{t: -0.5, **{f"alt{i}": -1.0 - i for i in range(k - 1)}} for t in toks]
        offsets, pos = [], 0
        for t in toks:
            offsets.append(pos)
            pos += len(t)
        choice = {"index": 0, "text": text, "finish_reason": finish,
                  "logprobs": {"tokens": toks, "token_logprobs": [-0.5] * n, "top_logprobs": top,
                               "text_offset": offsets}}
        return {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": usage}

    def kill(self) -> None:
        """Die like a crashed replica: open connections are reset, new ones refused."""
        if self.dead:
            return
        self.dead = True
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            conns = list(self.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optscale.sampling.fake_server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, nargs="+", default=[0.2], help="seconds, or LOW HIGH")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--fail-rate", type=float, default=0.0)
    ap.add_argument("--fail-status", type=int, default=500)
    ap.add_argument("--hang", action="store_true")
    ap.add_argument("--bad-reply", choices=sorted(BAD_REPLIES), default=None,
                    help="answer 200 with this broken body: " + "; ".join(f"{k}: {v}" for k, v in BAD_REPLIES.items()))
    ap.add_argument("--bad-first", type=int, default=None, help="only to the first this many requests")
    ap.add_argument("--kill-after", type=int, default=None, help="exit after serving this many requests")
    ap.add_argument("--stop-at", type=int, nargs="+", default=[3, 8], help="tokens per sample, or LOW HIGH")
    ap.add_argument("--model", default="fake")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    a = ap.parse_args(argv)
    lat = a.latency[0] if len(a.latency) == 1 else (a.latency[0], a.latency[1])
    stop = a.stop_at[0] if len(a.stop_at) == 1 else (a.stop_at[0], a.stop_at[1])
    srv = FakeOpenAIServer(a.port, latency_s=lat, slots=a.slots, fail_rate=a.fail_rate, fail_status=a.fail_status,
                           hang=a.hang, stop_at=stop, model=a.model, seed=a.seed,
                           max_wait_s=min(a.max_seconds, 600.0), bad_reply=a.bad_reply, bad_first=a.bad_first)
    print(f"fake OpenAI server on {srv.url} (latency {lat} s, {a.slots} slots, fail rate {a.fail_rate}, "
          f"hang {a.hang}, kill after {a.kill_after})", flush=True)
    t_end = time.monotonic() + a.max_seconds
    try:
        while time.monotonic() < t_end and not srv.dead:
            if a.kill_after is not None and srv.completed >= a.kill_after:
                print(f"killed after {srv.completed} requests", flush=True)
                os._exit(1)  # a crash, not a clean shutdown
            time.sleep(0.02)
    except KeyboardInterrupt:
        pass
    finally:
        print(f"served {srv.completed}, failed {srv.failed}, received {len(srv.requests)}", flush=True)
        srv.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
