"""Live mode with the deterministic fake sampler: same decisions as replay on the same stream."""

import numpy as np

from optscale.data.benchmarks import Problem
from optscale.evaluation.replay import PoolArrays, replay
from optscale.data.grading import Grader, answer_classes, extract_answer, is_equivalent
from optscale.evaluation.live import OnlineClasses, question_samples, run_live
from optscale.policies import make_policy
from optscale.sampling import Completion, SampleRequest, get_sampler
from optscale.sampling.fake import FAKE_GOLD


def problems(k=6):
    return [Problem("fake", f"q{i}", f"question {i}", FAKE_GOLD, i) for i in range(k)]


def score_fn(question, comps):
    return [float(np.exp(np.mean(c.token_logprobs))) for c in comps]


def test_fake_sampler_is_deterministic():
    s = get_sampler("fake", None)
    r = SampleRequest(prompt="p", n=3, max_new_tokens=64, seed=5, key="k")
    a, b = s.generate([r])[0], s.generate([r])[0]
    assert [c.text for c in a] == [c.text for c in b] and [c.n_tokens for c in a] == [c.n_tokens for c in b]
    assert all(extract_answer(c.text) is not None and len(c.token_logprobs) == c.n_tokens for c in a)


def test_live_matches_replay_of_the_same_stream_and_stops_asking():
    probs, max_N = problems(), 8
    sampler = get_sampler("fake", None)
    comps = [question_samples(sampler, p, p.question, max_N, 1, 0, 64) for p in probs]
    ans = np.array([[extract_answer(c.text) for c in cs] for cs in comps], object)
    data = PoolArrays("fake", np.array([p.id for p in probs], object), np.array([score_fn("", cs) for cs in comps]),
                      np.array([[is_equivalent(FAKE_GOLD, a) for a in row] for row in ans]),
                      np.array([[c.n_tokens for c in cs] for cs in comps], float),
                      np.array([answer_classes(list(row)) for row in ans]), ans)
    identity = np.arange(max_N)[None, None, :].repeat(len(probs), 1)
    for name, kw in (("asc", {"threshold": 0.9}), ("esc", {"window": 2}), ("bon", {"N": 3})):
        rep = replay(make_policy(name, **kw), data, identity, max_N)
        sampler.calls.clear()
        live = run_live(make_policy(name, **kw), sampler, probs, score_fn, max_N, chunk=1, max_new_tokens=64)
        assert live["n_used"].tolist() == rep.n[0].tolist()
        assert np.allclose(live["tokens_generated"], rep.tokens[0])
        assert live["correct"].tolist() == rep.correct[0].tolist()
        assert len(sampler.calls) == int(rep.n[0].sum())  # no request after the stop
    chunked = run_live(make_policy("bon", N=3), sampler, probs, score_fn, max_N, chunk=4, max_new_tokens=64)
    assert (chunked["n_generated"] == 4).all() and (chunked["n_used"] == 3).all()
    assert (chunked["tokens_generated"] >= chunked["tokens_charged"]).all()


class UnboxedSampler:
    """Every sample ends in the gold number without stating it as the answer, with a fixed
    finish_reason: "length" = cut off at the token cap."""

    def __init__(self, finish_reason):
        self.finish_reason = finish_reason

    def generate(self, requests):
        return [[Completion(text=f"First 40, then 2 more: 40 + 2 = {FAKE_GOLD}", n_tokens=12,
                            finish_reason=self.finish_reason, seed=r.seed + i, token_logprobs=[-0.1] * 12)
                 for i in range(r.n)] for r in requests]


def test_truncated_sample_without_a_stated_answer_is_not_credited_live():
    probs = problems(2)
    for finish, answer in (("stop", FAKE_GOLD), ("length", None)):
        policy = lambda: make_policy("bon", N=2)  # noqa: E731
        for run in (lambda s: run_live(policy(), s, probs, score_fn, 4, chunk=2),
                    lambda s: run_live_concurrent(policy, ReversedAsyncFake(s), probs, score_fn, 4)):
            live = run(UnboxedSampler(finish))
            assert live["answer"].tolist() == [answer] * 2, finish
            assert live["correct"].tolist() == [answer is not None] * 2, finish


def test_online_classes_are_the_graders_classes():
    """Labels as answers arrive equal Grader.classes on the whole stream, including its rule for an
    unresolved comparison (own class, never a representative: "4" is not compared with the tower)."""
    tower = "9^{9^{9}}"  # math-verify tries to evaluate it exactly: never finishes
    answers = ["3", tower, tower, None, "4", "3.0", r"\frac{6}{2}"]
    g = Grader(cpu_budget_s=0.3)
    online = OnlineClasses(grader=g)
    labels = [online.add(a) for a in answers]
    assert labels == g.classes(answers) == [0, 1, 1, -1, 4, 0, 0]
    assert g.stats.compare_timeouts == {("3", tower)}
    assert online.count == len(answers)


# ---------------------------------------------------------------------------------------------
# Concurrent live mode: all questions at once, cancellation when a policy stops
# ---------------------------------------------------------------------------------------------
import asyncio  # noqa: E402

import pytest  # noqa: E402

