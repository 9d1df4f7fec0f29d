"""Issue 29: no run may silently corrupt a pool. Resume under another setting, ragged pools,
truncated checkpoints, sizes out of range, two writers on one pool, a pool of other questions,
zero token counts and non-numeric scores. Every case uses the ``fake`` sampler (no model) on
pools under ``tmp_path``, and checks that nothing already computed is lost."""

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from optscale.config import load_config
from optscale.data.benchmarks import Problem
from optscale.data.generation import generate_pool, merge_checkpoint
from optscale.data.pools import PoolError, read_pool, score_pool, write_pool, write_score_column
from optscale.sampling.fake import FAKE_GOLD, FakeSampler
from optscale.scoring.scorers import get_scorer

ROOT = Path(__file__).resolve().parents[1]


def _problems(n, dataset="gsm8k"):
    return [Problem(dataset, f"q{i}", f"What is {i}+1?", FAKE_GOLD, i) for i in range(n)]


def _cfg(root, n=4, **extra):
    return load_config("cpu", {"pools.pool_dir": str(root), "pools.pool_name": "fake",
                               "sampling.n_samples.gsm8k": n, "sampling.backend": "fake", **extra})


def _pool_file(root):
    return Path(root) / "fake" / "gsm8k.parquet"


def _ckpt(root):
    return _pool_file(root).with_suffix(".checkpoint.jsonl")


from test_pools import DyingSampler  # noqa: E402  (a backend killed mid-run)


def _killed_before_the_first_merge(root, n=4, questions=6, die_after=3, **extra):
    """A run stopped after ``die_after`` questions, before any merge: a checkpoint, no Parquet file."""
    cfg = _cfg(root, n, **extra)
    with pytest.raises(RuntimeError, match="died"):
        generate_pool(cfg, "gsm8k", _problems(questions), DyingSampler(cfg.sampling, die_after), flush_every=100,
                      progress=False)
    assert _ckpt(root).is_file() and not _pool_file(root).exists()
    return cfg


def _clean_pool(root, n=4, questions=6):
    cfg = _cfg(root, n)
    return read_pool(generate_pool(cfg, "gsm8k", _problems(questions), FakeSampler(cfg.sampling), progress=False)).df


# -- 1. resume under another setting ----------------------------------------------------------
@pytest.mark.parametrize("other", [{"sampling.n_samples.gsm8k": 2, "sampling.temperature": 1.3},
                                   {"sampling.temperature": 1.3}])
def test_a_checkpoint_is_never_resumed_under_another_setting(tmp_path, other):
    _killed_before_the_first_merge(tmp_path)
    ckpt = _ckpt(tmp_path)
    kept = ckpt.read_bytes()
    changed = _cfg(tmp_path, **other)
    with pytest.raises(PoolError, match=r"checkpoint.*sampling\.temperature: 0\.7 -> 1\.3"):
        generate_pool(changed, "gsm8k", _problems(6), FakeSampler(changed.sampling), progress=False)
    assert ckpt.read_bytes() == kept and not _pool_file(tmp_path).exists()  # nothing lost, nothing written
    # the setting that wrote it resumes it: the pool an uninterrupted run gives
    cfg = _cfg(tmp_path)
    sampler = FakeSampler(cfg.sampling)
    generate_pool(cfg, "gsm8k", _problems(6), sampler, progress=False)
    assert len(sampler.calls) == 3  # the 3 checkpointed questions were not sampled again
    pd.testing.assert_frame_equal(read_pool(_pool_file(tmp_path)).df, _clean_pool(tmp_path / "clean"))
    assert not ckpt.exists()


