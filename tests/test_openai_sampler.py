"""The OpenAI-compatible sampler against real HTTP servers on 127.0.0.1.

Two kinds of servers:
- fake OpenAI-compatible replicas (``optscale.sampling.fake_server``, in-process threads) whose
  answers are a deterministic function of the request's seed and which can be told to fail,
  stall, or die; they exercise sharding, bounded concurrency, retries, replica death and
  cancellation in a few seconds (tests/test_endpoint_scaling.py has the scale-out tests);
- ``llama_cpp.server`` serving the embedded CPU model (tests marked ``server``; skipped when
  llama-cpp-python is not installed: ``scripts/install_llama_cpp.sh``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from optscale.config import load_config
from optscale.sampling import SAMPLERS, SampleRequest, SamplerError, derive_seed
from optscale.sampling.fake_server import FakeOpenAIServer, scripted_tokens
from optscale.sampling.openai_compat import OpenAICompatSampler
from optscale.sampling.convert import char_ends_from_tokens, completion_from_choice, normalize_base_url, topk_mean


# ---------------------------------------------------------------------------------------------
# Fake OpenAI-compatible replicas (optscale.sampling.fake_server)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def servers():
    """``servers(**kw)`` starts a fake replica on 127.0.0.1 (answers are a function of the seed);
    all are killed at the end of the test."""
    started: list[FakeOpenAIServer] = []

    def make(delay_s: float = 0.0, **kw) -> FakeOpenAIServer:
        kw.setdefault("fail_status", 503)
        kw.setdefault("max_wait_s", 30.0)
        s = FakeOpenAIServer(latency_s=delay_s, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


class TemplateTok:
    """Stands in for a chat tokenizer (the llama.cpp tests use the real one)."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        assert not tokenize and add_generation_prompt
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def _cfg(**over):
    base = {"sampling.max_in_flight_per_endpoint": 2, "sampling.max_retries": 3, "sampling.request_timeout_s": 5.0}
    base.update(over)
    return load_config("cpu", base).sampling


def _sampler(urls, api="completions", **over) -> OpenAICompatSampler:
    return OpenAICompatSampler(_cfg(**over), endpoints=urls, api=api, tokenizer=TemplateTok(),
                               backoff_base_s=0.02, backoff_max_s=0.1)


def _reqs(ns=(4, 3), max_tokens=2):
    return [SampleRequest(prompt=f"question {i}", n=n, max_new_tokens=max_tokens, seed=100 + i, key=f"ds/q{i}")
            for i, n in enumerate(ns)]


def _content(out):
    return [[(c.text, c.seed, c.n_tokens, c.finish_reason, tuple(c.token_logprobs)) for c in comps] for comps in out]


# ---------------------------------------------------------------------------------------------
# Pure conversion helpers
# ---------------------------------------------------------------------------------------------
def test_topk_mean_and_char_ends():
    assert topk_mean([-3.0, -1.0, -2.0, -10.0], 2) == pytest.approx(-1.5)
    assert topk_mean([-1.0], 5) == -1.0  # fewer than k given
    assert char_ends_from_tokens(["ab", "c", "def"], "abcd") == [2, 3, 4]  # clipped by a stop string
    with pytest.raises(SamplerError):
        topk_mean([], 3)


