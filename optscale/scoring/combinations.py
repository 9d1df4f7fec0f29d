"""A calibrated combination of per-sample verifier features (logistic regression).

Every feature depends on the question and one sample only (OptScale assumes a question's sample
scores are i.i.d.): the generator's self-certainty and DeepConf confidences, the judges' scores
(as log-odds), the token count (log), whether the sample states an answer. :func:`fit_combination`
fits ``StandardScaler + LogisticRegression`` (scikit-learn) on study pools and reports
out-of-fold predictions from a K-fold split *by question* (no question's samples on both sides),
so the study's AUROC of the combination is an honest held-out figure. The fitted model is saved
as JSON (feature list, scaler, coefficients) and applied to other pools with
:func:`add_combined_score`, which writes a ``score__combined`` column (P(correct) in [0, 1]).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.pools import Pool

__all__ = ["FEATURES", "feature_matrix", "fit_combination", "combined_scores", "add_combined_score"]

# name -> (pool column or derived, transform)
FEATURES = ("self-certainty", "lowest-group-confidence", "tail-confidence", "answer-judge", "lm-judge",
            "log-tokens", "has-answer")
_LOGIT = {"self-certainty", "lowest-group-confidence", "tail-confidence", "answer-judge", "lm-judge"}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def feature_matrix(pool: Pool, features: Sequence[str]) -> np.ndarray:
    """(samples, features) in the pool's row order; scores as log-odds."""
    df = pool.df
    cols = []
    for f in features:
        if f == "log-tokens":
            cols.append(np.log1p(df["n_tokens"].to_numpy(float)))
        elif f == "has-answer":
            cols.append(df["answer"].notna().to_numpy(float))
        elif f in _LOGIT:
            col = f"score__{f}"
            if col not in df:
                raise KeyError(f"{pool.path}: no {col} column (score the pool with `{f}` first)")
            if df[col].isna().any():
                raise ValueError(f"{pool.path}: {col} has {int(df[col].isna().sum())} unscored samples")
            cols.append(_logit(df[col].to_numpy(float)))
        else:
            raise KeyError(f"unknown feature {f!r}; known: {FEATURES}")
    return np.column_stack(cols)


def fit_combination(pools: Sequence[Pool], features: Sequence[str], folds: int = 5, seed: int = 0,
                    C: float = 1.0) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Out-of-fold P(correct) per pool (folds split by question across all pools) and the model
    fitted on all of them, as a JSON-able dict."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.vstack([feature_matrix(p, features) for p in pools])
    y = np.concatenate([p.df["correct"].to_numpy(bool) for p in pools])
    groups = np.concatenate([(p.dataset + "/" + p.df["question_id"].astype(str)).to_numpy() for p in pools])
    if y.all() or not y.any():
        raise ValueError("fit_combination: the study samples need both correct and wrong ones")
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(uniq, rng.permutation(len(uniq)) % folds))
    oof = np.empty(len(y))
    make = lambda: make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))  # noqa: E731
    for train, test in GroupKFold(n_splits=folds).split(X, y, [fold_of[g] for g in groups]):
        if y[train].all() or not y[train].any():
            oof[test] = y[train].mean()
            continue
        oof[test] = make().fit(X[train], y[train]).predict_proba(X[test])[:, 1]
    model = make().fit(X, y)
    scaler, lr = model[0], model[1]
    fitted = {"features": list(features), "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
              "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0]), "C": C,
              "n_samples": int(len(y)), "n_questions": int(len(uniq)), "folds": folds, "seed": seed}
    out, i = [], 0
    for p in pools:
        out.append(oof[i:i + len(p.df)])
        i += len(p.df)
    return out, fitted


def combined_scores(pool: Pool, model: dict[str, Any]) -> np.ndarray:
    X = feature_matrix(pool, model["features"])
    z = (X - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(model["coef"]) + model["intercept"])))


def add_combined_score(path: str | Path, model_path: str | Path, name: str = "combined",
                       source: str | None = None) -> Path:
    """Write ``score__<name>`` (and one-step ``step_scores__<name>``) into the pool at ``path``;
    its metadata names the model file as ``source`` (default ``model_path``)."""
    from ..data.pools import pool_lock, read_pool, write_score_column

    model = json.loads(Path(model_path).read_text())
    with pool_lock(path, f"combine score__{name}"):  # no other writer between the read and the write
        s = combined_scores(read_pool(path, allow_partial_scores=True), model)
        return write_score_column(path, name, s, {"scorer": name, "model": source or str(model_path), **model})