def test_merge_refuses_a_question_with_another_sample_count(tmp_path):
    _clean_pool(tmp_path, n=4, questions=2)
    path = _pool_file(tmp_path)
    donor = tmp_path / "donor"
    _killed_before_the_first_merge(donor, n=4, questions=4, die_after=3)  # the same setting
    rec = json.loads(_ckpt(donor).read_text().splitlines()[-1])
    assert rec["question_id"] == "q2"
    rec["rows"] = rec["rows"][:2]  # two of its four samples
    ckpt = path.with_suffix(".checkpoint.jsonl")
    ckpt.write_text(json.dumps(rec) + "\n")
    kept = ckpt.read_bytes()
    before = read_pool(path).df
    with pytest.raises(PoolError, match=r"checkpoint\.jsonl: line 1: question 'q2' has 2 samples.*n_samples=4"):
        merge_checkpoint(path)
    pd.testing.assert_frame_equal(read_pool(path).df, before)
    assert ckpt.read_bytes() == kept


# -- 2. ragged pools --------------------------------------------------------------------------
def _ragged_pool(tmp_path):
    """5 questions x 8 samples and question q5 with 1 sample (as an import can give)."""
    cfg = _cfg(tmp_path, 8)
    path = generate_pool(cfg, "gsm8k", _problems(6), FakeSampler(cfg.sampling),
                         [get_scorer("self-certainty", cfg.scoring)], progress=False)
    pool = read_pool(path)
    df = pool.df[(pool.df["question_id"] != "q5") | (pool.df["sample_index"] == 0)]
    write_pool(df, pool.meta, path)
    return read_pool(path)


def test_a_ragged_pool_keeps_the_requested_n_and_notes_the_short_question(tmp_path):
    from optscale.evaluation.replay import pool_arrays

    pool = _ragged_pool(tmp_path)
    for max_N in (8, None):
        data = pool_arrays(pool, "self-certainty", max_N=max_N, verbose=False)
        assert data.n == 8 and list(data.question_ids) == ["q0", "q1", "q2", "q3", "q4"]
        assert any("fewer than 8 samples: q5" in note for note in data.meta["notes"])
    data = pool_arrays(pool, "self-certainty", max_N=4, verbose=False)  # q5 has 1 sample, not 4
    assert data.n == 4 and "q5" not in list(data.question_ids)


def test_max_N_above_the_pool_is_not_capped_silently(tmp_path):
    from optscale.evaluation.replay import pool_arrays

    cfg = _cfg(tmp_path, 4)
    path = generate_pool(cfg, "gsm8k", _problems(3), FakeSampler(cfg.sampling),
                         [get_scorer("self-certainty", cfg.scoring)], progress=False)
    data = pool_arrays(read_pool(path), "self-certainty", max_N=64, verbose=False)
    assert data.n == 4 and data.n_questions == 3
    assert any("max_N=64" in note and "4 samples" in note for note in data.meta["notes"])


# -- 4. a truncated checkpoint line -----------------------------------------------------------
def test_a_checkpoint_whose_only_line_is_truncated_is_cut_and_the_run_completes(tmp_path):
    cfg = _cfg(tmp_path)
    _clean_pool(tmp_path, questions=2)  # the pool exists; the next run was killed writing its first line
    ckpt = _ckpt(tmp_path)
    ckpt.write_text('{"question_id": "q2", "rows": [{"datas')
    with pytest.warns(UserWarning, match="truncated"):
        generate_pool(cfg, "gsm8k", _problems(6), FakeSampler(cfg.sampling), progress=False, flush_every=2)
    pd.testing.assert_frame_equal(read_pool(_pool_file(tmp_path)).df, _clean_pool(tmp_path / "clean"))
    assert not ckpt.exists()


def test_a_truncated_last_line_is_cut_keeping_every_good_line(tmp_path):
    _killed_before_the_first_merge(tmp_path)  # 3 complete questions in the checkpoint
    ckpt = _ckpt(tmp_path)
    with open(ckpt, "a") as f:
        f.write('{"question_id": "q3", "rows": [{"datas')
    cfg = _cfg(tmp_path)
    sampler = FakeSampler(cfg.sampling)
    with pytest.warns(UserWarning, match="truncated"):
        generate_pool(cfg, "gsm8k", _problems(6), sampler, progress=False)
    assert len(sampler.calls) == 3  # q0..q2 kept from the checkpoint
    pd.testing.assert_frame_equal(read_pool(_pool_file(tmp_path)).df, _clean_pool(tmp_path / "clean"))


