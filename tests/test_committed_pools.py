"""The committed CPU pools (data/pools/) match their benchmarks and profiles and regrade the same.

Two pool sets, both complete: the ``cpu`` profile's (0.5B) and the ``cpu-1.5b`` profile's (1.5B, the
profile's seeded stratified question selection). Each pool holds exactly the profile's questions,
every sample of each.

These check the artifacts every notebook reads: a pool that lost questions, was generated with
another setting, or was graded by an older grader fails here, naming the benchmark and question.
"""

from functools import cache

import numpy as np
import pytest

from optscale.config import load_config
from optscale.data.benchmarks import load_benchmark
from optscale.data.grading import GRADING_RULE_VERSION, grade
from optscale.data.pools import pool_path, read_pool
from optscale.data.selection import config_problems


PROFILES = ("cpu", "cpu-1.5b")
# pool sets begun before sampling.backend / prompt_template / top_k / repetition_penalty / system_prompt
# were stored in a pool's metadata
BEFORE_SAMPLING_KEYS = {"cpu"}
# pool sets that carry every scorer of the profile on every benchmark (elsewhere the offline judge
# is run only where it is used, e.g. the 1.5B answer judge on MATH-500)
JUDGED_EVERYWHERE = {"cpu"}


@cache
def profile_config(profile):
    return load_config(profile)


CASES = [(profile, name) for profile in PROFILES for name in profile_config(profile).data.benchmarks]


@cache
def committed_pool(profile, name):
    """Each committed pool, read (and validated) once for this module's tests."""
    return read_pool(pool_path(profile_config(profile), name))


@pytest.mark.parametrize("profile,name", CASES)
def test_committed_pool_has_every_target_question_and_sample(profile, name, data_dir):
    cfg = profile_config(profile)
    pool = committed_pool(profile, name)
    problems = config_problems(cfg, name, data_dir)
    n = cfg.sampling.n_samples[name]

    assert pool.question_ids == [p.id for p in problems], f"{profile}/{name}: pool questions differ from the profile's selection"
    per_question = pool.df.groupby("question_id", sort=False)["sample_index"].apply(sorted)
    wrong = {q: s for q, s in per_question.items() if s != list(range(n))}
    assert not wrong, f"{name}: questions without sample indices 0..{n - 1}: {list(wrong)[:5]}"

    gold = {p.id: p.answer for p in problems}
    bad_gold = pool.df[pool.df["gold"] != pool.df["question_id"].map(gold)]
    assert bad_gold.empty, f"{name}: gold differs from the benchmark file for {bad_gold['question_id'].unique()[:5]}"

    sampling, want = pool.meta["sampling"], cfg.sampling
    assert pool.meta["n_samples"] == n
    assert pool.meta["max_new_tokens"] == want.max_new_tokens[name]
    assert (sampling["model"], sampling["temperature"], sampling["top_p"], sampling["seed"]) == (
        want.model, want.temperature, want.top_p, want.seed)
    if profile not in BEFORE_SAMPLING_KEYS:  # the keys a pool set begun after they existed must also match
        assert (sampling["backend"], sampling["prompt_template"], sampling["top_k"], sampling["repetition_penalty"],
                sampling["system_prompt"]) == (want.backend, want.prompt_template, want.top_k,
                                               want.repetition_penalty, want.system_prompt)
    assert int(pool.df["n_tokens"].max()) <= pool.meta["max_new_tokens"]
    # every scorer the profile names that is computed while sampling (the judge comes afterwards)
    online = [sc for sc in cfg.scoring.scorers if profile in JUDGED_EVERYWHERE or sc in pool.scorers or "judge" not in sc]
    assert set(online) <= set(pool.scorers), f"{profile}/{name}: scorers {set(online) - set(pool.scorers)} missing"
    for scorer in online:
        s = pool.scores(scorer)
        assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all(), f"{name}: {scorer} scores outside [0, 1]"


