"""The shipped generators (0.5B and 1.5B GGUFs), question selection, the llama.cpp batched
sampler, the DeepConf trace-confidence scorers and the answer judge."""

import math
from collections import Counter

import numpy as np
import pytest

from optscale.config import ConfigError, SamplingConfig, ScoringConfig, load_config
from optscale.data.benchmarks import load_benchmark
from optscale.sampling.model_files import EMBEDDED_GGUFS, QWEN_CODER_1_5B, assemble_gguf, gguf_summary
from optscale.sampling import SampleRequest
from optscale.sampling.base import Completion, chat_messages
from optscale.scoring.scorers import get_scorer
from optscale.data.selection import select_questions, selection_order, strata_counts


# --- the shipped GGUFs ---------------------------------------------------------------------------
def test_both_generators_are_registered_and_named_as_what_they_are():
    assert set(EMBEDDED_GGUFS) == {"qwen2.5-coder-0.5b-instruct-q4", "qwen2.5-coder-1.5b-instruct"}
    meta = gguf_summary(assemble_gguf(EMBEDDED_GGUFS["qwen2.5-coder-0.5b-instruct-q4"]))
    assert meta["general.name"] == "Qwen2.5 Coder 0.5B Instruct AWQ"  # re-quantised AWQ checkpoint


def test_1_5b_assembles_to_the_published_size_and_name():
    path = assemble_gguf(QWEN_CODER_1_5B)
    meta = gguf_summary(path)
    assert meta["bytes"] == 1_117_320_768
    assert meta["general.name"] == "Qwen2.5 Coder 1.5B Instruct GGUF"
    assert meta["general.file_type"] == 15  # Q4_K_M
    assert set(meta["tensor_types"]) == {"F32", "Q4_K", "Q6_K"}


def test_wrong_part_sizes_are_refused(tmp_path):
    from dataclasses import replace

    bad = replace(QWEN_CODER_1_5B, size=123)
    with pytest.raises(ValueError, match="add up to 1,117,320,768 bytes, expected 123"):
        assemble_gguf(bad, target_dir=tmp_path)


# --- question selection --------------------------------------------------------------------------
def test_stratified_selection_is_seeded_prefix_stable_and_proportional(data_dir):
    math500 = load_benchmark("math500", data_dir)
    order = selection_order(math500, "stratified", 0)
    assert sorted(order) == list(range(500)) and order == selection_order(math500, "stratified", 0)
    assert order != selection_order(math500, "stratified", 1)
    first100 = select_questions(math500, 100, "stratified", 0)
    first150 = select_questions(math500, 150, "stratified", 0)
    assert {p.id for p in first100} <= {p.id for p in first150}  # growing a pool keeps its questions
    assert [p.index for p in first100] == sorted(p.index for p in first100)  # returned in file order
    subjects = Counter(p.meta["subject"] for p in first100)
    full = Counter(p.meta["subject"] for p in math500)
    for subject, n in full.items():  # every subject within 3 of its share
        assert abs(subjects[subject] - n / 5) <= 3, (subject, subjects[subject], n / 5)
    levels = Counter(p.meta["level"] for p in first100)
    assert all(abs(levels[lv] - n / 5) <= 3 for lv, n in Counter(p.meta["level"] for p in math500).items())
    # the file order's first 100 has no algebra or geometry: the reason for stratifying
    assert not {"Algebra", "Geometry"} & {p.meta["subject"] for p in math500[:100]}
    assert sum(strata_counts(first100).values()) == 100


def test_study_offset_never_overlaps_the_pool_questions(data_dir):
    gsm = load_benchmark("gsm8k", data_dir)
    pool = {p.id for p in select_questions(gsm, 150, "stratified", 0)}
    study = {p.id for p in select_questions(gsm, 40, "stratified", 0, offset=400)}
    assert len(study) == 40 and not pool & study
    with pytest.raises(ValueError, match="data.offset=2000"):
        select_questions(gsm, 5, "stratified", 0, offset=2000)


def test_selection_and_decoding_keys_are_checked():
    with pytest.raises(ConfigError, match="data.selection='random'"):
        load_config("cpu", "data.selection=random")
    with pytest.raises(ConfigError, match="sampling.top_k=-1"):
        load_config("cpu", "sampling.top_k=-1")
    with pytest.raises(ConfigError, match="sampling.repetition_penalty=0"):
        load_config("cpu", "sampling.repetition_penalty=0")


def test_system_prompt_goes_first_only_when_set():
    assert chat_messages(SamplingConfig(), "q") == [{"role": "user", "content": "q"}]
    msgs = chat_messages(SamplingConfig(system_prompt="be brief"), "q")
    assert msgs[0] == {"role": "system", "content": "be brief"} and msgs[1]["content"] == "q"


# --- DeepConf trace confidences --------------------------------------------------------------------
def test_trace_confidence_scorers_match_their_definitions():
    cfg = ScoringConfig(conf_window=2, tail_tokens=2)
    tc = [-1.0, -3.0, -0.5, -2.0, -4.0]  # stored: mean top-k log-prob; C_t = 1, 3, 0.5, 2, 4
    c = Completion(text="x", n_tokens=5, finish_reason="stop", seed=0, token_confidence=tc)
    lowest = get_scorer("lowest-group-confidence", cfg).score("q", [c])[0].score
    tail = get_scorer("tail-confidence", cfg).score("q", [c])[0].score
    g = min((1 + 3) / 2, (3 + 0.5) / 2, (0.5 + 2) / 2, (2 + 4) / 2)  # 1.25
    assert lowest == pytest.approx(g / (1 + g))
    assert tail == pytest.approx(3.0 / 4.0)
    with pytest.raises(ValueError, match="no token confidences"):
        get_scorer("tail-confidence", cfg).score("q", [Completion(text="x", n_tokens=3, finish_reason="stop", seed=0)])