def test_a_bad_line_in_the_middle_is_an_error_naming_file_and_line_and_loses_nothing(tmp_path):
    _killed_before_the_first_merge(tmp_path)
    ckpt = _ckpt(tmp_path)
    lines = ckpt.read_text().splitlines(keepends=True)
    lines[-2] = lines[-2][: len(lines[-2]) // 2] + "\n"
    ckpt.write_text("".join(lines))
    kept = ckpt.read_bytes()
    cfg = _cfg(tmp_path)
    with pytest.raises(PoolError, match=rf"{ckpt}: line {len(lines) - 1} is not valid JSON"):
        generate_pool(cfg, "gsm8k", _problems(6), FakeSampler(cfg.sampling), progress=False)
    assert ckpt.read_bytes() == kept and not _pool_file(tmp_path).exists()


# -- 6. sizes out of range --------------------------------------------------------------------
def test_n_samples_below_1_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"n_samples"):
        cfg = _cfg(tmp_path, 0)  # the config may refuse it already
        generate_pool(cfg, "gsm8k", _problems(2), FakeSampler(cfg.sampling), progress=False)
    cfg = _cfg(tmp_path, 2)
    cfg.sampling.n_samples["gsm8k"] = -1  # past the config's own checks: generate_pool refuses it itself
    with pytest.raises(PoolError, match=r"sampling\.n_samples\.gsm8k = -1"):
        generate_pool(cfg, "gsm8k", _problems(2), FakeSampler(cfg.sampling), progress=False)
    assert not _pool_file(tmp_path).exists() and not _ckpt(tmp_path).exists()


@pytest.mark.parametrize("chunk", [0, -1])
def test_a_chunk_below_1_is_refused(tmp_path, chunk):
    cfg = _cfg(tmp_path)
    sampler = FakeSampler(cfg.sampling)
    with pytest.raises(ValueError, match=r"max_questions \(--chunk\)"):
        generate_pool(cfg, "gsm8k", _problems(3), sampler, progress=False, max_questions=chunk)
    assert not sampler.calls


# -- 7. two writers on one pool ---------------------------------------------------------------
SLOW_SCORER = textwrap.dedent("""
    import sys, time
    from optscale.config import load_config
    from optscale.data.pools import score_pool
    from optscale.scoring.scorers import get_scorer

    class Slow:
        name = "slow"
        def describe(self):
            return {{"scorer": "slow"}}
        def score(self, question, comps):
            print("scoring", flush=True)
            time.sleep({delay})
            return get_scorer("tail-confidence", load_config("cpu").scoring).score(question, comps)

    score_pool({path!r}, Slow(), {{f"q{{i}}": "?" for i in range(3)}}, progress=False)
""")


