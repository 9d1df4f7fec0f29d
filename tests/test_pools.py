import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from optscale.config import RunConfig, load_config
from optscale.data.benchmarks import Problem
from optscale.data.pools import PoolError, read_pool, replay_orders, score_pool, subsample, write_pool
from optscale.data.generation import generate_pool, merge_checkpoint
from optscale.sampling.fake import FAKE_GOLD, FakeSampler
from optscale.scoring.scorers import get_scorer

ROOT = Path(__file__).resolve().parents[1]


def _problems(n, dataset="gsm8k"):
    return [Problem(dataset, f"q{i}", f"What is {i}+1?", FAKE_GOLD, i) for i in range(n)]


def _cfg(tmp_path, n=4):
    return load_config("cpu", {"pools.pool_dir": str(tmp_path), "pools.pool_name": "fake",
                               "sampling.n_samples.gsm8k": n, "sampling.backend": "fake"})


def _make_pool(tmp_path, n_q=5, n=4):
    cfg = _cfg(tmp_path, n)
    sampler = FakeSampler(cfg.sampling)
    scorer = get_scorer("self-certainty", cfg.scoring)
    path = generate_pool(cfg, "gsm8k", _problems(n_q), sampler, [scorer], progress=False)
    return cfg, path


def test_generate_read_roundtrip(tmp_path):
    cfg, path = _make_pool(tmp_path)
    pool = read_pool(path)
    assert pool.n_questions == 5 and pool.n_per_question == 4
    assert pool.scores("self-certainty").shape == (5, 4)
    assert pool.meta["generator"]["backend"] == "fake" and pool.meta["n_samples"] == 4
    # grading: the fake sampler boxes the fake gold or a wrong number
    df = pool.df
    expect = df["answer"].astype(str) == df["gold"]
    assert (df["correct"] == expect).all()
    assert 0 < df["correct"].mean() < 1
    # same seed -> same pool
    cfg2, path2 = _make_pool(tmp_path / "again")
    pd.testing.assert_frame_equal(read_pool(path2).df, pool.df)


def test_seed_changes_samples(tmp_path):
    cfg = load_config("cpu", {"pools.pool_dir": str(tmp_path), "pools.pool_name": "s1", "sampling.seed": 1,
                              "sampling.n_samples.gsm8k": 4})
    p1 = generate_pool(cfg, "gsm8k", _problems(3), FakeSampler(cfg.sampling), progress=False)
    _, p0 = _make_pool(tmp_path / "s0", n_q=3)
    assert not read_pool(p1).df["text"].equals(read_pool(p0).df["text"])


def test_resume_skips_done_questions(tmp_path):
    cfg = _cfg(tmp_path)
    sampler = FakeSampler(cfg.sampling)
    generate_pool(cfg, "gsm8k", _problems(6), sampler, max_questions=2, progress=False)
    assert read_pool(tmp_path / "fake" / "gsm8k.parquet").n_questions == 2
    calls = len(sampler.calls)
    generate_pool(cfg, "gsm8k", _problems(6), sampler, progress=False)
    assert len(sampler.calls) - calls == 4  # only the 4 missing questions were sampled
    assert read_pool(tmp_path / "fake" / "gsm8k.parquet").n_questions == 6


