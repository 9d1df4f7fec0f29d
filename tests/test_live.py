"""Live mode with the deterministic fake sampler: same decisions as replay on the same stream."""

import numpy as np

from optscale.data import Problem
from optscale.evaluation import PoolArrays, replay
from optscale.grading import answer_classes, extract_answer, is_equivalent
from optscale.live import question_samples, run_live
from optscale.policies import make_policy
from optscale.samplers import SampleRequest, get_sampler
from optscale.samplers.fake import FAKE_GOLD


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
