"""Every sampler reply is validated before it reaches a pool (issue 29, cases 3, 5 and 10).

A misbehaving OpenAI-compatible replica (``FakeOpenAIServer(bad_reply=...)`` on 127.0.0.1) answers
HTTP 200 with a broken body: no log-probs (a server that ignores ``logprobs``), a log-prob of 5.0
or NaN, a negative or absurd token count, no text, truncated JSON, a proxy's HTML page. Each is a
fault of that replica: the sample is sent again to another replica, the replica is named in the log
and in the error, and when no replica gives a valid reply the call fails with a
:class:`~optscale.sampling.base.SamplerError` naming every replica tried and why. The in-process
backends apply the same :func:`~optscale.sampling.base.validate_completion`.
"""

from __future__ import annotations

import logging
import math
import re
from types import SimpleNamespace

import pandas as pd
import pytest

from optscale.config import load_config
from optscale.data.benchmarks import Problem
from optscale.data.generation import generate_pool
from optscale.data.pools import read_pool
from optscale.sampling import SampleRequest, SamplerError
from optscale.sampling.base import Completion, InvalidReplyError, completion_problems, validate_completion
from optscale.sampling.fake_server import BAD_REPLIES, FakeOpenAIServer
from optscale.sampling.openai_compat import OpenAICompatSampler

# what the error (and the replica's last_error) says for each broken reply
REASONS = {
    "no_logprobs": r"0 token_logprobs for 3 tokens \(did the server ignore `logprobs`\?\)",
    "positive_logprob": r"token_logprobs\[0\] = 5\.0 is not a finite log-probability <= 0",
    "nan_logprob": r"token_logprobs\[0\] = nan is not a finite log-probability <= 0",
    "negative_tokens": r"usage\.completion_tokens=-5",
    "huge_tokens": r"usage\.completion_tokens=1000000000000",
    "no_text": r"no text",
    "no_choices": r"no choices",
    "truncated_json": r"not valid JSON",
    "html": r"not a JSON completion.*<html>",
}
CHAT_REASONS = dict(REASONS, no_text=r"no message content")


from test_endpoint_scaling import TemplateTok, servers  # noqa: E402,F401  (the shared fake-server fixture)


def _cfg(tmp_path=None, **over):
    base = {"sampling.max_in_flight_per_endpoint": 2, "sampling.max_retries": 3, "sampling.request_timeout_s": 5.0,
            "sampling.n_samples.gsm8k": 3, "sampling.max_new_tokens.gsm8k": 8}
    if tmp_path is not None:
        base.update({"pools.pool_dir": str(tmp_path), "pools.pool_name": "p"})
    base.update(over)
    return load_config("cpu", base)


def _sampler(urls, api="completions", cfg=None, **kw) -> OpenAICompatSampler:
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    kw.setdefault("cooldown_s", 0.05)
    return OpenAICompatSampler((cfg or _cfg()).sampling, endpoints=urls, api=api, tokenizer=TemplateTok(), **kw)


def _reqs(k=3, n=3, max_tokens=5):
    return [SampleRequest(prompt=f"question {i}", n=n, max_new_tokens=max_tokens, seed=100 + i, key=f"ds/q{i}")
            for i in range(k)]


def _content(out):
    return [[(c.text, c.seed, c.n_tokens, c.finish_reason, tuple(c.token_logprobs), tuple(c.token_confidence),
              tuple(c.token_char_ends)) for c in comps] for comps in out]


def _good(**over) -> Completion:
    kw = dict(text=" alpha0 beta1", n_tokens=2, finish_reason="stop", seed=7, token_logprobs=[-0.5, -0.1],
              token_confidence=[-1.2, -0.9], token_char_ends=[7, 13])
    kw.update(over)
    return Completion(**kw)


REQ = SampleRequest(prompt="q", n=1, max_new_tokens=8, seed=7, key="gsm8k/3")


