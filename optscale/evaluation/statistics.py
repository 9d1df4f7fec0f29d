"""Statistics over questions: bootstrap intervals (:func:`interval_estimates`, the one CI entry
point), paired tests with equivalence margins, and the question splits (calibration split,
cross-fitting folds) that keep tuning and reporting on different questions.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["interval_estimates", "paired_test", "split_questions", "crossfit_folds"]


def _per_question(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v.mean(0) if v.ndim == 2 else v


def interval_estimates(values_by_method: Mapping[str, Any], rng: np.random.Generator | int, reps: int = 2000,
                       level: float = 0.95, stat: Callable[..., float] | None = None,
                       stratified: bool = False) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Point estimates and percentile bootstrap CIs, resampling questions (the same resampled
    questions for every method, so intervals of different methods are paired).

    ``values_by_method``: name -> array of shape (questions,) or (orders, questions), or a tuple
    of such arrays (for a statistic of several paired arrays, e.g. a ratio of means).
    ``stat``: maps the per-question array(s) to a number (default: the mean). ``stratified``:
    also resample orders within each question (rliable's within-task resampling). ``rng`` is
    required (a Generator or a seed). Returns ``(points, intervals)`` dicts keyed by method."""
    rng = np.random.default_rng(rng)
    default_stat = stat is None
    stat = stat or (lambda x: float(np.mean(x)))
    as_tuple = {k: (v if isinstance(v, tuple) else (v,)) for k, v in values_by_method.items()}
    Qs = {np.asarray(a).shape[-1] for v in as_tuple.values() for a in v}
    if len(Qs) != 1:
        raise ValueError(f"all arrays must cover the same questions; got lengths {sorted(Qs)}")
    Q = Qs.pop()
    if Q == 0:
        nan = float("nan")
        return {k: nan for k in as_tuple}, {k: (nan, nan) for k in as_tuple}
    qidx = rng.integers(0, Q, size=(reps, Q))
    alpha = (1 - level) / 2
    points, intervals = {}, {}
    for k, arrays in as_tuple.items():
        arrays = [np.asarray(a, dtype=float) for a in arrays]
        points[k] = float(stat(*[_per_question(a) for a in arrays]))
        if default_stat and not stratified:
            boots = _per_question(arrays[0])[qidx].mean(1)
            lo, hi = np.nanquantile(boots, [alpha, 1 - alpha])
            intervals[k] = (float(lo), float(hi))
            continue
        boots = np.empty(reps)
        for r in range(reps):
            res = []
            for a in arrays:
                if stratified and a.ndim == 2:
                    oidx = rng.integers(0, a.shape[0], size=(a.shape[0], Q))
                    a = np.take_along_axis(a, oidx, 0)
                res.append(_per_question(a)[qidx[r]])
            boots[r] = stat(*res)
        lo, hi = np.nanquantile(boots, [alpha, 1 - alpha])
        intervals[k] = (float(lo), float(hi))
    return points, intervals


def paired_test(a: np.ndarray, b: np.ndarray, rng: np.random.Generator | int, reps: int = 2000,
                level: float = 0.95, margin: float = 0.02, ni_margin: float = 0.02,
                ni_level: float = 0.95) -> dict[str, float | bool]:
    """Paired comparison of two policies on the same questions: mean of ``a - b`` (per-question
    values; (orders, questions) arrays are averaged over orders first), a paired bootstrap CI, a
    two-sided sign-flip permutation p-value for "no difference", ``equivalent``: the CI lies
    inside ``[-margin, margin]`` (an equivalence test at level ``(1 + level) / 2`` per side), and
    non-inferiority of ``a`` to ``b``: ``ni_lower`` is the one-sided ``ni_level`` lower bound of
    the difference (the ``1 - ni_level`` quantile of the same paired bootstrap) and
    ``non_inferior`` says ``ni_lower > -ni_margin``."""
    rng = np.random.default_rng(rng)
    d = _per_question(a) - _per_question(b)
    if d.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "p_value": float("nan"),
                "equivalent": False, "ni_lower": float("nan"), "non_inferior": False, "n_questions": 0}
    obs = d.mean()
    boots = d[rng.integers(0, d.size, size=(reps, d.size))].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    ni_lower = float(np.quantile(boots, 1 - ni_level))
    signs = rng.choice([-1.0, 1.0], size=(reps, d.size))
    perm = (signs * d).mean(1)
    p = (1 + np.sum(np.abs(perm) >= abs(obs) - 1e-12)) / (reps + 1)
    return {"diff": float(obs), "lo": float(lo), "hi": float(hi), "p_value": float(p),
            "equivalent": bool(lo >= -margin and hi <= margin), "ni_lower": ni_lower,
            "non_inferior": bool(ni_lower > -ni_margin), "n_questions": int(d.size)}


def split_questions(question_ids: Sequence[str], calibration_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration indices, test indices). A question goes to calibration when a stable hash of
    ``(seed, question id)`` falls below ``calibration_fraction``; the split of a question never
    changes as the pool grows."""
    from ..sampling.base import derive_seed

    u = np.array([derive_seed("calibration-split", seed, q) / 2**31 for q in question_ids])
    calib = np.flatnonzero(u < calibration_fraction)
    test = np.flatnonzero(u >= calibration_fraction)
    return calib, test


def crossfit_folds(question_ids: Sequence[str], seed: int, folds: int = 2) -> list[np.ndarray]:
    """Question indices of each cross-fitting fold: the questions ranked by a stable hash of
    ``(seed, question id)`` (ties by id) and dealt out in turn, so fold sizes differ by at most
    one and every question is in exactly one fold."""
    from ..sampling.base import derive_seed

    ids = [str(q) for q in question_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({q for q in ids if ids.count(q) > 1})[:5]
        raise ValueError(f"crossfit_folds: duplicate question ids {dup}")
    if folds < 2:
        raise ValueError(f"crossfit_folds: folds must be >= 2, got {folds}")
    h = np.array([derive_seed("crossfit-split", seed, q) for q in ids], dtype=np.int64)
    rank = np.lexsort((np.array(ids, dtype=str), h)) if ids else np.zeros(0, dtype=int)
    fold = np.empty(len(ids), dtype=int)
    fold[rank] = np.arange(len(ids)) % folds
    return [np.flatnonzero(fold == k) for k in range(folds)]
