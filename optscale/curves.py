"""Fixed-N curves from a pool, averaged over seeded random sample orders, with bootstrap CIs.

Shapes: ``scores``, ``correct``, ``tokens``, ``labels`` are (questions, pool_n); ``orders`` is
(n_orders, questions, pool_n) from :func:`optscale.pools.replay_orders`. Every curve function
returns a tidy DataFrame with one row per N: the accuracy and mean tokens per question averaged
over orders, and a percentile-bootstrap CI over questions (scipy.stats.bootstrap) of the
per-question accuracy.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .grading import answer_classes
from .pools import Pool, subsample

__all__ = [
    "answer_labels",
    "bon_correct",
    "majority_correct",
    "bootstrap_mean_ci",
    "fixed_n_curves",
    "scorer_auroc",
    "pool_summary",
]


def answer_labels(pool: Pool, n: int | None = None) -> np.ndarray:
    """(questions, n) int array of math-verify equivalence classes per question (-1 = no
    answer); computed once per pool and cached on it."""
    key = f"labels@{n or pool.n_per_question}"
    if key not in pool._cache:
        answers = pool.answers(n)
        pool._cache[key] = np.array([answer_classes(list(row)) for row in answers], dtype=int)
    return pool._cache[key]


def bon_correct(scores: np.ndarray, correct: np.ndarray, orders: np.ndarray, n: int) -> np.ndarray:
    """(n_orders, questions) bool: is the highest-scored of the first ``n`` samples correct?
    Ties go to the earlier sample in the order."""
    s = subsample(scores, orders, n)
    c = subsample(correct, orders, n)
    pick = s.argmax(-1)
    return np.take_along_axis(c, pick[..., None], -1)[..., 0]


def majority_correct(labels: np.ndarray, correct: np.ndarray, orders: np.ndarray, n: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """(n_orders, questions) bool: is the (optionally score-weighted) plurality answer among the
    first ``n`` samples correct? Samples without an answer do not vote; ties go to the class
    seen first; a question where nobody answered counts as wrong."""
    lab = subsample(labels, orders, n)
    cor = subsample(correct, orders, n)
    w = np.ones(lab.shape) if weights is None else subsample(weights, orders, n)
    same = lab[..., :, None] == lab[..., None, :]
    valid = lab >= 0
    votes = (same * (w * valid)[..., None, :]).sum(-1) * valid
    pick = votes.argmax(-1)
    got = np.take_along_axis(cor, pick[..., None], -1)[..., 0]
    return got & valid.any(-1)


def bootstrap_mean_ci(per_question: np.ndarray, reps: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a per-question statistic, percentile bootstrap over questions."""
    x = np.asarray(per_question, dtype=float)
    if x.size < 2 or np.all(x == x[0]):
        return float(x.mean()) if x.size else float("nan"), float(x.mean()) if x.size else float("nan"), float(x.mean()) if x.size else float("nan")
    res = stats.bootstrap((x,), np.mean, n_resamples=reps, confidence_level=level, method="percentile",
                          random_state=np.random.default_rng(seed))
    return float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def fixed_n_curves(pool: Pool, scorer: str, orders: np.ndarray, ns: Sequence[int], reps: int = 1000,
                   seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Best-of-N (by ``scorer``), majority vote and score-weighted vote for each N in ``ns``."""
    scores = pool.scores(scorer)
    correct = pool.correct()
    tokens = pool.tokens()
    labels = answer_labels(pool)
    rows = []
    for n in ns:
        tok = subsample(tokens, orders, n).sum(-1).mean(0)  # (questions,)
        for method, got in (
            ("best-of-n", bon_correct(scores, correct, orders, n)),
            ("majority", majority_correct(labels, correct, orders, n)),
            ("weighted-majority", majority_correct(labels, correct, orders, n, weights=scores)),
        ):
            per_q = got.mean(0)
            m, lo, hi = bootstrap_mean_ci(per_q, reps, seed, level)
            rows.append({"dataset": pool.dataset, "scorer": scorer, "method": method, "N": n,
                         "accuracy": m, "ci_low": lo, "ci_high": hi, "mean_tokens": float(tok.mean())})
    return pd.DataFrame(rows)


def scorer_auroc(pool: Pool, scorer: str) -> float:
    """AUROC of a scorer's sample score for separating correct from wrong samples (NaN when
    the scored samples have only one class). Samples not scored yet (NaN) are left out."""
    from sklearn.metrics import roc_auc_score

    score = pool.df[f"score__{scorer}"].to_numpy(float)
    scored = ~np.isnan(score)
    y = pool.df["correct"].to_numpy(bool)[scored]
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, score[scored]))


def pool_summary(pools: dict[str, Pool]) -> pd.DataFrame:
    """One row per pool: size, single-sample accuracy, pass@n (any correct), tokens, truncation,
    answer rate, AUROC of every scorer."""
    rows = []
    for name, pool in pools.items():
        df = pool.df
        row = {
            "dataset": name,
            "questions": pool.n_questions,
            "samples_per_question": pool.n_per_question,
            "single_sample_accuracy": float(df["correct"].mean()),
            f"pass@{pool.n_per_question}": float(pool.correct().any(1).mean()),
            "mean_tokens": float(df["n_tokens"].mean()),
            "truncated_rate": float((df["finish_reason"] == "length").mean()),
            "answer_rate": float(df["answer"].notna().mean()),
        }
        for sc in pool.scorers:
            row[f"auroc_{sc}"] = scorer_auroc(pool, sc)
        rows.append(row)
    return pd.DataFrame(rows)


def pool_status(pool: Pool, orders: np.ndarray, reps: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """One pool at its full size n, as a flat record: the :func:`pool_summary` row plus majority@n
    and, for every fully scored scorer, Best-of-n and weighted majority@n (mean over ``orders``,
    bootstrap CI over questions). Scorers with missing scores are listed in ``incomplete``."""
    n = pool.n_per_question
    row = pool_summary({pool.dataset: pool}).iloc[0].to_dict()
    row["incomplete"] = [sc for sc in pool.scorers if pool.df[f"score__{sc}"].isna().any()]
    complete = [sc for sc in pool.scorers if sc not in row["incomplete"]]
    maj = majority_correct(answer_labels(pool), pool.correct(), orders, n).mean(0)
    row["majority"], row["majority_lo"], row["majority_hi"] = bootstrap_mean_ci(maj, reps, seed, level)
    for sc in complete:
        c = fixed_n_curves(pool, sc, orders, [n], reps=reps, seed=seed, level=level).set_index("method")
        for method in ("best-of-n", "weighted-majority"):
            key = f"{method}__{sc}"
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = c.loc[method, ["accuracy", "ci_low", "ci_high"]]
    return row


def _ci(row: dict, key: str) -> str:
    if key not in row:
        return "–"
    m, lo, hi = row[key], row[f"{key}_lo"], row[f"{key}_hi"]
    return f"{m:.3f}" if lo == hi == m else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def pool_status_markdown(rows: Sequence[dict], scorer: str, judge: str | None = None) -> str:
    """The pool status table of ``data/pools/README.md``: size, single-sample accuracy, pass@n,
    BoN@n by ``scorer``, majority@n (with CIs), AUROC of ``scorer`` (and ``judge``), mean tokens,
    truncation rate."""
    auc_head = f"AUROC {scorer}" + (f" / {judge}" if judge else "")
    lines = [f"| benchmark | questions x samples | single-sample acc. | pass@n | BoN@n by {scorer} | majority@n "
             f"| {auc_head} | mean tokens | truncated |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = int(r["samples_per_question"])
        aucs = [r.get(f"auroc_{s}", float("nan")) for s in (scorer, judge) if s]
        auc = "–" if all(np.isnan(a) for a in aucs) else " / ".join(f"{a:.3f}" for a in aucs)
        lines.append(f"| {r['dataset']} | {int(r['questions'])} x {n} | {r['single_sample_accuracy']:.3f} "
                     f"| {r[f'pass@{n}']:.3f} | {_ci(r, f'best-of-n__{scorer}')} | {_ci(r, 'majority')} | {auc} "
                     f"| {r['mean_tokens']:.0f} | {r['truncated_rate']:.2f} |")
    return "\n".join(lines)