# ---------------------------------------------------------------------------------------------
# the validator itself
# ---------------------------------------------------------------------------------------------
def test_valid_completions_pass():
    c = _good()
    assert validate_completion(c, REQ, source="somewhere") is c
    # float rounding of a log-softmax may give a tiny positive log-prob
    validate_completion(_good(token_logprobs=[1e-6, -0.1], token_confidence=[0.0, -0.9]), REQ)
    # a model that ends at once: no tokens, no text (EOS is not counted)
    validate_completion(_good(text="", n_tokens=0, token_logprobs=[], token_confidence=[], token_char_ends=[]), REQ)
    # the request's cap, and one more (a server counting EOS); a stop string's tokens past the text
    eight = dict(token_logprobs=[-0.1] * 8, token_confidence=[-1.0] * 8, token_char_ends=[1, 1, 1, 1, 1, 1, 1, 1])
    validate_completion(_good(text="x", n_tokens=8, finish_reason="length", **eight), REQ)
    # without log-probs asked for, the per-token lists may be empty
    validate_completion(_good(token_logprobs=[], token_confidence=[], token_char_ends=[]), REQ, logprobs=False)


@pytest.mark.parametrize("over, why", [
    (dict(text=None), r"no text \(text=None\)"),
    (dict(finish_reason="abort"), r"finish_reason='abort'"),
    (dict(n_tokens=-5), r"n_tokens=-5 is negative"),
    (dict(n_tokens=10**12), r"n_tokens=1000000000000 is more than the request's max_new_tokens=8"),
    (dict(n_tokens=2.0), r"n_tokens=2.0 is not an integer"),
    (dict(n_tokens=0, token_logprobs=[], token_confidence=[], token_char_ends=[]),
     r"n_tokens=0 for a completion with 13"),
    (dict(token_logprobs=[], token_confidence=[], token_char_ends=[]),
     r"0 token_logprobs for 2 tokens \(did the server"),
    (dict(token_logprobs=[-0.5]), r"1 token_logprobs for 2 tokens"),
    (dict(token_logprobs=[5.0, -0.1]), r"token_logprobs\[0\] = 5\.0 is not a finite log-probability <= 0 \(1 of 2"),
    (dict(token_logprobs=[-0.5, math.nan]), r"token_logprobs\[1\] = nan"),
    (dict(token_logprobs=[-0.5, -math.inf]), r"token_logprobs\[1\] = -inf"),
    (dict(token_logprobs=[-0.5, "x"]), r"token_logprobs\[1\] = 'x'"),
    (dict(token_confidence=[0.7, -0.9]), r"token_confidence\[0\] = 0\.7"),
    (dict(token_char_ends=[9, 7]), r"token_char_ends do not rise"),
    (dict(token_char_ends=[7, 99]), r"token_char_ends do not rise within the text's 13 characters"),
])
def test_each_broken_field_is_named(over, why):
    with pytest.raises(InvalidReplyError, match=why) as ei:
        validate_completion(_good(**over), REQ, source="http://127.0.0.1:1/v1")
    assert str(ei.value).startswith("http://127.0.0.1:1/v1: invalid completion for request 'gsm8k/3' (seed 7)")


def test_token_count_must_be_plausible_for_the_text():
    n = 8
    lists = dict(token_logprobs=[-0.1] * n, token_confidence=[-1.0] * n, token_char_ends=[1] * n)
    req = SampleRequest(prompt="q", n=1, max_new_tokens=100, seed=0, key="k")
    validate_completion(_good(text="", n_tokens=n, finish_reason="length", **{**lists, "token_char_ends": [0] * n}),
                        req)  # 8 special tokens that decode to nothing: within the slack
    n = 40
    lists = dict(token_logprobs=[-0.1] * n, token_confidence=[-1.0] * n, token_char_ends=[1] * n)
    assert any("implausible for 1 characters" in p
               for p in completion_problems(_good(text="x", n_tokens=n, finish_reason="length", **lists), req))
    # 40 tokens for 1 character plus a 6-character stop string cut from the text: 4 x 7 + 16 = 44
    stop_req = SampleRequest(prompt="q", n=1, max_new_tokens=100, seed=0, key="k", stop=("\n\nStep",))
    assert not completion_problems(_good(text="x", n_tokens=n, finish_reason="stop_string", **lists), stop_req)