def test_deadline_starts_no_new_question(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    sampler = FakeSampler(cfg.sampling)
    generate_pool(cfg, "gsm8k", _problems(6), sampler, progress=False, deadline=time.time() - 1)
    assert len(sampler.calls) == 0
    # a clock that jumps past the deadline while the second question is sampled: that question
    # is finished and kept, the third is not started
    now = [1000.0]

    def clock():
        now[0] += 1e-3
        return now[0]

    def on_question(p):
        if p.id == _problems(6)[1].id:
            now[0] += 1000

    monkeypatch.setattr(time, "time", clock)
    generate_pool(cfg, "gsm8k", _problems(6), sampler, progress=False, deadline=1500.0, on_question=on_question)
    assert len(sampler.calls) == 2 and read_pool(tmp_path / "fake" / "gsm8k.parquet").n_questions == 2


def test_mismatched_setting_is_refused(tmp_path):
    cfg, path = _make_pool(tmp_path)
    other = cfg.replace({"sampling.n_samples.gsm8k": 8})
    with pytest.raises(PoolError, match="n_samples=4"):
        generate_pool(other, "gsm8k", _problems(6), FakeSampler(other.sampling), progress=False)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from optscale.config import load_config
    from optscale.data.benchmarks import Problem
    from optscale.data.generation import generate_pool
    from optscale.sampling.fake import FAKE_GOLD, FakeSampler
    cfg = load_config("cpu", {{"pools.pool_dir": {root!r}, "pools.pool_name": "fake",
                              "sampling.n_samples.gsm8k": 4}})
    probs = [Problem("gsm8k", f"q{{i}}", f"What is {{i}}+1?", "42", i) for i in range(30)]
    generate_pool(cfg, "gsm8k", probs, FakeSampler(cfg.sampling, delay_s={delay}), flush_every=3, progress=False)
""")


class DyingSampler(FakeSampler):
    """Raises (as a dead backend would) once ``die_after`` questions have been sampled."""

    def __init__(self, config, die_after):
        super().__init__(config)
        self.die_after = die_after

    def generate(self, requests):
        if len(self.calls) >= self.die_after:
            raise RuntimeError("backend died")
        return super().generate(requests)


def test_merge_checkpoint_without_a_model(tmp_path):
    cfg = _cfg(tmp_path)
    path = tmp_path / "fake" / "gsm8k.parquet"
    ckpt = path.with_suffix(".checkpoint.jsonl")
    with pytest.raises(RuntimeError, match="died"):
        generate_pool(cfg, "gsm8k", _problems(6), DyingSampler(cfg.sampling, 4), flush_every=3, progress=False)
    assert read_pool(path).n_questions == 3 and ckpt.is_file()  # q3 is only in the checkpoint
    assert merge_checkpoint(path) == 1
    assert read_pool(path).n_questions == 4 and not ckpt.exists()
    assert merge_checkpoint(path) == 0  # nothing left to merge
    # resuming after the merge gives the same pool as an uninterrupted run
    generate_pool(cfg, "gsm8k", _problems(6), FakeSampler(cfg.sampling), progress=False)
    clean = _cfg(tmp_path / "clean")
    full = generate_pool(clean, "gsm8k", _problems(6), FakeSampler(clean.sampling), progress=False)
    pd.testing.assert_frame_equal(read_pool(path).df, read_pool(full).df)
    # a checkpoint with no pool to merge into is an error naming both files
    orphan = tmp_path / "orphan" / "gsm8k.parquet"
    orphan.parent.mkdir()
    orphan.with_suffix(".checkpoint.jsonl").write_text('{"question_id": "q0", "rows": [{"question_id": "q0"}]}\n')
    with pytest.raises(PoolError, match="no pool at .*orphan"):
        merge_checkpoint(orphan)


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(root=str(killed), delay=0.03)], env=env)
    ckpt = killed / "fake" / "gsm8k.checkpoint.jsonl"
    parquet = killed / "fake" / "gsm8k.parquet"
    deadline = time.time() + 60
    # wait until at least one flush happened and the next checkpoint has started filling
    while time.time() < deadline and not (parquet.exists() and ckpt.exists() and ckpt.stat().st_size > 0):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert parquet.exists(), "the run never flushed (machine too slow?)"
    partial = read_pool(parquet).n_questions
    assert 0 < partial < 30
    # a truncated last checkpoint line, as a kill mid-write leaves it
    with open(ckpt, "a") as f:
        f.write('{"question_id": "q29", "rows": [{"datas')
    cfg = load_config("cpu", {"pools.pool_dir": str(killed), "pools.pool_name": "fake", "sampling.n_samples.gsm8k": 4})
    probs = [Problem("gsm8k", f"q{i}", f"What is {i}+1?", FAKE_GOLD, i) for i in range(30)]
    with pytest.warns(UserWarning, match="truncated"):
        generate_pool(cfg, "gsm8k", probs, FakeSampler(cfg.sampling), progress=False)
    cfg2 = load_config("cpu", {"pools.pool_dir": str(clean), "pools.pool_name": "fake", "sampling.n_samples.gsm8k": 4})
    generate_pool(cfg2, "gsm8k", probs, FakeSampler(cfg2.sampling), progress=False)
    resumed, full = read_pool(parquet).df, read_pool(clean / "fake" / "gsm8k.parquet").df
    assert len(resumed) == 30 * 4 and not resumed.duplicated(["question_id", "sample_index"]).any()
    pd.testing.assert_frame_equal(resumed, full)
    assert not ckpt.exists()


def _corrupt(path, mutate):
    t = pq.read_table(path)
    df = t.to_pandas()
    mutate(df)
    meta = json.loads(t.schema.metadata[b"optscale"])
    return df, meta


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.__setitem__("score__self-certainty", d["score__self-certainty"].where(d.index != 3, np.nan)),
         r"row 3 \(question 'q0', sample 3\): field 'score__self-certainty' is NaN"),
        (lambda d: d.__setitem__("score__self-certainty", d["score__self-certainty"].where(d.index != 5, 1.5)),
         r"row 5 .*field 'score__self-certainty' = 1.5 is outside \[0, 1\]"),
        (lambda d: d.__setitem__("finish_reason", d["finish_reason"].where(d.index != 2, "eos")),
         r"row 2 .*field 'finish_reason' = 'eos'"),
        (lambda d: d.__setitem__("sample_index", d["sample_index"].where(d.index != 1, 0)),
         r"question 'q0'\): field 'sample_index'"),
        (lambda d: d.__setitem__("n_tokens", d["n_tokens"].where(d.index != 0, 999)),
         r"row 0 .*field 'token_logprobs' has \d+ values for n_tokens=999"),
    ],
)
def test_bad_pools_name_row_and_field(tmp_path, mutate, message):
    cfg, path = _make_pool(tmp_path)
    df, meta = _corrupt(path, mutate)
    with pytest.raises(PoolError, match=message):
        write_pool(df, meta, tmp_path / "bad.parquet")


def test_bad_files(tmp_path):
    cfg, path = _make_pool(tmp_path)
    data = path.read_bytes()
    trunc = tmp_path / "trunc.parquet"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(PoolError, match=r"trunc.parquet: not a readable Parquet pool"):
        read_pool(trunc)
    with pytest.raises(PoolError, match="pool file not found"):
        read_pool(tmp_path / "missing.parquet")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), plain)
    with pytest.raises(PoolError, match="no 'optscale' metadata"):
        read_pool(plain)
    t = pq.read_table(path)
    nometa_missing = t.drop(["correct"])
    bad = tmp_path / "nocol.parquet"
    pq.write_table(nometa_missing, bad)
    with pytest.raises(PoolError, match=r"missing column\(s\) \['correct'\]"):
        read_pool(bad)
    mixed = tmp_path / "mixed.parquet"
    df = t.to_pandas()
    df.loc[4, "dataset"] = "math500"
    meta = json.loads(t.schema.metadata[b"optscale"])
    write_pool(df, meta, mixed)
    with pytest.raises(PoolError, match=r"row 4: field 'dataset' = 'math500'"):
        read_pool(mixed)


def test_replay_orders_and_subsample():
    orders = replay_orders(3, 5, 50, seed=1)
    assert orders.shape == (50, 3, 5)
    assert (np.sort(orders, axis=-1) == np.arange(5)).all()
    assert (orders[0] == np.arange(5)).all()
    assert np.array_equal(orders, replay_orders(3, 5, 50, seed=1))
    assert not np.array_equal(orders, replay_orders(3, 5, 50, seed=2))
    vals = np.arange(15).reshape(3, 5)
    sub = subsample(vals, orders, 2)
    assert sub.shape == (50, 3, 2)
    assert np.array_equal(sub[0], vals[:, :2])
    # each question keeps its own samples
    assert all(set(sub[o, q]) <= set(vals[q]) for o in range(50) for q in range(3))
    # over many orders every sample shows up first about equally often
    firsts = np.bincount(replay_orders(1, 4, 4000, seed=0)[:, 0, 0], minlength=4)
    assert firsts.min() > 800
    with pytest.raises(ValueError):
        subsample(vals, orders, 6)


def test_fully_scored_drops_questions_with_missing_scores(tmp_path):
    cfg, path = _make_pool(tmp_path)
    pool = read_pool(path)
    df = pool.df.copy()
    df.loc[df["question_id"] == "q2", "score__self-certainty"] = np.nan
    df.loc[(df["question_id"] == "q2") & (df["sample_index"] == 0), "score__self-certainty"] = 0.5
    partial = type(pool)(df, pool.meta, pool.path).fully_scored()
    assert partial.question_ids == ["q0", "q1", "q3", "q4"] and len(partial.df) == 16


def test_pool_head_and_matrix(tmp_path):
    cfg, path = _make_pool(tmp_path)
    pool = read_pool(path)
    h = pool.head(2)
    assert h.n_questions == 2 and h.correct().shape == (2, 4)
    assert pool.tokens().dtype == float and (pool.tokens() > 0).all()


def test_missing_answer_reads_back_as_none_and_votes_as_no_answer(tmp_path):
    # A sample with no extractable answer is stored as null; pandas' string dtype reads it back
    # as NaN. The pool must hand it out as None so voting treats it as "no answer".
    from optscale.evaluation.curves import answer_labels

    cfg, path = _make_pool(tmp_path)
    pool = read_pool(path)
    df = pool.df.copy()
    mask = (df["question_id"] == "q1") & (df["sample_index"] == 2)
    df.loc[mask, "answer"] = None
    df.loc[mask, "correct"] = False
    write_pool(df, pool.meta, tmp_path / "missing.parquet")
    again = read_pool(tmp_path / "missing.parquet")
    answers = again.answers()
    assert answers[1, 2] is None
    assert all(isinstance(a, str) for i, row in enumerate(answers) for j, a in enumerate(row) if (i, j) != (1, 2))
    labels = answer_labels(again)
    assert labels[1, 2] == -1 and (np.delete(labels[1], 2) >= 0).all()


# -- issue 17 item 7 and issue 16's grading rule ----------------------------------------------
@pytest.mark.parametrize("answer,what", [(None, "missing"), ("", "empty"), ("  ", "empty")])
def test_correct_without_an_answer_is_rejected(tmp_path, answer, what):
    cfg, path = _make_pool(tmp_path)

    def mutate(d):
        d["answer"] = d["answer"].astype(object)
        d.loc[6, "answer"] = answer
        d.loc[6, "correct"] = True

    df, meta = _corrupt(path, mutate)
    with pytest.raises(PoolError) as e:
        write_pool(df, meta, tmp_path / "bad.parquet")
    assert str(e.value) == (f"{tmp_path / 'bad.parquet'}: row 6 (question 'q1', sample 2): field 'correct' is True "
                            f"but field 'answer' is {what}")


def test_truncated_sample_without_a_stated_answer_has_none():
    from optscale.data.generation import _rows_for_question
    from optscale.sampling.base import Completion

    p = _problems(1)[0]
    comps = [Completion("so 40 + 2 = 42", 5, "length", 0), Completion("so 40 + 2 = 42", 5, "stop", 0),
             Completion(r"so \boxed{42} and", 5, "length", 0)]
    rows = _rows_for_question(p, comps, {})
    assert [(r["answer"], r["correct"]) for r in rows] == [(None, False), ("42", True), ("42", True)]


def test_regrade_pool_rewrites_answers_by_the_current_rule(tmp_path):
    from optscale.data.grading import GRADING_RULE_VERSION
    from optscale.data.generation import regrade_pool

    cfg, path = _make_pool(tmp_path)
    pool = read_pool(path)
    assert pool.meta["grading"]["version"] == GRADING_RULE_VERSION  # generation records the rule
    df, meta = pool.df.copy(), {k: v for k, v in pool.meta.items() if k != "grading"}
    # as the rule-1 grader stored it: a truncated sample credited through its last number
    df.loc[1, ["text", "finish_reason", "answer", "correct"]] = ["then 40 + 2 = 42", "length", "42", True]
    write_pool(df, meta, path)
    summary = regrade_pool(path)
    assert (summary["answers_changed"], summary["correct_changed"], summary["grading_before"]) == (1, 1, 1)
    again = read_pool(path)
    assert again.df.loc[1, "answer"] is None or pd.isna(again.df.loc[1, "answer"])
    assert not again.df.loc[1, "correct"] and again.meta["grading"]["version"] == GRADING_RULE_VERSION
    pd.testing.assert_frame_equal(again.df.drop(index=1), pool.df.drop(index=1))
    assert regrade_pool(path)["answers_changed"] == 0  # idempotent


def test_generate_regrade_command(tmp_path, capsys):
    from optscale.generate import main

    cfg, path = _make_pool(tmp_path)
    pool = read_pool(path)
    df = pool.df.copy()
    df.loc[2, ["text", "finish_reason", "answer", "correct"]] = ["so 40 + 2 = 42", "length", "42", True]
    write_pool(df, pool.meta, path)
    args = ["regrade", "--profile", "cpu", "--datasets", "gsm8k", "--overrides",
            f"pools.pool_dir={tmp_path}, pools.pool_name=fake"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("gsm8k: 20 samples, grading rule 2 -> 2: 1 answers and 1 correct flags changed; "
                          "single-sample accuracy ") and "grading unresolved (CPU budget) for 0 samples" in out
    path.with_suffix(".checkpoint.jsonl").write_text("")
    assert main(args) == 1 and "checkpoint.jsonl exists" in capsys.readouterr().err


def test_a_pool_grows_after_an_offline_scorer_and_the_scorer_then_completes_it(tmp_path):
    """A pool scored offline (`generate score`), then grown by a resumed generation: the new
    questions' rows are merged unscored (score NaN, step scores None), and `score` fills only them."""
    cfg, path = _make_pool(tmp_path, n_q=2)
    judge = get_scorer("tail-confidence", cfg.scoring)
    score_pool(path, judge, {p.id: p.question for p in _problems(2)}, progress=False)
    sampler = FakeSampler(cfg.sampling)
    generate_pool(cfg, "gsm8k", _problems(4), sampler, [get_scorer("self-certainty", cfg.scoring)],
                  progress=False, flush_every=1)
    grown = read_pool(path, allow_partial_scores=True)
    assert grown.n_questions == 4
    new = grown.df["question_id"].isin(["q2", "q3"])
    assert grown.df.loc[new, "score__tail-confidence"].isna().all()
    assert grown.df.loc[new, "step_scores__tail-confidence"].map(lambda v: v is None).all()
    assert grown.df.loc[~new, "score__tail-confidence"].notna().all()
    before = grown.df.loc[~new, "score__tail-confidence"].to_numpy()
    score_pool(path, judge, {p.id: p.question for p in _problems(4)}, progress=False)
    done = read_pool(path)  # complete again: strict validation passes
    assert np.array_equal(done.df.loc[~new, "score__tail-confidence"].to_numpy(), before)
    assert done.df["score__tail-confidence"].notna().all()


def test_generate_score_command_scores_and_refuses_beside_a_generation(tmp_path, capsys, monkeypatch):
    """`generate score` adds the scorer's column; with a generation's checkpoint beside the pool
    (a running generation rewrites the file from memory) it refuses, names the file, writes nothing."""
    import optscale.generate as generate

    cfg, path = _make_pool(tmp_path, n_q=3)
    monkeypatch.setattr(generate, "load_benchmark", lambda ds, data_dir: _problems(3))
    args = ["score", "--profile", "cpu", "--datasets", "gsm8k", "--scorer", "tail-confidence", "--overrides",
            f"pools.pool_dir={tmp_path}, pools.pool_name=fake"]
    ckpt = path.with_suffix(".checkpoint.jsonl")
    ckpt.write_text("")
    before = read_pool(path).df
    assert generate.main(args) == 1
    assert f"gsm8k: {ckpt} exists" in capsys.readouterr().err
    pd.testing.assert_frame_equal(read_pool(path).df, before)
    ckpt.unlink()
    assert generate.main(args) == 0
    assert read_pool(path).df["score__tail-confidence"].notna().all()


def test_generate_combine_command_writes_the_fitted_combination(tmp_path, capsys):
    """`generate combine` applies a fitted combination (a study's combined.json) to a pool, and
    refuses with the pool's name when a feature is unscored or a generation's checkpoint exists."""
    from optscale.generate import main
    from optscale.scoring.combinations import combined_scores

    cfg, path = _make_pool(tmp_path)
    model = {"features": ["self-certainty", "log-tokens"], "mean": [0.0, 3.0], "scale": [1.0, 0.5],
             "coef": [1.5, -0.7], "intercept": 0.2}
    mpath = tmp_path / "combined.json"
    mpath.write_text(json.dumps(model))
    args = ["combine", "--profile", "cpu", "--datasets", "gsm8k", "--model", str(mpath), "--overrides",
            f"pools.pool_dir={tmp_path}, pools.pool_name=fake"]
    assert main(args) == 0 and "wrote score__combined (self-certainty, log-tokens;" in capsys.readouterr().out
    pool = read_pool(path)
    assert np.allclose(pool.df["score__combined"], combined_scores(pool, model))
    assert pool.meta["scorers"]["combined"]["model"] == str(mpath)
    # the profile names it (scoring.combinations), so the policies can use it as their primary scorer
    by_config = ["combine", "--profile", "cpu", "--datasets", "gsm8k", "--name", "mix", "--overrides",
                 f"pools.pool_dir={tmp_path}, pools.pool_name=fake, scoring.combinations.mix={mpath}, "
                 "scoring.primary_by_benchmark.gsm8k=mix"]
    assert main(by_config) == 0
    pool = read_pool(path)
    assert np.allclose(pool.df["score__mix"], pool.df["score__combined"])
    assert main([a for a in args if a not in ("--model", str(mpath))] + ["--name", "nope"]) == 2
    assert "no --model and no scoring.combinations.nope" in capsys.readouterr().err
    # a feature the pool has not scored: a clear error naming the pool and column, nothing written
    mpath.write_text(json.dumps({**model, "features": ["answer-judge", "log-tokens"]}))
    assert main(args) == 1
    assert f"{path}: no score__answer-judge column" in capsys.readouterr().err
    pd.testing.assert_frame_equal(read_pool(path).df, pool.df)
    path.with_suffix(".checkpoint.jsonl").write_text("")
    assert main(args) == 1 and "checkpoint.jsonl exists" in capsys.readouterr().err
    mpath.write_text("{}")
    assert main(args) == 2 and "not a fitted combination" in capsys.readouterr().err


def test_resuming_a_pool_of_an_older_grading_rule_regrades_it(tmp_path):
    from optscale.data.grading import GRADING_RULE_VERSION

    cfg, path = _make_pool(tmp_path, n_q=3)
    pool = read_pool(path)
    df, meta = pool.df.copy(), {k: v for k, v in pool.meta.items() if k != "grading"}  # as rule 1 wrote it
    df.loc[1, ["text", "finish_reason", "answer", "correct"]] = ["then 40 + 2 = 42", "length", "42", True]
    write_pool(df, meta, path)
    sampler, scorer = FakeSampler(cfg.sampling), get_scorer("self-certainty", cfg.scoring)
    generate_pool(cfg, "gsm8k", _problems(5), sampler, [scorer], progress=False, flush_every=1)
    again = read_pool(path)
    assert again.n_questions == 5 and again.meta["grading"]["version"] == GRADING_RULE_VERSION
    assert pd.isna(again.df.loc[1, "answer"]) and not again.df.loc[1, "correct"]
    assert again.meta["grading"]["unresolved_samples"] == 0


def test_unresolved_grading_is_recorded_in_the_pool_metadata(tmp_path, monkeypatch):
    """A sample whose comparison exceeds the CPU budget is not correct, and the pool says so."""
    import types

    import optscale.data.generation as generation
    from optscale.data.grading import default_grader
    from optscale.sampling.base import Completion

    monkeypatch.setattr(default_grader(), "cpu_budget_s", 0.3)
    cfg, path = _make_pool(tmp_path, n_q=2, n=2)  # the checkpoint line below holds 2 samples: the pool's n
    tower = "9^{9^{9}}"
    p = Problem("gsm8k", "q7", "What is 6+1?", FAKE_GOLD, 7)
    scored = {"self-certainty": [types.SimpleNamespace(score=0.5, step_scores=[0.5])] * 2}
    rows = generation._rows_for_question(p, [Completion(rf"\boxed{{{tower}}}", 3, "stop", 0),
                                             Completion(r"\boxed{42}", 3, "stop", 0)], scored)
    assert [(r["answer"], r["correct"], r["grading_unresolved"]) for r in rows] == [(tower, False, True),
                                                                                    ("42", True, False)]
    path.with_suffix(".checkpoint.jsonl").write_text(json.dumps({"question_id": "q7", "rows": rows}) + "\n")
    assert merge_checkpoint(path) == 1
    grading = read_pool(path, allow_partial_scores=True).meta["grading"]
    assert grading["unresolved_samples"] == 1 and grading["unresolved_examples"] == [tower]
    assert "grading_unresolved" not in read_pool(path, allow_partial_scores=True).df.columns
