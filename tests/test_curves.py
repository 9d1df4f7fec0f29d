import numpy as np
import pandas as pd
import pytest

from optscale.curves import (bon_correct, bootstrap_mean_ci, fixed_n_curves, majority_correct, pool_status,
                             pool_status_markdown, pool_summary)
from optscale.pools import Pool, replay_orders


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


def test_pool_status_record_and_markdown():
    pool = _toy_pool()
    orders = replay_orders(4, 4, 50, seed=0)
    r = pool_status(pool, orders, reps=200)
    assert r["questions"] == 4 and r["samples_per_question"] == 4 and r["incomplete"] == []
    assert r["best-of-n__oracle"] == r["best-of-n__oracle_lo"] == 1.0  # perfect scorer, one correct each
    curves = fixed_n_curves(pool, "oracle", orders, [4], reps=200).set_index("method")
    assert r["majority"] == curves.loc["majority", "accuracy"]  # a 4-way tie on each question: ~1/4 right
    assert r["majority"] == pytest.approx(0.25, abs=0.1)
    md = pool_status_markdown([r], "oracle").splitlines()
    assert md[0].startswith("| benchmark |") and "BoN@n by oracle" in md[0] and len(md) == 3
    assert md[2] == "| toy | 4 x 4 | 0.250 | 1.000 | 1.000 | " + md[2].split(" | ")[5] + " | 1.000 | 12 | 0.00 |"
    pool.df.loc[0, "score__oracle"] = np.nan
    r = pool_status(pool, orders, reps=200)
    assert r["incomplete"] == ["oracle"] and "best-of-n__oracle" not in r
    assert "| – |" in pool_status_markdown([r], "oracle")