def test_completion_from_choice_completions_and_stop_reasons():
    lp = {"tokens": [" x", " y", "\n\n"], "token_logprobs": [-0.1, -0.2, -0.3],
          "top_logprobs": [{" x": -0.1, "a": -1.0}, {" y": -0.2, "b": -2.0, "c": -0.05}, {"\n\n": -0.3}]}
    c = completion_from_choice({"text": " x y", "finish_reason": "stop", "logprobs": lp}, None, 7, ("\n\n",), 2)
    # llama.cpp style: no stop_reason, the stop string is in the tokens past the text
    assert c.finish_reason == "stop_string" and c.n_tokens == 3 and c.seed == 7
    assert c.token_char_ends == [2, 4, 4]
    assert c.token_confidence == pytest.approx([-0.55, -0.125, -0.3])
    c = completion_from_choice({"text": " x y", "finish_reason": "stop", "stop_reason": None, "logprobs": lp},
                               None, 7, (), 2)
    assert c.finish_reason == "stop"  # EOS
    c = completion_from_choice({"text": " x y", "finish_reason": "stop", "stop_reason": "\n\n", "logprobs": lp},
                               None, 7, ("\n\n",), 2)
    assert c.finish_reason == "stop_string"  # vLLM names the stop string
    c = completion_from_choice({"text": " x y\n\n", "finish_reason": "length", "logprobs": lp}, None, 7, (), 2)
    assert c.finish_reason == "length"
    with pytest.raises(SamplerError, match="finish_reason"):
        completion_from_choice({"text": "", "finish_reason": "abort", "logprobs": lp}, None, 7, (), 2)
    bad = dict(lp, token_logprobs=[-0.1])
    with pytest.raises(SamplerError, match="3 tokens, 1 log-probs"):
        completion_from_choice({"text": "x", "finish_reason": "stop", "logprobs": bad}, None, 7, (), 2)


def test_config_errors_and_registration():
    with pytest.raises(SamplerError, match="sampling.endpoints"):
        OpenAICompatSampler(_cfg(), endpoints=[])
    with pytest.raises(SamplerError, match="duplicates"):
        OpenAICompatSampler(_cfg(), endpoints=["http://a:1", "http://a:1/v1"])
    with pytest.raises(SamplerError, match="http"):
        normalize_base_url("127.0.0.1:8000")
    assert normalize_base_url("http://h:8000/") == "http://h:8000/v1"
    assert SAMPLERS.get("openai") is OpenAICompatSampler
    cfg = load_config("cpu", {"sampling.endpoints": ["http://127.0.0.1:9/v1"]}).sampling
    assert OpenAICompatSampler(cfg, tokenizer=TemplateTok()).endpoints == ["http://127.0.0.1:9/v1"]


# ---------------------------------------------------------------------------------------------
# Scripted servers: sharding, retries, replica death, cancellation
# ---------------------------------------------------------------------------------------------
def test_payload_prefix_stop_seed_and_chat(servers):
    s = servers()
    req = SampleRequest(prompt="Q?", n=2, max_new_tokens=5, seed=3, key="k", prefix="Step 1: ", stop=("\n\n",))
    out = _sampler([s.url]).generate([req])[0]
    bodies = sorted(s.requests, key=lambda b: b["seed"])
    assert sorted(b["seed"] for b in bodies) == sorted(derive_seed(3, j) for j in range(2))
    b = bodies[0]
    assert b["prompt"].endswith("<|im_start|>assistant\nStep 1: ") and b["prompt"].startswith("<|im_start|>user\nQ?")
    assert b["stop"] == ["\n\n"] and b["n"] == 1 and b["logprobs"] == 5 and b["add_special_tokens"] is False
    assert [c.seed for c in out] == [derive_seed(3, 0), derive_seed(3, 1)]
    assert out[0].text == "".join(scripted_tokens(derive_seed(3, 0), 3)) and out[0].finish_reason == "stop"
    assert len(out[0].token_logprobs) == out[0].n_tokens == 3
    assert out[0].token_confidence == pytest.approx([(-0.5 - 1 - 2 - 3 - 4) / 5] * 3)

    s2 = servers()
    out2 = _sampler([s2.url], api="chat").generate([req])[0]
    b = s2.requests[0]
    assert b["messages"][-1] == {"role": "assistant", "content": "Step 1: "}
    assert b["continue_final_message"] is True and b["add_generation_prompt"] is False
    assert b["logprobs"] is True and b["top_logprobs"] == 5
    assert _content([out2]) == _content([out])  # same samples through either API