# ---------------------------------------------------------------------------------------------
# a misbehaving replica: a fault of that replica, retried elsewhere, named in the error
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("how", sorted(BAD_REPLIES))
def test_a_replica_giving_only_bad_replies_fails_the_call_naming_it(servers, how, api):
    bad = servers(bad_reply=how)
    reasons = CHAT_REASONS if api == "chat" else REASONS
    with pytest.raises(SamplerError, match=r"failed 4 times") as ei:
        _sampler([bad.url], api=api).generate(_reqs(k=1, n=1))
    msg = str(ei.value)
    assert bad.url in msg
    assert re.search(reasons[how], msg), msg
    assert len(bad.requests) == 4  # max_retries 3: bounded


@pytest.mark.parametrize("how", sorted(BAD_REPLIES))
def test_bad_replies_are_retried_on_a_healthy_replica(servers, how, caplog):
    reference = _sampler([servers().url]).generate(_reqs())
    bad, good = servers(bad_reply=how), servers(latency_s=0.02)
    sampler = _sampler([bad.url, good.url])
    with caplog.at_level(logging.WARNING, logger="optscale.sampling.openai_compat"):
        out = sampler.generate(_reqs())
    assert _content(out) == _content(reference)  # nothing from the broken replica got through
    st = {s.url: s for s in sampler.stats}
    assert bad.bad >= 1 and st[bad.url].ok == 0 and st[bad.url].failed == bad.bad
    assert st[good.url].ok == 9
    assert re.search(REASONS[how], st[bad.url].last_error), st[bad.url].last_error
    named = [r.getMessage() for r in caplog.records if bad.url in r.getMessage() and "invalid reply" in r.getMessage()]
    assert named, [r.getMessage() for r in caplog.records]


def test_a_transient_bad_reply_is_retried_on_the_same_replica(servers):
    reference = _sampler([servers().url]).generate(_reqs(k=1))
    s = servers(bad_reply="no_logprobs", bad_first=2)
    sampler = _sampler([s.url], cfg=_cfg(**{"sampling.max_in_flight_per_endpoint": 1}))
    out = sampler.generate(_reqs(k=1))
    assert _content(out) == _content(reference)
    assert s.bad == 2 and sampler.stats[0].failed == 2 and sampler.stats[0].ok == 3 and sampler.stats[0].alive


def test_the_final_error_names_every_replica_and_its_reason(servers):
    a, b = servers(bad_reply="html"), servers(bad_reply="positive_logprob")
    with pytest.raises(SamplerError) as ei:
        _sampler([a.url, b.url], dead_after=100).generate(_reqs(k=1, n=1))
    msg = str(ei.value)
    assert a.url in msg and b.url in msg, msg
    assert "not a JSON completion" in msg and "token_logprobs[0] = 5.0" in msg, msg


def test_a_bad_replica_never_reaches_the_pool(tmp_path, servers):
    ref_cfg = _cfg(tmp_path / "ref")
    problems = [Problem("gsm8k", f"q{i}", f"What is {i}+1?", "42", i) for i in range(6)]
    reference = read_pool(generate_pool(ref_cfg, "gsm8k", problems, _sampler([servers().url], cfg=ref_cfg),
                                        progress=False)).df
    cfg = _cfg(tmp_path / "mixed")
    bad, good = servers(bad_reply="no_logprobs"), servers(latency_s=0.01)
    path = generate_pool(cfg, "gsm8k", problems, _sampler([bad.url, good.url], cfg=cfg), progress=False)
    assert bad.bad >= 1
    pd.testing.assert_frame_equal(read_pool(path).df, reference)
    # only a server that ignores `logprobs`: the run fails naming it, and writes no sample
    cfg = _cfg(tmp_path / "bad")
    only_bad = servers(bad_reply="no_logprobs")
    with pytest.raises(SamplerError, match="did the server ignore `logprobs`") as ei:
        generate_pool(cfg, "gsm8k", problems, _sampler([only_bad.url], cfg=cfg), progress=False)
    assert only_bad.url in str(ei.value)
    pool_dir = tmp_path / "bad" / "p"
    assert not (pool_dir / "gsm8k.parquet").exists()
    ckpt = pool_dir / "gsm8k.checkpoint.jsonl"
    assert not ckpt.exists() or ckpt.read_text().strip() == ""


