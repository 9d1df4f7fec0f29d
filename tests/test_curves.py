import numpy as np
import pandas as pd
import pytest

from optscale.evaluation.curves import (TOKENS_SCORER, auroc, auroc_summary, bon_correct, bootstrap_mean_ci,
                                        fixed_n_curves, majority_correct, pool_status, pool_status_markdown,
                                        pool_summary, scorer_auroc, within_question_auroc)
from optscale.data.pools import Pool, replay_orders


def test_bon_picks_highest_score():
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])
    correct = np.array([[False, True, False], [False, True, True]])
    ident = replay_orders(2, 3, 1, seed=0)  # order 0 is the identity
    assert bon_correct(scores, correct, ident, 1).tolist() == [[False, False]]
    assert bon_correct(scores, correct, ident, 2).tolist() == [[True, False]]
    assert bon_correct(scores, correct, ident, 3).tolist() == [[True, False]]
    # averaged over all orders, BoN@3 is order-free
    many = replay_orders(2, 3, 30, seed=1)
    assert bon_correct(scores, correct, many, 3).all(0).tolist() == [True, False]
    # a sample without an answer never wins while another has one (as evaluation.bon_curve)
    answered = np.array([[True, False, True], [True, True, True]])
    assert bon_correct(scores, correct, ident, 3, answered=answered).tolist() == [[False, False]]
    assert bon_correct(scores, correct, ident, 2, answered=np.array([[False, False, True]] * 2)).tolist() == [[True, False]]


def test_pool_bon_equals_the_evaluation_bon_curve():
    from optscale.evaluation.replay import PoolArrays, bon_curve

    rng = np.random.default_rng(4)
    scores, correct = rng.random((6, 5)), rng.random((6, 5)) < 0.4
    labels = np.where(rng.random((6, 5)) < 0.3, -1, rng.integers(0, 3, (6, 5)))
    correct &= labels >= 0
    orders = replay_orders(6, 5, 7, seed=2)
    data = PoolArrays("toy", np.arange(6).astype(str).astype(object), scores, correct, np.ones((6, 5)), labels,
                      labels.astype(str).astype(object))
    for n in (1, 3, 5):
        assert np.array_equal(bon_correct(scores, correct, orders, n, answered=labels >= 0),
                              bon_curve(data, orders)["correct"][n - 1])


def test_majority_with_equivalence_labels_and_weights():
    labels = np.array([[0, 0, 2, 2, 2], [-1, -1, -1, -1, -1]])
    correct = np.array([[True, True, False, False, False], [False] * 5])
    ident = replay_orders(2, 5, 1, seed=0)
    assert majority_correct(labels, correct, ident, 2).tolist() == [[True, False]]
    assert majority_correct(labels, correct, ident, 5).tolist() == [[False, False]]
    w = np.array([[0.9, 0.9, 0.1, 0.1, 0.1], [0.5] * 5])
    assert majority_correct(labels, correct, ident, 5, weights=w).tolist() == [[True, False]]


def test_bootstrap_ci_brackets_mean_and_is_seeded():
    x = np.random.default_rng(0).random(200)
    m, lo, hi = bootstrap_mean_ci(x, 500, seed=1)
    assert lo < m < hi and hi - lo < 0.2
    assert bootstrap_mean_ci(x, 500, seed=1) == (m, lo, hi)
    assert bootstrap_mean_ci(np.ones(5), 100, 0) == (1.0, 1.0, 1.0)


def _toy_pool():
    rows = []
    for q in range(4):
        for k in range(4):
            ok = k == q % 4
            rows.append(dict(dataset="toy", question_id=f"q{q}", question_index=q, sample_index=k, text="t",
                             answer=str(1 if ok else 2 + k), gold="1", correct=ok, n_tokens=10 + k,
                             finish_reason="stop", seed=0, token_logprobs=[], token_confidence=[],
                             **{"score__oracle": 1.0 if ok else 0.0}))
    return Pool(pd.DataFrame(rows), {"dataset": "toy"})


def test_fixed_n_curves_and_summary():
    pool = _toy_pool()
    orders = replay_orders(4, 4, 50, seed=0)
    df = fixed_n_curves(pool, "oracle", orders, [1, 4], reps=200)
    bon4 = df[(df.method == "best-of-n") & (df.N == 4)].iloc[0]
    assert bon4.accuracy == 1.0  # a perfect scorer with one correct sample per question
    bon1 = df[(df.method == "best-of-n") & (df.N == 1)].iloc[0]
    assert bon1.accuracy == pytest.approx(0.25, abs=0.1)
    assert df[df.N == 4].mean_tokens.iloc[0] == pytest.approx(4 * 11.5)
    s = pool_summary({"toy": pool}).iloc[0]
    assert s.single_sample_accuracy == 0.25 and s["pass@4"] == 1.0 and s.auroc_oracle == 1.0


def _pairs_auroc(scores, correct):
    """Reference: the share of (correct, wrong) pairs the score orders right, ties one half."""
    s, c = np.ravel(scores), np.ravel(correct).astype(bool)
    pos, neg = s[c], s[~c]
    return np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])