@pytest.mark.parametrize("profile,name", CASES)
def test_committed_pool_carries_its_primary_scorer_up_to_date(profile, name):
    """The scorer the policies read on this benchmark is in the pool; a fitted combination
    (scoring.combinations) is what its model gives on every sample now, so a pool that grew
    after `generate combine` ran fails here until it runs again."""
    import json

    from optscale.scoring.combinations import combined_scores

    cfg = profile_config(profile)
    pool = committed_pool(profile, name)
    primary = cfg.scoring.primary_for(name)
    assert primary in pool.scorers, f"{profile}/{name}: no score__{primary} (the primary scorer) in the pool"
    for combo in cfg.scoring.combinations:
        if combo in pool.scorers:
            model = json.loads(cfg.scoring.combination_path(combo).read_text())
            assert np.allclose(pool.df[f"score__{combo}"].to_numpy(float), combined_scores(pool, model)), (
                f"{profile}/{name}: score__{combo} is stale; run `python -m optscale.generate combine "
                f"--profile {profile} --datasets {name}`")


@pytest.mark.parametrize("profile,name", CASES)
def test_committed_pool_regrades_the_same(profile, name):
    """The stored answer and correctness are what today's extraction + math-verify give (a
    truncated sample without a stated answer has none), and the metadata names today's rule."""
    pool = committed_pool(profile, name)
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


PROBE_CASES = [(p, n) for p, n in CASES if "probe" in committed_pool(p, n).scorers]


@pytest.mark.parametrize("profile,name", PROBE_CASES)
def test_committed_probe_column_was_cross_fitted_and_its_heads_refuse_the_questions_they_saw(profile, name, data_dir):
    """A committed ``score__probe``: its folds partition the pool's questions, no question was scored by
    a head trained on it, the committed fold heads say which questions they scored, and the head trained
    on every pool question (for new questions) refuses each of them by the digest of its text."""
    from optscale.scoring.probe import ProbeHead, probe_head_dir, question_digest

    cfg = profile_config(profile)
    pool = committed_pool(profile, name)
    meta = pool.meta["scorers"]["probe"]
    qids = set(pool.question_ids)
    folds = meta["folds"]
    assert len(folds) == meta["k_folds"] >= 2
    scored = [q for f in folds for q in f["scored_question_ids"]]
    assert sorted(scored) == sorted(qids), f"{name}: the probe's folds do not partition the pool's questions"
    for f in folds:
        train, held = set(f["train_question_ids"]), set(f["scored_question_ids"])
        assert not train & held, f"{name}: fold {f['fold']} scored questions its head was trained on: {sorted(train & held)[:5]}"
        assert train | held == qids
    s = pool.scores("probe")
    assert np.isfinite(s).all() and ((s > 0) & (s < 1)).all()

    heads = probe_head_dir(pool.meta["pool_name"], name)
    for f in folds:
        head = ProbeHead.load(heads / f"fold{f['fold']}.npz")
        assert head.meta["scored_question_ids"] == f["scored_question_ids"]
        assert head.coef.shape == (2 * 1536 * len(meta["layers"]),)  # [last token, mean] x n_embd of the 1.5B
    full = ProbeHead.load(heads / "all.npz")
    texts = {p.id: p.question for p in config_problems(cfg, name, data_dir)}
    assert set(full.meta["train_question_digests"]) == {question_digest(texts[q]) for q in qids}


@pytest.mark.parametrize("profile,name", PROBE_CASES)
def test_generate_info_reports_the_probe_with_its_folds_and_cost(profile, name, capsys):
    from optscale import generate

    assert generate.main(["info", "--profile", profile, "--datasets", name]) == 0
    out = capsys.readouterr().out
    probe = out[out.index("  probe: AUROC"):]
    assert probe.splitlines()[0].startswith("  probe: AUROC pooled ") and "within questions" in probe.splitlines()[0]
    k = committed_pool(profile, name).meta["scorers"]["probe"]["k_folds"]
    assert f"cross-fitted: {k} folds by question" in probe.splitlines()[1] and "s wall per sample" in probe.splitlines()[2]