# ---------------------------------------------------------------------------------------------
# the in-process backends use the same validator
# ---------------------------------------------------------------------------------------------
def test_vllm_outputs_are_validated():
    from optscale.sampling.vllm import completions_from_vllm_output

    def entry(tid, lp):
        return {tid: SimpleNamespace(logprob=lp, rank=1, decoded_token=" x")}

    req = SampleRequest(prompt="q", n=1, max_new_tokens=4, seed=0, key="math500/2")
    good = SimpleNamespace(text=" x x", token_ids=(1, 1), logprobs=[entry(1, -0.2), entry(1, -0.3)],
                           finish_reason="stop", stop_reason=None)
    assert completions_from_vllm_output(SimpleNamespace(outputs=[good]), req, 3)[0].n_tokens == 2
    bad = SimpleNamespace(**{**vars(good), "logprobs": [entry(1, 5.0), entry(1, -0.3)]})
    with pytest.raises(InvalidReplyError, match=r"vLLM output 0: invalid completion for request 'math500/2'.*= 5\.0"):
        completions_from_vllm_output(SimpleNamespace(outputs=[bad]), req, 3)
    long = SimpleNamespace(**{**vars(good), "token_ids": (1,) * 6, "logprobs": [entry(1, -0.1)] * 6})
    with pytest.raises(InvalidReplyError, match=r"n_tokens=6 is more than the request's max_new_tokens=4"):
        completions_from_vllm_output(SimpleNamespace(outputs=[long]), req, 3)


class _StubCache:
    def batch_repeat_interleave(self, k):
        pass

    def batch_select_indices(self, keep):
        pass


class _StubLM:
    """A transformers-shaped causal LM over 8 tokens whose logits are ``fill`` (NaN: a model that
    overflowed in half precision); token 7 is EOS."""

    def __init__(self, fill):
        self.fill = fill
        self.generation_config = SimpleNamespace(eos_token_id=7)

    def __call__(self, input_ids, past_key_values=None, use_cache=True):
        import torch

        logits = torch.full((input_ids.shape[0], input_ids.shape[1], 8), self.fill)
        logits[..., 7] = -1e4  # never EOS
        return SimpleNamespace(logits=logits, past_key_values=past_key_values or _StubCache())


class _StubTok:
    eos_token_id = 7
    unk_token_id = None

    def convert_tokens_to_ids(self, tok):
        return 7

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(m["content"] for m in messages)

    def __call__(self, text, return_tensors="pt", add_special_tokens=False):
        import torch

        return {"input_ids": torch.tensor([[1, 2, 3]])}

    def decode(self, toks, skip_special_tokens=True):
        return "".join("ab"[t % 2] for t in toks)


def test_hf_cpu_outputs_are_validated():
    pytest.importorskip("torch")
    from optscale.sampling.hf_cpu import HFSampler

    cfg = _cfg(**{"sampling.temperature": 0.0, "sampling.batch_size": 2}).sampling
    req = SampleRequest(prompt="q", n=2, max_new_tokens=3, seed=0, key="gsm8k/5")
    good = HFSampler(cfg, model=_StubLM(0.0), tokenizer=_StubTok()).generate([req])[0]
    assert [c.n_tokens for c in good] == [3, 3] and good[0].token_logprobs == pytest.approx([-math.log(7)] * 3)
    with pytest.raises(InvalidReplyError, match=r"hf-cpu: invalid completion for request 'gsm8k/5'.*"
                                                r"token_logprobs\[0\] = nan"):
        HFSampler(cfg, model=_StubLM(float("nan")), tokenizer=_StubTok()).generate([req])
