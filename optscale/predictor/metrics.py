"""Evaluating a predictor: seeded train/test splits (grouped by question), MAE and Spearman with
bootstrap CIs, and the coverage of its uncertainty intervals on held-out data.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data.benchmarks import Problem
from .heads import _texts_metas

__all__ = ["split_indices", "question_groups", "evaluate_predictions", "interval_coverage"]


# -- splits and evaluation --------------------------------------------------------------------
def split_indices(n: int, test_fraction: float, seed: int,
                  groups: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, test) index arrays covering ``range(n)``, each sorted.

    ``groups`` (length ``n``, e.g. question-text hashes): rows of one group go to the same side,
    so a question repeated in the data cannot sit in both train and test.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    if groups is None:
        perm = np.random.default_rng(seed).permutation(n)
        n_test = int(round(test_fraction * n))
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for n={n}")
    _, gid = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(gid.max() + 1)
    test_groups, count = set(), 0
    sizes = np.bincount(gid)
    for g in order:
        if count >= test_fraction * n:
            break
        test_groups.add(int(g))
        count += sizes[g]
    is_test = np.isin(gid, list(test_groups))
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def question_groups(items: Sequence[Problem | str]) -> list[str]:
    """Grouping key for :func:`split_indices`: the whitespace-normalised question text."""
    texts, _ = _texts_metas(items)
    return [" ".join(t.split()).lower() for t in texts]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def evaluate_predictions(pred: np.ndarray, true: np.ndarray, reps: int = 1000, seed: int = 0,
                         ci: float = 0.95, names: Sequence[str] = ("mu", "sigma")) -> pd.DataFrame:
    """MAE and Spearman per column with percentile bootstrap CIs (questions resampled).

    ``pred``, ``true``: ``(n, k)``. A constant column has Spearman NaN. Returns one row per
    column: ``target, mae, mae_lo, mae_hi, spearman, spearman_lo, spearman_hi, n``.
    """
    from scipy.stats import rankdata

    pred, true = np.atleast_2d(np.asarray(pred, float)), np.atleast_2d(np.asarray(true, float))
    if pred.shape != true.shape:
        raise ValueError(f"pred {pred.shape} and true {true.shape} differ")
    rng = np.random.default_rng(seed)
    n = len(true)
    idx = rng.integers(0, n, size=(reps, n))
    alpha = (1 - ci) / 2
    rows = []
    for j, name in enumerate(names[: pred.shape[1]]):
        p, t = pred[:, j], true[:, j]
        err = np.abs(p - t)
        maes = err[idx].mean(axis=1)
        if np.ptp(p) == 0:
            rhos = np.full(reps, np.nan)
        else:
            rp, rt = rankdata(p[idx], axis=1), rankdata(t[idx], axis=1)
            rp -= rp.mean(axis=1, keepdims=True)
            rt -= rt.mean(axis=1, keepdims=True)
            rhos = (rp * rt).sum(1) / np.sqrt((rp ** 2).sum(1) * (rt ** 2).sum(1))
        rows.append({
            "target": name, "mae": err.mean(), "mae_lo": np.quantile(maes, alpha), "mae_hi": np.quantile(maes, 1 - alpha),
            "spearman": _spearman(p, t),
            "spearman_lo": np.nanquantile(rhos, alpha) if np.isfinite(rhos).any() else np.nan,
            "spearman_hi": np.nanquantile(rhos, 1 - alpha) if np.isfinite(rhos).any() else np.nan,
            "n": n,
        })
    return pd.DataFrame(rows)


def interval_coverage(pred: np.ndarray, unc: np.ndarray, true: np.ndarray, level: float = 0.9) -> np.ndarray:
    """Fraction of ``true`` inside ``pred +- z * unc`` per column (``(n, k)`` arrays -> ``(k,)``)."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + level / 2)
    return (np.abs(np.asarray(true) - np.asarray(pred)) <= z * np.asarray(unc)).mean(axis=0)