def test_a_second_writer_is_refused_with_the_holders_pid_and_command(tmp_path):
    _clean_pool(tmp_path, questions=3)
    path = _pool_file(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    code = SLOW_SCORER.format(path=str(path), delay=1.0)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "scoring"  # the other process is inside score_pool
        cfg = _cfg(tmp_path)
        path.with_suffix(".checkpoint.jsonl").write_text("")  # so that `merge` has a checkpoint to look at
        for write in (lambda: score_pool(path, get_scorer("self-certainty", cfg.scoring), {}, progress=False),
                      lambda: merge_checkpoint(path),
                      lambda: generate_pool(cfg, "gsm8k", _problems(4), FakeSampler(cfg.sampling), progress=False)):
            with pytest.raises(PoolError, match=rf"(?s)locked by another writer: pid {proc.pid}\b.*score_pool"):
                write()
    finally:
        proc.stdout.read()
        assert proc.wait(timeout=120) == 0
    done = read_pool(path)  # the holder's column is complete; the refused writers changed nothing
    assert done.df["score__slow"].notna().all() and done.n_questions == 3
    assert "score__self-certainty" not in done.df.columns


def test_the_lock_is_refused_to_another_thread_and_reentrant_in_one(tmp_path):
    from optscale.data.pools import PoolLockedError, pool_lock

    path = tmp_path / "p.parquet"
    errors = []
    with pool_lock(path, "first"):
        with pool_lock(path, "nested"):  # the same thread: re-entrant
            pass
        t = threading.Thread(target=lambda: errors.append(_try_lock(path)))
        t.start()
        t.join()
    assert isinstance(errors[0], PoolLockedError) and f"pid {os.getpid()}" in str(errors[0])
    assert _try_lock(path) is None  # released
    assert not Path(str(path) + ".lock").exists()


def _try_lock(path):
    from optscale.data.pools import PoolLockedError, pool_lock

    try:
        with pool_lock(path, "second"):
            return None
    except PoolLockedError as e:
        return e


def test_temporary_files_are_unique(tmp_path):
    df = _clean_pool(tmp_path, questions=2)
    path = _pool_file(tmp_path)
    meta = read_pool(path).meta
    # another writer's temporary file where a fixed name would put this one's
    (path.parent / (path.name + ".tmp")).mkdir()
    write_pool(df, meta, path)
    pd.testing.assert_frame_equal(read_pool(path).df, df)
    assert sorted(p.name for p in path.parent.iterdir()) == ["gsm8k.parquet", "gsm8k.parquet.tmp"]


# -- 8. a pool of other questions -------------------------------------------------------------
def test_a_pool_of_other_questions_is_refused_with_the_difference_named(tmp_path):
    cfg = _cfg(tmp_path)
    generate_pool(cfg, "gsm8k", _problems(10)[:4], FakeSampler(cfg.sampling), progress=False)
    before = read_pool(_pool_file(tmp_path)).df
    other = _problems(10)[4:8]  # the same size, other questions
    sampler = FakeSampler(cfg.sampling)
    with pytest.raises(PoolError, match=r"4 question\(s\) not in this selection \(q0, q1, q2, q3\).*"
                                        r"4 selected question\(s\) missing \(q4, q5, q6, q7\)"):
        generate_pool(cfg, "gsm8k", other, sampler, progress=False)
    assert not sampler.calls
    pd.testing.assert_frame_equal(read_pool(_pool_file(tmp_path)).df, before)
    # a smaller selection inside the pool (a prefix of the same order) is complete: nothing to do
    generate_pool(cfg, "gsm8k", _problems(10)[:2], sampler, progress=False)
    assert not sampler.calls


def test_generate_pools_compares_question_ids_not_counts(tmp_path, monkeypatch, capsys):
    import optscale.data.selection as selection
    from optscale.generate import main

    monkeypatch.setattr(selection, "load_benchmark", lambda ds, data_dir=None: _problems(12))
    base = (f"pools.pool_dir={tmp_path}, pools.pool_name=fake, sampling.backend=fake, sampling.n_samples.gsm8k=2, "
            "data.max_questions.gsm8k=4")
    args = ["pools", "--profile", "cpu", "--datasets", "gsm8k", "--online", "self-certainty", "--overrides"]
    assert main(args + [base + ", data.selection=first"]) == 0
    first = read_pool(_pool_file(tmp_path)).df
    assert first["question_id"].unique().tolist() == ["q0", "q1", "q2", "q3"]
    wanted = {p.id for p in selection.config_problems(_cfg(tmp_path, 2, **{"data.selection": "stratified",
                                                                           "data.selection_seed": 3,
                                                                           "data.max_questions.gsm8k": 4}), "gsm8k")}
    assert wanted != {"q0", "q1", "q2", "q3"}
    try:
        rc = main(args + [base + ", data.selection=stratified, data.selection_seed=3"])
        msg = capsys.readouterr().err
    except PoolError as e:
        rc, msg = 1, str(e)
    assert rc != 0 and "not in this selection" in msg
    pd.testing.assert_frame_equal(read_pool(_pool_file(tmp_path)).df, first)


# -- 11. zero token counts, non-numeric scores ------------------------------------------------
def test_zero_token_counts_for_nonempty_text_are_rejected(tmp_path):
    df = _clean_pool(tmp_path, questions=2)
    meta = read_pool(_pool_file(tmp_path)).meta
    df["n_tokens"] = 0
    df["token_logprobs"] = [[] for _ in range(len(df))]
    df["token_confidence"] = [[] for _ in range(len(df))]
    with pytest.raises(PoolError, match=r"row 0 \(question 'q0', sample 0\): field 'n_tokens' is 0 "
                                        r"for a non-empty text"):
        write_pool(df, meta, tmp_path / "zero.parquet")
    assert not (tmp_path / "zero.parquet").exists()


def test_a_pool_of_empty_completions_says_its_token_savings_are_undefined(tmp_path):
    from optscale.evaluation.replay import pool_arrays

    cfg = _cfg(tmp_path)
    path = generate_pool(cfg, "gsm8k", _problems(2), FakeSampler(cfg.sampling),
                         [get_scorer("self-certainty", cfg.scoring)], progress=False)
    pool = read_pool(path)
    df = pool.df.copy()
    df["text"], df["n_tokens"], df["answer"], df["correct"] = "", 0, None, False
    df["token_logprobs"] = [[] for _ in range(len(df))]
    df["token_confidence"] = [[] for _ in range(len(df))]
    write_pool(df, pool.meta, path)  # empty texts with 0 tokens are valid
    data = pool_arrays(read_pool(path), "self-certainty", verbose=False)
    assert any("0 tokens, so token savings are undefined" in note for note in data.meta["notes"])


def test_a_score_column_of_strings_is_a_pool_error_naming_file_column_and_row(tmp_path):
    cfg = _cfg(tmp_path)
    path = generate_pool(cfg, "gsm8k", _problems(2), FakeSampler(cfg.sampling),
                         [get_scorer("self-certainty", cfg.scoring)], progress=False)
    t = pq.read_table(path)
    col = t.schema.get_field_index("score__self-certainty")
    vals = [str(x) for x in t.column(col).to_pylist()]
    vals[3] = "high"
    bad = tmp_path / "strings.parquet"
    pq.write_table(t.set_column(col, pa.field("score__self-certainty", pa.string()), pa.array(vals)), bad)
    with pytest.raises(PoolError, match=rf"{bad}: row 3 \(question 'q0', sample 3\): field 'score__self-certainty' "
                                        r"= 'high' is not a number"):
        read_pool(bad)
    scores = np.array([0.5] * 8, dtype=object)
    scores[5] = "high"
    before = read_pool(path).df
    with pytest.raises(PoolError, match=rf"{path}: row 5: score__combo = 'high' is not a number"):
        write_score_column(path, "combo", scores, {"scorer": "combo"})
    pd.testing.assert_frame_equal(read_pool(path).df, before)


def test_cli_reports_a_refused_pool_in_one_line(monkeypatch, capsys):
    """A PoolError (a refused resume, a held lock, a bad checkpoint line) reaches the CLI user as one
    line naming the file, with exit 1, not a traceback."""
    import optscale.generate as gen
    from optscale.data.pools import PoolLockedError

    def refuse(args):
        raise PoolLockedError("data/pools/x/gsm8k.parquet: locked by pid 123 (python -m optscale.generate score)")

    monkeypatch.setattr(gen, "cmd_merge", refuse)
    assert gen.main(["merge", "--profile", "smoke"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m optscale.generate merge: data/pools/x/gsm8k.parquet: locked by pid 123 "
                   "(python -m optscale.generate score)"]
