"""Transfer to a new scorer: the pool's per-question score moments, and :class:`ScaleCalibrator`, which
maps predicted priors onto the new scorer's scale from a few labeled questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .heads import TARGETS
from .metrics import evaluate_predictions
from .prior import PriorPrediction, _make_prediction

__all__ = ["pool_targets", "transfer_evaluate", "ScaleCalibrator", "pool_moments"]


# -- transfer to a new scorer -----------------------------------------------------------------
def pool_moments(scores: np.ndarray) -> np.ndarray:
    """Per-question sample [mean, std] (ddof=0, like the labels) of a ``(questions, n)`` score
    array, ignoring NaN; rows with fewer than 2 finite scores are NaN."""
    s = np.asarray(scores, dtype=float)
    cnt = np.isfinite(s).sum(axis=1)
    with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
        sup.filter(RuntimeWarning)
        m, sd = np.nanmean(s, axis=1), np.nanstd(s, axis=1)
    bad = cnt < 2
    m[bad], sd[bad] = np.nan, np.nan
    return np.column_stack([m, sd])


@dataclass
class ScaleCalibrator:
    """Map predicted [mean, std] (MATH-PRM scale) onto a new scorer's scale.

    Fit on a few labeled questions of the target pool: per target, a least-squares line
    ``new = a + b * predicted`` with the slope shrunk towards 0 (``shrink`` pseudo-questions at
    slope 0) and clipped at ``b >= 0`` -- with few or uninformative questions it falls back to the
    target pool's constant. The uncertainty is the leave-one-out RMSE of that map.
    """

    shrink: float = 2.0

    def fit(self, pred_moments: np.ndarray, true_moments: np.ndarray) -> "ScaleCalibrator":
        P, T = np.asarray(pred_moments, float), np.asarray(true_moments, float)
        ok = np.isfinite(T).all(axis=1) & np.isfinite(P).all(axis=1)
        P, T = P[ok], T[ok]
        if len(T) < 2:
            raise ValueError(f"ScaleCalibrator needs >= 2 labeled questions, got {len(T)}")
        self.coef_ = np.array([self._line(P[:, j], T[:, j]) for j in range(2)])  # (2, 2): a, b
        loo = np.empty_like(T)
        for i in range(len(T)):
            keep = np.arange(len(T)) != i
            for j in range(2):
                a, b = self._line(P[keep, j], T[keep, j])
                loo[i, j] = a + b * P[i, j]
        self.unc_ = np.sqrt(np.mean((loo - T) ** 2, axis=0))
        self.n_ = int(len(T))
        return self

    def _line(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        xm, ym = x.mean(), y.mean()
        sxx = ((x - xm) ** 2).sum()
        b = ((x - xm) * (y - ym)).sum() / (sxx + self.shrink * max(x.var(), 1e-6))
        b = max(b, 0.0)
        return float(ym - b * xm), float(b)

    def transform(self, pred_moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(moments, uncertainty) on the new scale, both ``(n, 2)``."""
        P = np.asarray(pred_moments, float)
        out = self.coef_[:, 0] + self.coef_[:, 1] * P
        out[:, 0] = np.clip(out[:, 0], 1e-3, 1 - 1e-3)
        out[:, 1] = np.clip(out[:, 1], 1e-3, 0.5)
        return out, np.tile(self.unc_, (len(P), 1))

    def predict(self, pred_moments: np.ndarray) -> PriorPrediction:
        return _make_prediction(*self.transform(pred_moments))


def pool_targets(pool: Any, scorer: str) -> tuple[np.ndarray, np.ndarray]:
    """(question_index ``(q,)``, per-question [mean, std] ``(q, 2)``) of one scorer in a pool.

    Rows follow :meth:`optscale.data.pools.Pool.matrix` (questions sorted by ``question_index``).
    """
    col = f"score__{scorer}"
    if col not in pool.df.columns:
        raise KeyError(f"pool {pool.path}: no column {col!r}; scorers: {pool.scorers}")
    n = pool.n_per_question
    qidx = np.sort(pool.df.loc[pool.df["sample_index"] < n, "question_index"].unique())
    return qidx.astype(int), pool_moments(pool.scores(scorer))


def transfer_evaluate(pred_moments: np.ndarray, true_moments: np.ndarray, n_labeled: int, seed: int,
                      reps: int = 200, eligible: np.ndarray | None = None) -> tuple[pd.DataFrame, ScaleCalibrator | None]:
    """Fit :class:`ScaleCalibrator` on ``n_labeled`` seeded questions, evaluate on the rest.

    ``eligible``: boolean mask or indices of the questions that may be labeled (e.g. the
    evaluation's calibration split, so that a prior used on the test split never saw a test
    question's scores); ``None``: any question. Returns a table (rows: ``raw`` prediction,
    ``calibrated`` prediction, ``constant`` = labeled questions' mean; columns from
    :func:`evaluate_predictions`) and the calibrator. With fewer than 2 eligible labeled
    questions or fewer than 3 left to evaluate on, the table is empty and the calibrator None.
    """
    P, T = np.asarray(pred_moments, float), np.asarray(true_moments, float)
    ok = np.flatnonzero(np.isfinite(T).all(axis=1))
    if eligible is None:
        can_label = ok
    else:
        e = np.asarray(eligible)
        e = np.flatnonzero(e) if e.dtype == bool else e.astype(int)
        can_label = np.intersect1d(ok, e)
    perm = np.random.default_rng(seed).permutation(can_label)
    lab = np.sort(perm[:n_labeled])
    rest = np.setdiff1d(ok, lab)
    if len(lab) < 2 or len(rest) < 3:  # len(lab) <= n_labeled, so this also covers n_labeled < 2
        return pd.DataFrame(), None
    cal = ScaleCalibrator().fit(P[lab], T[lab])
    rows = []
    for name, pred in (("raw", P[rest]), ("calibrated", cal.transform(P[rest])[0]),
                       ("constant", np.tile(T[lab].mean(axis=0), (len(rest), 1)))):
        ev = evaluate_predictions(pred, T[rest], reps=reps, seed=seed, names=TARGETS)
        ev.insert(0, "predictor", name)
        rows.append(ev)
    return pd.concat(rows, ignore_index=True), cal
