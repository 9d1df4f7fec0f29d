"""Fixed-N curves from a pool, averaged over seeded random sample orders, with bootstrap CIs.

Shapes: ``scores``, ``correct``, ``tokens``, ``labels`` are (questions, pool_n); ``orders`` is
(n_orders, questions, pool_n) from :func:`optscale.data.pools.replay_orders`. Every curve function
returns a tidy DataFrame with one row per N: the accuracy and mean tokens per question averaged
over orders, and a percentile-bootstrap CI over questions (scipy.stats.bootstrap) of the
per-question accuracy.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..data.grading import answer_classes
from ..data.pools import Pool, subsample

__all__ = [
    "answer_labels",
    "bon_correct",
    "majority_correct",
    "bootstrap_mean_ci",
    "fixed_n_curves",
    "auroc",
    "within_question_auroc",
    "auroc_summary",
    "scorer_auroc",
    "pool_summary",
    "pool_status",
    "pool_status_markdown",
    "TOKENS_SCORER",
]

# Name of the token-count baseline in AUROC tables: the score is minus the sample's token count,
# so a shorter sample is predicted correct (the baseline any verifier must beat).
TOKENS_SCORER = "fewer-tokens"


def answer_labels(pool: Pool, n: int | None = None) -> np.ndarray:
    """(questions, n) int array of math-verify equivalence classes per question (-1 = no
    answer); computed once per pool and cached on it."""
    key = f"labels@{n or pool.n_per_question}"
    if key not in pool._cache:
        answers = pool.answers(n)
        pool._cache[key] = np.array([answer_classes(list(row)) for row in answers], dtype=int)
    return pool._cache[key]


def bon_correct(scores: np.ndarray, correct: np.ndarray, orders: np.ndarray, n: int,
                answered: np.ndarray | None = None) -> np.ndarray:
    """(n_orders, questions) bool: is the highest-scored of the first ``n`` samples correct?
    Ties go to the earlier sample in the order. With ``answered`` ((questions, pool_n) bool), a
    sample without an answer never wins unless no sample has one (the rule of
    :func:`optscale.evaluation.replay.bon_curve`, so that both report the same Best-of-N)."""
    if answered is not None:
        scores = np.where(answered, scores, np.asarray(scores, dtype=float) - 10.0)  # scores live in [0, 1]
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
    """Best-of-N (by ``scorer``; a sample without an answer never wins unless none has one),
    majority vote and score-weighted vote for each N in ``ns``."""
    scores = pool.scores(scorer)
    correct = pool.correct()
    tokens = pool.tokens()
    labels = answer_labels(pool)
    rows = []
    for n in ns:
        tok = subsample(tokens, orders, n).sum(-1).mean(0)  # (questions,)
        for method, got in (
            ("best-of-n", bon_correct(scores, correct, orders, n, answered=labels >= 0)),
            ("majority", majority_correct(labels, correct, orders, n)),
            ("weighted-majority", majority_correct(labels, correct, orders, n, weights=scores)),
        ):
            per_q = got.mean(0)
            m, lo, hi = bootstrap_mean_ci(per_q, reps, seed, level)
            rows.append({"dataset": pool.dataset, "scorer": scorer, "method": method, "N": n,
                         "accuracy": m, "ci_low": lo, "ci_high": hi, "mean_tokens": float(tok.mean())})
    return pd.DataFrame(rows)


def auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of ``scores`` for telling correct samples (positives) from wrong ones: the chance
    that a random correct sample scores above a random wrong one, ties counting one half
    (:func:`sklearn.metrics.roc_auc_score`). Any shape (flattened); samples with a NaN score are
    left out; NaN when the rest lack a correct or a wrong sample."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(correct, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.size} scores but {y.size} labels")
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def within_question_auroc(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(questions,) AUROC of each question's own samples (rows of (questions, n) arrays): how
    well the score ranks one question's samples, which is what Best-of-N selection depends on.
    NaN for a question without both a correct and a wrong (scored) sample."""
    scores, correct = np.asarray(scores, dtype=float), np.asarray(correct, dtype=bool)
    if scores.shape != correct.shape or scores.ndim != 2:
        raise ValueError(f"within_question_auroc: scores {scores.shape} and correct {correct.shape} must be "
                         "the same (questions, n) shape")
    return np.array([auroc(s, c) for s, c in zip(scores, correct)], dtype=float)