def test_shards_over_replicas_with_bounded_in_flight(servers):
    a, b = servers(delay_s=0.05), servers(delay_s=0.05)
    reqs = _reqs(ns=(6, 5))
    sampler = _sampler([a.url, b.url])
    out = sampler.generate(reqs)
    assert [len(x) for x in out] == [6, 5]
    for r, comps in zip(reqs, out):
        assert [c.seed for c in comps] == [derive_seed(r.seed, j) for j in range(r.n)]
        assert all(c.text == "".join(scripted_tokens(c.seed, 2)) and c.finish_reason == "length" for c in comps)
    assert len(a.requests) > 0 and len(b.requests) > 0  # both replicas used
    assert len(a.requests) + len(b.requests) == 11  # no duplicate work
    assert a.max_active <= 2 and b.max_active <= 2  # max_in_flight_per_endpoint
    assert sum(st.ok for st in sampler.last_stats) == 11
    # same seeds, one replica -> same pool content
    single = _sampler([servers().url]).generate(reqs)
    assert _content(single) == _content(out)


def test_retries_on_5xx_with_backoff(servers):
    s = servers(fail_first=2, fail_status=503)
    sampler = _sampler([s.url], **{"sampling.max_in_flight_per_endpoint": 1})
    out = sampler.generate(_reqs(ns=(3,)))
    assert len(out[0]) == 3
    assert len(s.requests) == 5 and sampler.last_stats[0].failed == 2
    assert sampler.last_stats[0].alive  # two failures < dead_after=3


def test_timeout_moves_work_to_live_replica(servers):
    slow, fast = servers(delay_s=8.0), servers()
    sampler = _sampler([slow.url, fast.url], **{"sampling.request_timeout_s": 1.0})
    t0 = time.monotonic()
    out = sampler.generate(_reqs(ns=(4, 4)))
    assert [len(x) for x in out] == [4, 4] and time.monotonic() - t0 < 8.0  # nobody waited for the slow one
    st = {s.url: s for s in sampler.last_stats}
    assert st[slow.url].failed >= 1 and st[slow.url].ok == 0 and st[fast.url].ok == 8
    assert "Timeout" in st[slow.url].last_error
    slow.kill()  # end its stalled handlers now


def test_4xx_fails_at_once_with_server_message(servers):
    s = servers(fail_first=100, fail_status=400)
    with pytest.raises(SamplerError, match="HTTP 400"):
        _sampler([s.url], **{"sampling.max_in_flight_per_endpoint": 1}).generate(_reqs(ns=(2,)))
    assert len(s.requests) == 1  # not retried


def test_all_replicas_dead_raises():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SamplerError, match="all 1 endpoints are dead"):
        _sampler([f"http://127.0.0.1:{port}/v1"], **{"sampling.max_retries": 10}).generate(_reqs(ns=(2,)))


def test_too_many_failures_of_one_sample_raises(servers):
    s = servers(fail_first=100, fail_status=500)
    with pytest.raises(SamplerError, match="failed 2 times"):
        OpenAICompatSampler(_cfg(**{"sampling.max_retries": 1, "sampling.max_in_flight_per_endpoint": 1}),
                            endpoints=[s.url], tokenizer=TemplateTok(), dead_after=10,
                            backoff_base_s=0.01).generate(_reqs(ns=(1,)))


def test_replica_killed_mid_run_loses_nothing(servers):
    reqs = _reqs(ns=(6, 6))
    reference = _sampler([servers().url]).generate(reqs)
    a, b = servers(delay_s=0.05), servers(delay_s=0.3)
    sampler = _sampler([a.url, b.url])
    first: list[int] = []

    def on_completion(i, j, comp):
        if not first:
            first.append(j)
            b.kill()  # b has requests in flight: they lose their connection

    out = asyncio.run(sampler.agenerate(reqs, on_completion=on_completion))
    assert _content(out) == _content(reference)
    st = {s.url: s for s in sampler.last_stats}
    assert st[b.url].failed >= 1 and not st[b.url].alive
    assert st[a.url].ok + st[b.url].ok == 12