def test_auroc_on_hand_made_cases():
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75  # 3 of 4 pairs ordered right
    assert auroc([0.5, 0.5], [True, False]) == 0.5  # a tie counts one half
    assert auroc([0.9, 0.1], [False, True]) == 0.0
    assert auroc([np.nan, 0.2, 0.9], [False, False, True]) == 1.0  # an unscored sample is left out
    assert np.isnan(auroc([0.2, 0.9], [True, True])) and np.isnan(auroc([np.nan, 0.3], [True, False]))
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        auroc([0.1, 0.2, 0.3], [True, False])


def test_within_question_auroc_differs_from_pooled():
    # q0 ranks its samples right, q1 has no wrong sample, q2 ranks them exactly wrong; pooled
    # over all samples the score mostly separates easy from hard questions instead
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.4], [0.1, 0.2, 0.3]])
    correct = np.array([[True, False, False], [True, True, True], [True, False, False]])
    per_q = within_question_auroc(scores, correct)
    assert per_q[0] == 1.0 and np.isnan(per_q[1]) and per_q[2] == 0.0
    a = auroc_summary(scores, correct, reps=200, seed=0)
    assert a["within"] == 0.5 and a["within_questions"] == 2
    assert a["pooled"] == pytest.approx(_pairs_auroc(scores, correct)) and a["pooled"] != a["within"]
    assert a["within_lo"] <= 0.5 <= a["within_hi"]
    with pytest.raises(ValueError, match="same"):
        within_question_auroc(scores, correct[:2])


def test_token_count_baseline_auroc_direction():
    pool = _toy_pool()  # question q's correct sample is its k = q-th, with 10 + k tokens
    expected = _pairs_auroc(-pool.df["n_tokens"].to_numpy(float), pool.df["correct"].to_numpy())
    assert scorer_auroc(pool, TOKENS_SCORER) == pytest.approx(expected)
    per_q = within_question_auroc(-pool.tokens(), pool.correct())
    assert per_q == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])  # the shortest sample is correct only in q0


def test_pool_status_record_and_markdown():
    pool = _toy_pool()
    pool.df["score__judge"] = np.tile([0.9, 0.1, 0.5, 0.3], 4)  # the first sample scores highest
    orders = replay_orders(4, 4, 50, seed=0)
    r = pool_status(pool, orders, reps=200)
    assert r["questions"] == 4 and r["samples_per_question"] == 4 and r["incomplete"] == []
    assert r["scorers"] == ["judge", "oracle"]
    assert r["best-of-n__oracle"] == r["best-of-n__oracle_lo"] == 1.0  # perfect scorer, one correct each
    assert r["bon_gain__oracle"] == r["bon_gain__oracle_hi"] == 0.75  # BoN 1.0 minus single-sample 0.25
    assert r["best-of-n__judge"] == 0.25 and r["bon_gain__judge"] == 0.0  # picks sample 0: right in q0 only
    assert r["auroc_within_oracle"] == 1.0 and r["auroc_within_questions_oracle"] == 4
    assert r["auroc_within_judge"] == pytest.approx(np.mean([1.0, 0.0, 2 / 3, 1 / 3]))
    assert r[f"auroc_within_{TOKENS_SCORER}"] == pytest.approx(0.5)
    curves = fixed_n_curves(pool, "oracle", orders, [4], reps=200).set_index("method")
    assert r["majority"] == curves.loc["majority", "accuracy"]  # a 4-way tie on each question: ~1/4 right
    assert r["majority"] == pytest.approx(0.25, abs=0.1)
    md = pool_status_markdown([r]).splitlines()
    assert md[0].startswith("| benchmark |") and "BoN@n − single" in md[0] and "AUROC within questions" in md[0]
    assert len(md) == 4 and all(line.count("|") == md[0].count("|") for line in md)  # one line per scorer
    assert md[2].startswith("| toy | 4 x 4 | 0.250 | 1.000 | ") and "| judge | 0.250 [0.000, 0.750] | 0.000 [-0.250, 0.500] | 0.500 |" in md[2]
    assert md[3].endswith("| oracle | 1.000 | 0.750 | 1.000 | 1.000 (4) |")
    pool.df.loc[0, "score__oracle"] = np.nan
    r = pool_status(pool, orders, reps=200)
    assert r["incomplete"] == ["oracle"] and "best-of-n__oracle" not in r and "bon_gain__oracle" not in r
    assert "| oracle (incomplete) | – | – |" in pool_status_markdown([r])


def test_generate_info_prints_every_scorer_and_the_token_baseline(capsys):
    from optscale.generate import main

    fast = "pools.replay_orders=5,evaluation.bootstrap_reps=50"
    assert main(["info", "--profile", "cpu", "--datasets", "amc23", "--overrides", fast, "--format", "markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| amc23 | 40 x 8 |") and "| lm-judge |" in out[2] and "| self-certainty |" in out[3]
    assert main(["info", "--profile", "cpu", "--datasets", "amc23", "--overrides", fast]) == 0
    text = capsys.readouterr().out
    assert "token count alone (shorter = predicted correct): AUROC pooled" in text
    assert "self-certainty: AUROC pooled 0.616, within questions" in text  # after the grading-rule-2 regrade
    assert "best-of-n@8 minus single-sample accuracy" in text