def auroc_summary(scores: np.ndarray, correct: np.ndarray, reps: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict[str, float]:
    """AUROC of (questions, n) ``scores`` pooled over all samples, and within questions: the
    mean of :func:`within_question_auroc` over the questions that have both a correct and a wrong
    sample, with a percentile bootstrap CI over those questions, and how many there are."""
    per_q = within_question_auroc(scores, correct)
    valid = per_q[~np.isnan(per_q)]
    m, lo, hi = bootstrap_mean_ci(valid, reps, seed, level)
    return {"pooled": auroc(scores, correct), "within": m, "within_lo": lo, "within_hi": hi,
            "within_questions": int(valid.size)}


def scorer_auroc(pool: Pool, scorer: str) -> float:
    """Pooled :func:`auroc` of a scorer's sample score over every sample of the pool (NaN when
    the scored samples have only one class). Samples not scored yet (NaN) are left out;
    ``scorer=TOKENS_SCORER`` scores each sample by minus its token count."""
    if scorer == TOKENS_SCORER:
        return auroc(-pool.df["n_tokens"].to_numpy(float), pool.df["correct"].to_numpy(bool))
    return auroc(pool.df[f"score__{scorer}"].to_numpy(float), pool.df["correct"].to_numpy(bool))


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
        for sc in pool.scorers + [TOKENS_SCORER]:
            row[f"auroc_{sc}"] = scorer_auroc(pool, sc)
        rows.append(row)
    return pd.DataFrame(rows)


def pool_status(pool: Pool, orders: np.ndarray, reps: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """One pool at its full size n, as a flat record: the :func:`pool_summary` row (accuracy,
    truncation, pooled AUROC of every scorer and of the token count) plus majority@n; for every
    scorer and for the token-count baseline (``TOKENS_SCORER``: shorter = predicted correct) the
    within-question AUROC (``auroc_within_<s>`` with a bootstrap CI over questions,
    ``auroc_within_questions_<s>`` questions with both a correct and a wrong sample); and for
    every fully scored scorer Best-of-n, weighted majority@n and ``bon_gain__<s>`` = Best-of-n
    minus single-sample accuracy (mean over ``orders``, bootstrap CI over questions). Scorers with
    missing scores are listed in ``incomplete``."""
    n = pool.n_per_question
    row = pool_summary({pool.dataset: pool}).iloc[0].to_dict()
    row["scorers"] = list(pool.scorers)
    row["incomplete"] = [sc for sc in pool.scorers if pool.df[f"score__{sc}"].isna().any()]
    complete = [sc for sc in pool.scorers if sc not in row["incomplete"]]
    correct = pool.correct()
    maj = majority_correct(answer_labels(pool), correct, orders, n).mean(0)
    row["majority"], row["majority_lo"], row["majority_hi"] = bootstrap_mean_ci(maj, reps, seed, level)
    for sc in pool.scorers + [TOKENS_SCORER]:
        scores = -pool.tokens() if sc == TOKENS_SCORER else pool.scores(sc)
        a = auroc_summary(scores, correct, reps, seed, level)
        key = f"auroc_within_{sc}"
        row[key], row[f"{key}_lo"], row[f"{key}_hi"] = a["within"], a["within_lo"], a["within_hi"]
        row[f"auroc_within_questions_{sc}"] = a["within_questions"]
    single = correct.mean(1)
    for sc in complete:
        c = fixed_n_curves(pool, sc, orders, [n], reps=reps, seed=seed, level=level).set_index("method")
        for method in ("best-of-n", "weighted-majority"):
            key = f"{method}__{sc}"
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = c.loc[method, ["accuracy", "ci_low", "ci_high"]]
        gain = bon_correct(pool.scores(sc), correct, orders, n, answered=answer_labels(pool) >= 0).mean(0) - single
        key = f"bon_gain__{sc}"
        row[key], row[f"{key}_lo"], row[f"{key}_hi"] = bootstrap_mean_ci(gain, reps, seed, level)
    return row


def _ci(row: dict, key: str, fmt: str = ".3f") -> str:
    if key not in row or row[key] is None or np.isnan(row[key]):
        return "–"
    m, lo, hi = row[key], row[f"{key}_lo"], row[f"{key}_hi"]
    return f"{m:{fmt}}" if lo == hi == m else f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _num(x: float, fmt: str = ".3f") -> str:
    return "–" if x is None or np.isnan(x) else f"{x:{fmt}}"


def pool_status_markdown(rows: Sequence[dict]) -> str:
    """The pool status table of ``data/pools/README.md``: one line per (pool, scorer), every
    scorer of each pool. Pool columns (on its first line): size, single-sample accuracy,
    pass@n, majority@n, truncation rate, mean tokens, and the token-count baseline's AUROC
    pooled / within questions; scorer columns: BoN@n, BoN@n minus single-sample accuracy (95%
    bootstrap CI over questions), AUROC pooled and within questions (with CI and the number of
    questions that have both a correct and a wrong sample)."""
    head = ("| benchmark | questions x samples | single-sample acc. | pass@n | majority@n | truncated | mean tokens "
            "| AUROC fewer tokens: pooled / within | scorer | BoN@n | BoN@n − single | AUROC pooled "
            "| AUROC within questions (questions) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    t = TOKENS_SCORER
    for r in rows:
        n = int(r["samples_per_question"])
        pool_cells = (f"{r['dataset']} | {int(r['questions'])} x {n} | {r['single_sample_accuracy']:.3f} "
                      f"| {r[f'pass@{n}']:.3f} | {_ci(r, 'majority')} | {r['truncated_rate']:.2f} "
                      f"| {r['mean_tokens']:.0f} | {_num(r.get(f'auroc_{t}', float('nan')))} / "
                      f"{_num(r.get(f'auroc_within_{t}', float('nan')))} ({r.get(f'auroc_within_questions_{t}', 0)})")
        scorers = list(r.get("scorers") or [])
        for i, sc in enumerate(scorers or [None]):
            cells = pool_cells if i == 0 else " | ".join([""] * 8).strip()
            if sc is None:
                lines.append(f"| {cells} | – | – | – | – | – |")
                continue
            within = _ci(r, f"auroc_within_{sc}")
            lines.append(f"| {cells} | {sc}{' (incomplete)' if sc in r.get('incomplete', []) else ''} "
                         f"| {_ci(r, f'best-of-n__{sc}')} | {_ci(r, f'bon_gain__{sc}')} "
                         f"| {_num(r.get(f'auroc_{sc}', float('nan')))} "
                         f"| {within} ({r.get(f'auroc_within_questions_{sc}', 0)}) |")
    return "\n".join(lines)
