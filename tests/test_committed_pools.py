"""The committed CPU pools (data/pools/) are complete, match their benchmarks and regrade the same.

These check the artifacts every notebook reads: a pool that lost questions, was generated with
another setting, or was graded by an older grader fails here, naming the benchmark and question.
"""

from functools import cache

import numpy as np
import pytest

from optscale.config import BENCHMARKS, load_config
from optscale.data.benchmarks import load_benchmark
from optscale.data.grading import GRADING_RULE_VERSION, grade
from optscale.data.pools import pool_path, read_pool


@pytest.fixture(scope="module")
def cpu_config():
    return load_config("cpu")


@cache
def committed_pool(name):
    """Each committed pool, read (and validated) once for this module's tests."""
    return read_pool(pool_path(load_config("cpu"), name))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_committed_pool_has_every_target_question_and_sample(name, cpu_config, data_dir):
    pool = committed_pool(name)
    limit = cpu_config.data.max_questions[name] or None
    problems = load_benchmark(name, data_dir, limit=limit)
    n = cpu_config.sampling.n_samples[name]

    assert pool.question_ids == [p.id for p in problems], f"{name}: pool questions differ from the benchmark's"
    per_question = pool.df.groupby("question_id", sort=False)["sample_index"].apply(sorted)
    wrong = {q: s for q, s in per_question.items() if s != list(range(n))}
    assert not wrong, f"{name}: questions without sample indices 0..{n - 1}: {list(wrong)[:5]}"

    gold = {p.id: p.answer for p in problems}
    bad_gold = pool.df[pool.df["gold"] != pool.df["question_id"].map(gold)]
    assert bad_gold.empty, f"{name}: gold differs from the benchmark file for {bad_gold['question_id'].unique()[:5]}"

    sampling = pool.meta["sampling"]
    assert pool.meta["n_samples"] == n
    assert pool.meta["max_new_tokens"] == cpu_config.sampling.max_new_tokens[name]
    assert (sampling["model"], sampling["temperature"], sampling["top_p"], sampling["seed"]) == (
        cpu_config.sampling.model, cpu_config.sampling.temperature, cpu_config.sampling.top_p,
        cpu_config.sampling.seed)
    assert int(pool.df["n_tokens"].max()) <= pool.meta["max_new_tokens"]
    assert set(cpu_config.scoring.scorers) <= set(pool.scorers)
    for scorer in cpu_config.scoring.scorers:
        s = pool.scores(scorer)
        assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all(), f"{name}: {scorer} scores outside [0, 1]"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_committed_pool_regrades_the_same(name):
    """The stored answer and correctness are what today's extraction + math-verify give (a
    truncated sample without a stated answer has none), and the metadata names today's rule."""
    pool = committed_pool(name)
    assert pool.meta.get("grading", {}).get("version", 1) == GRADING_RULE_VERSION, f"{name}: graded by an older rule"
    stored = zip(pool.matrix("question_id").ravel(), pool.matrix("sample_index").ravel(), pool.matrix("gold").ravel(),
                 pool.matrix("text").ravel(), pool.matrix("finish_reason").ravel(), pool.answers().ravel(),
                 pool.correct().ravel())
    mismatches = []
    for qid, k, gold, text, finish_reason, answer, correct in stored:
        new_answer, new_correct = grade(gold, text, finish_reason)
        if new_answer != answer or new_correct != correct:
            mismatches.append((qid, k, answer, new_answer, correct, new_correct))
    assert not mismatches, (
        f"{name}: {len(mismatches)} samples regrade differently "
        f"(question, sample, stored answer, new answer, stored correct, new correct): {mismatches[:5]}")