import test_openai_sampler as tos  # noqa: E402  (the scripted OpenAI-style servers)
from test_openai_sampler import servers  # noqa: E402,F401  (fixture: scripted servers, always shut down)

from optscale.evaluation.live import run_live_concurrent  # noqa: E402
from optscale.sampling import fake_server  # noqa: E402  (the fake replicas' token script)
from optscale.sampling.openai_compat import OpenAICompatSampler  # noqa: E402

CONCURRENT_POLICIES = (("bon", {"N": 2}), ("esc", {"window": 2}), ("asc", {"threshold": 0.9}), ("bon", {}))


class ReversedAsyncFake:
    """The fake sampler (or ``inner``) behind the async interface, delivering each question's samples in
    *reverse* index order, questions interleaved: the worst arrival order for the policy."""

    def __init__(self, inner=None):
        self.inner = inner or get_sampler("fake", None)
        self.cancelled: list[str] = []

    def cancel(self, key):
        self.cancelled.append(key)

    async def agenerate(self, requests, on_completion=None):
        out = self.inner.generate(requests)
        got = [dict() for _ in requests]
        for j in reversed(range(max(r.n for r in requests))):
            for i, r in enumerate(requests):
                if j < r.n and r.key not in self.cancelled:
                    got[i][j] = out[i][j]
                    on_completion(i, j, out[i][j])
        return [[g[j] for j in sorted(g)] for g in got]


def test_concurrent_feeds_samples_in_index_order_whatever_the_arrival_order():
    probs, max_N = problems(4), 6
    for name, kw in CONCURRENT_POLICIES:
        ref = run_live(make_policy(name, **kw), get_sampler("fake", None), probs, score_fn, max_N, chunk=max_N,
                       max_new_tokens=64)
        s = ReversedAsyncFake()
        live = run_live_concurrent(lambda: make_policy(name, **kw), s, probs, score_fn, max_N, max_new_tokens=64)
        for col in ("n_used", "answer", "correct", "tokens_charged", "policy"):
            assert live[col].tolist() == ref[col].tolist(), (name, col)
        # everything arrived before index 0 could be shown: nothing was left to cancel
        assert (live["n_generated"] == max_N).all() and (live["n_cancelled"] == 0).all()
    with pytest.raises(TypeError, match="agenerate"):
        run_live_concurrent(lambda: make_policy("bon"), get_sampler("fake", None), probs, score_fn, max_N)


def boxed_tokens(seed: int, max_tokens: int) -> list[str]:
    """Scripted 'model' whose samples carry a boxed answer (0-3) set by the seed."""
    return [f" \\boxed{{{(seed >> 4) % 4}}}"] + [f" w{i}" for i in range(1, max_tokens)]


def seed_score(question, comps):
    return [((c.seed * 2654435761) % 1000) / 1000 for c in comps]


def _http_sampler(urls):
    cfg = tos._cfg(**{"sampling.max_in_flight_per_endpoint": 2, "sampling.request_timeout_s": 5.0})
    return OpenAICompatSampler(cfg, endpoints=urls, tokenizer=tos.TemplateTok(), backoff_base_s=0.02,
                               backoff_max_s=0.1)


def test_concurrent_over_http_cancels_stopped_questions_and_matches_the_sync_stream(servers, monkeypatch):
    monkeypatch.setattr(fake_server, "scripted_tokens", boxed_tokens)
    probs = [Problem("ds", f"q{i}", f"question {i}", "2", i) for i in range(3)]
    max_N = 12  # the queue is sample-index-major: each question's first samples go out first
    a, b = servers(delay_s=0.02), servers(delay_s=0.12)  # uneven replicas: samples arrive out of order
    sampler = _http_sampler([a.url, b.url])
    live = run_live_concurrent(lambda: make_policy("bon", N=2), sampler, probs, seed_score, max_N, seed=3,
                               max_new_tokens=4)
    sent = [0] * len(probs)
    for body in a.requests + b.requests:
        sent[int(body["prompt"].split("question ")[1].split("<")[0])] += 1
    # (1) each question stopped after 2 samples: its remaining requests were never sent / aborted
    assert (live["n_used"] == 2).all()
    assert all(n < max_N for n in sent), sent
    assert (live["n_cancelled"] > 0).all() and (live["n_generated"] + live["n_cancelled"] == max_N).all()
    assert (live["n_generated"] <= np.array(sent)).all()

    # (2) same decisions as the synchronous run over the same stream (one replica, in order)
    ref_sampler = _http_sampler([servers().url])
    for name, kw in (("bon", {"N": 2}), ("esc", {"window": 2})):  # the fake-sampler test covers the rest
        ref = run_live(make_policy(name, **kw), ref_sampler, probs, seed_score, max_N, chunk=max_N, seed=3,
                       max_new_tokens=4)
        got = live if (name, kw) == ("bon", {"N": 2}) else run_live_concurrent(
            lambda: make_policy(name, **kw), sampler, probs, seed_score, max_N, seed=3, max_new_tokens=4)
        for col in ("n_used", "answer", "correct", "tokens_charged"):
            assert got[col].tolist() == ref[col].tolist(), (name, col)
    assert len(set(live["answer"])) > 1  # the selected answers come from the samples, not a constant
