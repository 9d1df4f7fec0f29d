"""The generator study runner on the deterministic fake sampler: arms round-robin on questions
outside the pools, timing recorded, verifier columns added, tables and figure built."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from optscale.data.selection import select_questions
from optscale.data.benchmarks import load_benchmark
from optscale.study import plot_study, run_study, score_study, study_caption, study_table, verifier_table


@pytest.fixture()
def study_dir(tmp_path):
    arms = {"a": {"sampling.backend": "fake"}, "b": {"sampling.backend": "fake", "sampling.temperature": 0.5}}
    (tmp_path / "arms.yaml").write_text(yaml.safe_dump(arms))
    return tmp_path


def test_study_runs_arms_round_robin_outside_the_pools(study_dir, data_dir):
    run_study(["a", "b"], ["gsm8k"], questions=3, samples=4, caps={"gsm8k": 32}, offset=400, out_dir=study_dir)
    table = study_table(out_dir=study_dir, reps=100)
    assert list(table["arm"]) == ["a", "b"] and (table["questions"] == 3).all() and (table["samples"] == 4).all()
    # questions: positions 400-402 of the stratified order, never among a 150-question pool's
    from optscale.data.pools import read_pool

    ids = set(read_pool(study_dir / "a" / "gsm8k.parquet").question_ids)
    gsm = load_benchmark("gsm8k", data_dir)
    assert ids == {p.id for p in select_questions(gsm, 3, "stratified", 0, offset=400)}
    assert not ids & {p.id for p in select_questions(gsm, 150, "stratified", 0)}
    timing = [json.loads(line) for line in (study_dir / "a" / "timing.jsonl").read_text().splitlines()]
    assert len(timing) == 3 and all(t["samples"] == 4 and t["tokens"] > 0 for t in timing)
    assert np.isfinite(table["tokens_per_s"]).all()
    # a rerun adds nothing; a zero-length deadline starts no question
    run_study(["a", "b"], ["gsm8k"], questions=3, samples=4, caps={"gsm8k": 32}, offset=400, out_dir=study_dir)
    assert len((study_dir / "a" / "timing.jsonl").read_text().splitlines()) == 3
    run_study(["a"], ["gsm8k"], questions=5, samples=4, caps={"gsm8k": 32}, offset=400, hours=1e-9, out_dir=study_dir)
    assert study_table(["a"], out_dir=study_dir, reps=50)["questions"].item() == 3
    with pytest.raises(KeyError, match="unknown arm 'c'"):
        run_study(["c"], ["gsm8k"], 1, 2, {"gsm8k": 8}, 400, out_dir=study_dir)


def test_study_scores_verifiers_and_tabulates_them(study_dir):
    run_study(["a"], ["gsm8k"], questions=4, samples=6, caps={"gsm8k": 32}, offset=400, out_dir=study_dir)
    score_study(["a"], ["tail-confidence", "lowest-group-confidence"], out_dir=study_dir)
    ver = verifier_table(["a"], out_dir=study_dir, reps=100, orders=20)
    assert set(ver["verifier"]) == {"self-certainty", "tail-confidence", "lowest-group-confidence", "fewer-tokens"}
    cost = ver.set_index("verifier")["cpu_s_per_sample"]
    assert cost["tail-confidence"] >= 0 and cost["self-certainty"] == 0
    ok = ver.dropna(subset=["auroc_within"])
    assert ((ok["auroc_within_lo"] <= ok["auroc_within"]) & (ok["auroc_within"] <= ok["auroc_within_hi"])).all()
    arms = study_table(["a"], out_dir=study_dir, reps=50)
    assert study_caption(arms, out_dir=study_dir).split(": ", 1)[1].startswith("a (fake, fake, prompt solve.txt, T 0.7, top-p 0.95; gsm8k 4 x 6, seed 0)")
    plot_study(arms, ver)


def test_combination_is_fitted_out_of_fold_by_question(study_dir, monkeypatch):
    from dataclasses import replace

    import optscale.study as study
    from optscale.data.pools import read_pool
    from optscale.sampling.fake import FAKE_GOLD
    from optscale.study import combine_study
    from optscale.scoring.combinations import combined_scores

    real = study.study_problems  # the fake sampler's "correct" answer is FAKE_GOLD
    monkeypatch.setattr(study, "study_problems", lambda *a, **k: [replace(p, answer=FAKE_GOLD) for p in real(*a, **k)])

    run_study(["a"], ["gsm8k"], questions=12, samples=6, caps={"gsm8k": 32}, offset=400, out_dir=study_dir)
    score_study(["a"], ["tail-confidence"], out_dir=study_dir)
    model = combine_study("a", ["self-certainty", "tail-confidence", "log-tokens"], folds=4, out_dir=study_dir)
    pool = read_pool(study_dir / "a" / "gsm8k.parquet")
    oof = pool.df["score__combined-oof"].to_numpy()
    full = combined_scores(pool, model)
    assert model["n_questions"] == 12 and len(model["coef"]) == 3
    assert ((0 < oof) & (oof < 1)).all() and not np.allclose(oof, full)  # held out != refit on all
    from optscale.scoring.combinations import add_combined_score

    add_combined_score(study_dir / "a" / "gsm8k.parquet", study_dir / "a" / "combined.json")
    applied = read_pool(study_dir / "a" / "gsm8k.parquet")
    assert np.allclose(applied.df["score__combined"], full) and "combined" in applied.meta["scorers"]
    # the fake sampler makes correct samples more self-certain: the combination ranks them
    ver = verifier_table(["a"], out_dir=study_dir, reps=100, orders=20).set_index("verifier")
    assert ver.loc["combined-oof", "auroc_pooled"] > 0.6
    with pytest.raises(KeyError, match="no score__answer-judge column"):
        combine_study("a", ["answer-judge"], out_dir=study_dir)


def test_a_pool_is_never_resumed_under_another_sampling_setting(study_dir):
    from optscale.data.pools import PoolError

    run_study(["a"], ["gsm8k"], questions=2, samples=2, caps={"gsm8k": 16}, offset=400, out_dir=study_dir)
    arms = yaml.safe_load((study_dir / "arms.yaml").read_text())
    arms["a"]["sampling.system_prompt"] = "be brief"
    (study_dir / "arms.yaml").write_text(yaml.safe_dump(arms))
    with pytest.raises(PoolError, match=r"sampling.system_prompt: '' -> 'be brief'.*mix two settings"):
        run_study(["a"], ["gsm8k"], questions=3, samples=2, caps={"gsm8k": 16}, offset=400, out_dir=study_dir)
    with pytest.raises(PoolError, match=r"sampling.max_new_tokens.gsm8k: 16 -> 32"):
        arms["a"].pop("sampling.system_prompt")
        (study_dir / "arms.yaml").write_text(yaml.safe_dump(arms))
        run_study(["a"], ["gsm8k"], questions=3, samples=2, caps={"gsm8k": 32}, offset=400, out_dir=study_dir)


def test_step_scored_verifier_is_reaggregated_by_min_and_last(study_dir):
    from optscale.data.pools import open_score_column, read_pool, write_pool
    from optscale.study import aggregate_study

    run_study(["a"], ["gsm8k"], questions=3, samples=4, caps={"gsm8k": 32}, offset=400, out_dir=study_dir)
    path = study_dir / "a" / "gsm8k.parquet"
    with pytest.raises(ValueError, match="no pool of arm 'a'.*'judge'"):
        aggregate_study("a", "judge", ["min"], out_dir=study_dir)
    df, meta, _ = open_score_column(path, "judge", {"scorer": "judge"})
    steps = [[0.9, 0.2 + 0.05 * i, 0.6 - 0.04 * i] for i in range(len(df))]
    steps[-4:] = [None] * 4  # the last question not scored yet
    df["step_scores__judge"] = pd.Series(steps, dtype=object)
    df["score__judge"] = [np.nan if s is None else float(np.mean(s)) for s in steps]
    write_pool(df, meta, path, allow_partial_scores=True)
    (study_dir / "a" / "scoring.jsonl").write_text(json.dumps(
        {"dataset": "gsm8k", "scorer": "judge", "samples": len(df), "seconds": 6.0, "cpu_seconds": 3.0 * len(df)}) + "\n")

    assert aggregate_study("a", "judge", ["min", "last"], out_dir=study_dir) == ["gsm8k:judge-min", "gsm8k:judge-last"]
    pool = read_pool(path, allow_partial_scores=True)
    assert np.allclose(pool.df["score__judge-min"], [np.nan if s is None else min(s) for s in steps], equal_nan=True)
    assert np.allclose(pool.df["score__judge-last"], [np.nan if s is None else s[-1] for s in steps], equal_nan=True)
    assert pool.df["step_scores__judge-min"].iloc[-4:].isna().all()  # unscored stays unscored
    assert pool.meta["scorers"]["judge-last"]["source_scorer"] == "judge"
    cost = verifier_table(["a"], out_dir=study_dir, reps=50, orders=10).set_index("verifier")["cpu_s_per_sample"]
    assert cost["judge-min"] == cost["judge-last"] == cost["judge"] == 3.0