def test_cancel_stops_a_question_and_keeps_the_others(servers):
    s = servers(delay_s=0.1)
    reqs = _reqs(ns=(10, 3))
    sampler = _sampler([s.url])

    def policy(i, j, comp):  # a stopping policy: question 0 is done after 2 samples
        seen.setdefault(i, []).append(j)
        if i == 0 and len(seen[0]) == 2:
            sampler.cancel(reqs[0].key)

    seen: dict[int, list[int]] = {}
    out = asyncio.run(sampler.agenerate(reqs, on_completion=policy))
    assert len(out[1]) == 3  # the other question is complete
    assert 2 <= len(out[0]) <= 3  # the two seen, plus one that finished in the same instant at most
    assert len(s.requests) <= 2 + 3 + 2  # cancelled samples were never sent
    # cancel() from another thread (a policy running elsewhere) while the synchronous API runs;
    # generate() insists on complete requests, so it reports the cancelled one
    n_before = len(s.requests)

    def cancel_when_started():
        t_end = time.monotonic() + 10
        while len(s.requests) < n_before + 2 and time.monotonic() < t_end:
            time.sleep(0.01)
        sampler.cancel(reqs[0].key)

    t = threading.Thread(target=cancel_when_started)
    t.start()
    with pytest.raises(SamplerError, match="cancelled"):
        sampler.generate(reqs)
    t.join()


def test_generate_inside_running_event_loop(servers):
    s = servers()

    async def notebook_cell():  # Jupyter runs cells inside an event loop
        return _sampler([s.url]).generate(_reqs(ns=(2,)))

    assert len(asyncio.run(notebook_cell())[0]) == 2


# ---------------------------------------------------------------------------------------------
# Real llama.cpp servers (the embedded CPU model)
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    def __init__(self, gguf: Path, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", "1024", "--n_threads", "1", "--logits_all", "True",
               "--verbose", "False"]
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> None:
        import httpx

        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/models", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"llama_cpp.server on port {self.port} not ready after {timeout} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def llama_servers(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (scripts/install_llama_cpp.sh)")
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] extras not installed")
    from optscale.sampling.model_files import assemble_gguf

    gguf = assemble_gguf()
    logs = tmp_path_factory.mktemp("llama_logs")
    started = [LlamaServer(gguf, logs / f"server{i}.log") for i in range(2)]
    try:
        for s in started:
            s.wait_ready()
        yield started
    finally:
        for s in started:
            s.kill()


@pytest.fixture(scope="module")
def chat_tokenizer():
    from optscale.sampling.convert import load_chat_tokenizer

    return load_chat_tokenizer("qwen2.5-coder-0.5b-instruct-q4")


def _llama_sampler(urls, tok, **over):
    cfg = _cfg(**{"sampling.max_in_flight_per_endpoint": 1, "sampling.request_timeout_s": 60.0, **over})
    return OpenAICompatSampler(cfg, endpoints=urls, tokenizer=tok, backoff_base_s=0.1, backoff_max_s=0.5)


@pytest.mark.server
@pytest.mark.slow
def test_llama_server_two_replicas_one_killed_matches_single_replica(llama_servers, chat_tokenizer):
    a, b = llama_servers
    reqs = [SampleRequest(prompt="What is 2+3? Answer briefly.", n=3, max_new_tokens=6, seed=11, key="t/0"),
            SampleRequest(prompt="Name a prime number.", n=3, max_new_tokens=6, seed=12, key="t/1",
                          prefix="A prime number is")]
    single = _llama_sampler([a.url], chat_tokenizer).generate(reqs)
    again = _llama_sampler([a.url], chat_tokenizer).generate(reqs)
    assert _content(again) == _content(single), "llama.cpp server does not honour per-request seeds"
    for r, comps in zip(reqs, single):
        assert len(comps) == r.n
        for c in comps:
            assert 1 <= c.n_tokens <= 6 and len(c.token_logprobs) == c.n_tokens == len(c.token_confidence)
            assert all(lp <= 0 for lp in c.token_logprobs) and c.finish_reason in ("stop", "length")
            assert c.token_char_ends[-1] == len(c.text)

    sampler = _llama_sampler([a.url, b.url], chat_tokenizer)
    killed: list[bool] = []

    def kill_b(i, j, comp):
        if not killed:
            killed.append(True)
            b.kill()

    out = asyncio.run(sampler.agenerate(reqs, on_completion=kill_b))
    assert killed and [len(x) for x in out] == [3, 3]
    got, want = _content(out), _content(single)
    for i, (g_q, w_q) in enumerate(zip(got, want)):
        for j, (g, w) in enumerate(zip(g_q, w_q)):
            assert g[:4] == w[:4], f"question {i} sample {j}: {g[:4]} != {w[:4]}"
            # log-probs of the same tokens on another replica differ by the quantised kernels'
            # batch-shape noise (measured up to ~0.007 here), not by content
            assert np.allclose(g[4], w[4], atol=2e-2), f"question {i} sample {j}: log-probs differ"
    st = {s.url: s for s in sampler.last_stats}
    assert st[a.url].ok + st[b.url].ok == 6