# --- the llama.cpp batched sampler (needs scripts/install_llama_cpp.sh) ------------------------------
@pytest.fixture(scope="module")
def llama_sampler():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (scripts/install_llama_cpp.sh)")
    from optscale.sampling import get_sampler

    cfg = SamplingConfig(backend="llama-cpp", batch_size=6, max_new_tokens={"gsm8k": 8})
    s = get_sampler("llama-cpp", cfg)
    yield s
    s.close()


def test_llama_cpp_batched_sampler_records_logprobs_and_is_seeded(llama_sampler):
    a = SampleRequest(prompt="What is 2+3? Answer with a number.", n=4, max_new_tokens=8, seed=11)
    b = SampleRequest(prompt="Write one sentence about any animal.", n=4, max_new_tokens=8, seed=12)
    out = llama_sampler.generate([a, b])  # 8 sequences: one wave of 6, one of 2
    assert [len(x) for x in out] == [4, 4]
    for comps in out:
        for j, c in enumerate(comps):
            assert 1 <= c.n_tokens <= 8 and c.finish_reason in ("stop", "length")
            assert len(c.token_logprobs) == len(c.token_confidence) == len(c.token_char_ends) == c.n_tokens
            assert all(lp <= 0 and math.isfinite(lp) for lp in c.token_logprobs)
            assert all(math.isfinite(x) and x < 0 for x in c.token_confidence)
            assert c.token_char_ends[-1] == len(c.text)
    assert out[0][0].seed != out[0][1].seed
    again = llama_sampler.generate([a, b])
    assert [[c.text for c in x] for x in again] == [[c.text for c in x] for x in out]
    other = llama_sampler.generate([SampleRequest(prompt=b.prompt, n=4, max_new_tokens=8, seed=99)])[0]
    assert [c.text for c in other] != [c.text for c in out[1]]


def test_llama_cpp_logprobs_are_the_untempered_model_distribution(llama_sampler):
    """The first token's recorded log-prob equals log-softmax of llama.cpp's own logits for the
    prompt, computed independently through llama-cpp-python's high-level API (one sequence, one
    thread: the quantised kernels round differently than in a batch, measured 0.014 apart). The
    tolerance still tells the raw distribution from the tempered one the sampler draws from."""
    from llama_cpp import Llama

    req = SampleRequest(prompt="Say hello.", n=2, max_new_tokens=3, seed=5)
    comps = llama_sampler.generate([req])[0]
    ids = llama_sampler.prompt_tokens(req)
    ref = Llama(model_path=str(llama_sampler.gguf), n_ctx=512, logits_all=True, verbose=False, n_threads=1)
    ref.eval(ids)
    logits = np.asarray(ref.scores[len(ids) - 1], dtype=np.float64)
    logp = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
    first = llama_sampler.lm.tokenize(comps[0].text.encode(), add_bos=False, special=False)[0]
    assert comps[0].token_logprobs[0] == pytest.approx(logp[first], abs=0.05)
    tempered = logits / 0.7
    tempered = tempered - (np.log(np.exp(tempered - tempered.max()).sum()) + tempered.max())
    assert abs(tempered[first] - logp[first]) > 0.1 or abs(np.sort(tempered)[-5:].mean() - np.sort(logp)[-5:].mean()) > 0.1
    assert comps[0].token_confidence[0] == pytest.approx(np.sort(logp)[-5:].mean(), abs=0.05)
    ref.close()


def test_llama_cpp_prefix_cache_evaluates_only_the_new_part_of_a_continuation(llama_sampler):
    """A continuation (the particle filter's next step) reuses the KV cells of the cached
    sequence sharing its longest token prefix; its log-probs match an uncached run's."""
    from optscale.config import load_config
    from optscale.systems import live_sampler

    cfg = load_config("cpu", {"sampling.backend": "llama-cpp", "sampling.batch_size": 6,
                              "sampling.max_new_tokens.gsm8k": 12})
    cached = live_sampler(cfg)
    assert cached.prefix_cache and cached.describe()["prefix_cache"] and not llama_sampler.prefix_cache
    reused = []
    real = cached._reuse_prefixes
    cached._reuse_prefixes = lambda *a: reused.append(real(*a)) or reused[-1]
    first = SampleRequest(prompt="What is 12 times 7? Think step by step.", n=3, max_new_tokens=12, seed=3)
    step1 = cached.generate([first])[0]
    assert reused == [{}]  # nothing cached yet
    cont = SampleRequest(prompt=first.prompt, n=2, max_new_tokens=6, seed=4, prefix=step1[0].text)
    step2 = cached.generate([cont])[0]
    header = len(cached.prompt_tokens(first))
    assert reused[-1][0] >= header  # at least the whole first prompt came from the cache
    assert reused[-1][0] <= len(cached.prompt_tokens(cont)) - 1  # the last prompt token is evaluated again
    # the same request on an empty cache; cached cells were computed in other batches (one token
    # per decode step), so log-probs differ by rounding: measured 0.08 at most on the 0.5B model
    fresh = llama_sampler.generate([cont])[0]
    for a, b in zip(step2, fresh):
        assert len(a.token_logprobs) == a.n_tokens >= 1
        n = min(a.n_tokens, b.n_tokens)
        assert np.abs(np.subtract(a.token_logprobs[:n], b.token_logprobs[:n])).max() < 0.15
    # an unrelated prompt shares only the chat header; the cache is rebuilt, results stay valid
    other = cached.generate([SampleRequest(prompt="Name a colour.", n=2, max_new_tokens=4, seed=5)])[0]
    assert 0 < reused[-1][0] < header and all(c.n_tokens >= 1 for c in other)
    cached.close()