@pytest.mark.server
def test_llama_server_chat_api_and_cancel(llama_servers, chat_tokenizer):
    a = llama_servers[0]
    if a.proc.poll() is not None:
        pytest.skip("server was killed by an earlier test")
    sampler = _llama_sampler([a.url], chat_tokenizer)
    chat = OpenAICompatSampler(sampler.config, endpoints=[a.url], api="chat")
    out = chat.generate([SampleRequest(prompt="Say hi.", n=1, max_new_tokens=4, seed=5, key="c")])[0]
    assert out[0].n_tokens >= 1 and len(out[0].token_logprobs) == out[0].n_tokens

    reqs = [SampleRequest(prompt="Count to ten.", n=6, max_new_tokens=4, seed=1, key="stopme")]
    t0 = time.monotonic()
    res = asyncio.run(sampler.agenerate(reqs, on_completion=lambda i, j, c: sampler.cancel("stopme")))
    assert len(res[0]) == 1 and time.monotonic() - t0 < 30


def test_paper_and_endpoint_profiles_load():
    paper, ep = load_config("paper"), load_config("endpoint")
    assert paper.sampling.backend == "vllm" and ep.sampling.backend == "openai"
    assert paper.sampling.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" == ep.sampling.model
    assert (paper.sampling.temperature, paper.sampling.top_p) == (0.7, 0.95)
    assert set(paper.sampling.n_samples.values()) == {64} and set(paper.data.max_questions.values()) == {0}
    assert paper.scoring.primary == "prm" and paper.scoring.aggregation == "mean"
    assert ep.sampling.endpoints and all(u.startswith("http") for u in ep.sampling.endpoints)
    many = load_config("endpoint", "{sampling.endpoints: [http://a:8000/v1, http://b:8000/v1]}")
    assert many.sampling.endpoints == ("http://a:8000/v1", "http://b:8000/v1")


@pytest.mark.server
def test_llama_cpp_in_process_matches_server(llama_servers, chat_tokenizer):
    """The in-process llama.cpp backend sends the same prompts and seeds as the endpoint sampler."""
    from optscale.sampling.llama_cpp import LlamaCppSampler

    a = llama_servers[0]
    if a.proc.poll() is not None:
        pytest.skip("server was killed by an earlier test")
    reqs = [SampleRequest(prompt="What is 2+3? Answer briefly.", n=2, max_new_tokens=5, seed=21, key="ip")]
    cfg = _cfg(**{"sampling.max_new_tokens": {"math500": 64, "gsm8k": 64, "aime24": 64, "aime25": 64, "amc23": 64}})
    local = LlamaCppSampler(cfg, tokenizer=chat_tokenizer, n_ctx=512, n_threads=1)
    assert SAMPLERS.get("llama-cpp") is LlamaCppSampler
    out = local.generate(reqs)
    remote = _llama_sampler([a.url], chat_tokenizer).generate(reqs)
    assert [c.seed for c in out[0]] == [derive_seed(21, j) for j in range(2)]
    assert all(len(c.token_logprobs) == c.n_tokens >= 1 for c in out[0])
    assert [c.text for c in out[0]] == [c.text for c in remote[0]]
