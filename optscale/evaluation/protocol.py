"""Replay stopping policies on a pool, tune them on questions they are not reported on, and report with CIs.

Pipeline (notebook 05)::

    data = pool_arrays(pool, scorer, max_N=16, cache_dir=run / "cache")   # answer classes cached
    ev = evaluate_config(data, cfg)   # cross-fitted by default (evaluation.protocol)
    ev.summary      # one row per policy: accuracy, mean tokens, mean N, each with a bootstrap CI
    ev.logs         # per-question logs: chosen N, selected answer, correct, tokens
    ev.savings      # tokens saved vs BoN@max_N, paired accuracy difference, non-inferiority

Statistics:

- Replay averages over many seeded random sample orders per question
  (:func:`optscale.pools.replay_orders`).
- :func:`interval_estimates` is the one CI entry point (as in rliable): per-question values
  (averaged over orders) are resampled over questions with a required seed; with
  ``stratified=True`` the orders are also resampled within each question.
- :func:`paired_test` compares two policies on the same questions (paired bootstrap CI of the
  mean difference, sign-flip permutation p-value, equivalence within a margin).
- Hyper-parameters are never tuned on the questions they are reported on. Default
  (``protocol="crossfit"``): two-fold cross-fitting (:func:`crossfit_folds`): tuned on half A,
  reported on half B, then swapped, so every question is reported exactly once and the CIs,
  paired tests and non-inferiority to BoN@max_N pool both folds. ``protocol="calibrated"``:
  one calibration split (:func:`split_questions`, a stable hash of the question id, so the
  split does not move as a pool grows), reported on the rest. ``protocol="test-tuned"`` tunes
  on the reported questions themselves, only to compare with the paper's protocol.
- A split with fewer than :data:`MIN_SPLIT_QUESTIONS` questions is warned about in the notes
  and the summary table; questions :func:`pool_arrays` drops (missing samples, NaN scores) are
  listed by id in the notes.
- :func:`verifier_auroc_points`: OptScale's tokens saved and accuracy gap against BoN, per
  (pool set, benchmark, scorer), beside the scorer's within-question AUROC (notebook 06).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .grading import GRADING_RULE_VERSION, answer_classes, default_grader
from .policies import POLICIES, Policy, QuestionContext, Sample, group_confidences, make_policy
from .pools import Pool, replay_orders

__all__ = [
    "PoolArrays",
    "ReplayResult",
    "Evaluation",
    "pool_arrays",
    "answer_class_matrix",
    "replay",
    "warm_fit_cache",
    "bon_curve",
    "oracle_curve",
    "interval_estimates",
    "paired_test",
    "split_questions",
    "tune",
    "evaluate",
    "savings_table",
    "paper_comparison",
    "load_reported_table",
    "load_pool_arrays",
    "evaluate_config",
    "curve_table",
    "run_evaluation",
    "load_prior_table",
    "crossfit_folds",
    "split_warnings",
    "auroc_pool_sets",
    "verifier_auroc_points",
    "verifier_auroc_caption",
    "verdict_table",
    "PROTOCOLS",
    "MIN_SPLIT_QUESTIONS",
]


# ---------------------------------------------------------------------------------------------
# Pool arrays
# ---------------------------------------------------------------------------------------------
@dataclass
class PoolArrays:
    """Everything a replay needs, as (questions x n) arrays.

    ``scores`` float, ``correct`` bool, ``tokens`` float, ``classes`` int (answer equivalence
    class, -1 = no answer), ``answers`` object; ``group_conf`` object array of 1-D DeepConf group
    confidences or None; ``prior`` (questions x 2 or 3) float (mu, sigma[, uncertainty]) or None;
    ``description`` names the pool (generator, scorer, n, seed) for captions."""

    dataset: str
    question_ids: np.ndarray
    scores: np.ndarray
    correct: np.ndarray
    tokens: np.ndarray
    classes: np.ndarray
    answers: np.ndarray
    group_conf: np.ndarray | None = None
    prior: np.ndarray | None = None
    prior_source: str = "none"
    conf_window: int = 32
    description: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_questions(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n(self) -> int:
        return int(self.scores.shape[1])

    def subset(self, idx: Sequence[int] | np.ndarray) -> "PoolArrays":
        idx = np.asarray(idx, dtype=int)
        take = lambda a: None if a is None else a[idx]  # noqa: E731
        # a copy of meta without what was fitted on the full set (the population prior of one
        # split must never be served to another)
        meta = {k: v for k, v in self.meta.items() if k != "population_prior"}
        return replace(self, question_ids=self.question_ids[idx], scores=self.scores[idx],
                       correct=self.correct[idx], tokens=self.tokens[idx], classes=self.classes[idx],
                       answers=self.answers[idx], group_conf=take(self.group_conf), prior=take(self.prior),
                       meta=meta)

    def with_prior(self, prior: np.ndarray | None, source: str) -> "PoolArrays":
        if prior is not None:
            prior = np.asarray(prior, dtype=float)
            if prior.ndim != 2 or prior.shape[0] != self.n_questions or prior.shape[1] < 2:
                raise ValueError(f"prior must be (questions={self.n_questions}, 2 or 3), got {prior.shape}")
        return replace(self, prior=prior, prior_source=source if prior is not None else "none")

    def prior_mu(self) -> np.ndarray | None:
        return None if self.prior is None else self.prior[:, 0]

    def population_prior(self) -> tuple[float, float]:
        """(mu, sigma): medians of per-question truncated-normal MLE fits to all scores of these
        questions (call it on the calibration split only)."""
        from .fits import fit_truncnorm

        key = "population_prior"
        if key not in self.meta:
            if self.n_questions == 0:
                raise ValueError(f"{self.dataset}: no questions to fit a population prior on")
            fit = fit_truncnorm(self.scores, mask=np.isfinite(self.scores))
            mu, sigma = float(np.median(fit.mu)), float(np.median(fit.sigma))
            self.meta[key] = (mu, sigma)
        return self.meta[key]

    def samples(self, q: int) -> list[Sample]:
        gc = self.group_conf
        return [
            Sample(index=i, score=float(self.scores[q, i]), answer_class=int(self.classes[q, i]),
                   tokens=float(self.tokens[q, i]), correct=bool(self.correct[q, i]),
                   group_conf=gc[q, i] if gc is not None else np.empty(0), conf_window=self.conf_window)
            for i in range(self.n)
        ]


def _answers_key(answers: np.ndarray) -> str:
    h = hashlib.sha256()
    for row in answers:
        h.update(json.dumps([None if a is None else str(a) for a in row]).encode())
    return h.hexdigest()[:20]


def answer_class_matrix(answers: np.ndarray, cache_dir: str | Path | None = None) -> np.ndarray:
    """(questions x n) int labels from :func:`optscale.grading.answer_classes` per question
    (math-verify equivalence; -1 = no answer). Cached on disk under ``cache_dir`` keyed by a hash
    of the answers and the grading rule. Comparisons left unresolved by the grader's CPU budget
    are printed as a note (and logged by :mod:`optscale.grading`)."""
    answers = np.asarray(answers, dtype=object)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"answer_classes_{_answers_key(answers)}_rule{GRADING_RULE_VERSION}.npy"
        if path.is_file():
            labels = np.load(path)
            if labels.shape == answers.shape:
                return labels
    with default_grader().record() as stats:
        labels = np.array([answer_classes([None if (a is None or (isinstance(a, float) and math.isnan(a))) else str(a)
                                           for a in row]) for row in answers], dtype=int).reshape(answers.shape)
    if stats.timeouts:
        print(f"note: {stats.timeouts} answer(s) / comparison(s) exceeded the grading CPU budget; unresolved answers "
              f"form their own class: {stats.as_dict()['unresolved_examples'][:3]}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, labels)
    return labels


def pool_arrays(pool: Pool, scorer: str, max_N: int | None = None, cache_dir: str | Path | None = None,
                conf_window: int = 32, prior: np.ndarray | None = None, prior_source: str = "none",
                verbose: bool = True) -> PoolArrays:
    """Arrays of the first ``max_N`` samples per question (default: the pool's n). Questions
    whose ``scorer`` score is missing (a pool still being scored) are dropped with a note."""
    n = min(max_N or pool.n_per_question, pool.n_per_question)
    full = pool.df.groupby("question_id", sort=False).size()
    keep_ids = set(full.index[full >= n])
    notes = []  # dropped questions, by id; evaluate() copies them into its notes table
    if len(keep_ids) < len(full):
        short = [str(q) for q in full.index if q not in keep_ids]
        notes.append(f"{pool.dataset}: dropped {len(short)} question(s) with fewer than {n} samples: {', '.join(short)}")
        if verbose:
            print(f"note: {notes[-1]}")
    p = pool if len(keep_ids) == len(full) else Pool(pool.df[pool.df["question_id"].isin(keep_ids)].reset_index(drop=True), pool.meta, pool.path)
    if f"score__{scorer}" not in p.df.columns:
        raise KeyError(f"{pool.path}: no column 'score__{scorer}'; scorers in the pool: {p.scorers}")
    scores = p.scores(scorer, n)
    ok = np.isfinite(scores).all(axis=1)
    qids = np.array(list(dict.fromkeys(p.df.sort_values(["question_index", "sample_index"])["question_id"])), dtype=object)
    if not ok.all():
        nan_ids = [str(q) for q in qids[~ok]]
        notes.append(f"{pool.dataset}: dropped {len(nan_ids)} question(s) not (fully) scored by {scorer!r} "
                     f"(NaN scores): {', '.join(nan_ids)}")
        if verbose:
            print(f"note: {notes[-1]}")
    answers = p.answers(n)[ok]
    gc = None
    tc = p.matrix("token_confidence", n)[ok]
    if all(x is not None and len(x) for x in tc.ravel()):
        gc = np.empty(tc.shape, dtype=object)
        for idx in np.ndindex(tc.shape):
            gc[idx] = group_confidences(tc[idx], conf_window)
    g = pool.meta.get("generator", {})
    desc = (f"pool {pool.meta.get('pool_name', '?')}/{pool.dataset}, generator {g.get('model', '?')}, "
            f"scorer {scorer}, n={n}, sampling seed {pool.meta.get('seed', '?')}, {int(ok.sum())} questions")
    data = PoolArrays(
        dataset=pool.dataset, question_ids=qids[ok], scores=scores[ok], correct=p.correct(n)[ok],
        tokens=p.tokens(n)[ok], classes=answer_class_matrix(answers, cache_dir), answers=answers,
        group_conf=gc, conf_window=conf_window, description=desc,
        meta={"pool_name": pool.meta.get("pool_name"), "generator": g, "scorer": scorer, "n": n,
              "seed": pool.meta.get("seed"), "notes": notes},
    )
    return data.with_prior(prior[ok] if prior is not None else None, prior_source)


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    """Per (order, question) outcomes of one policy; every array is (orders, questions)."""

    label: str
    n: np.ndarray
    tokens: np.ndarray
    correct: np.ndarray
    selected: np.ndarray  # pool index of the selected sample, -1 when none

    def per_question(self) -> dict[str, np.ndarray]:
        return {"accuracy": self.correct.mean(0), "tokens": self.tokens.mean(0), "n": self.n.mean(0)}


class _Fit(tuple):
    """(mu, sigma) of one cached batched fit, with the attribute names of FitResult."""

    mu = property(lambda self: self[0])
    sigma = property(lambda self: self[1])


def warm_fit_cache(policy: Policy, data: PoolArrays, orders: np.ndarray, max_N: int, caches: list[dict],
                   chunk: int = 20000) -> int:
    """Fill the per-question fit caches with every fit ``policy`` will ask for during a replay
    (prefixes ``policy.fit_prefixes(max_N)`` of every order), in batched
    :func:`optscale.fits.fit_truncnorm` calls. Returns the number of new fits."""
    from .fits import fit_truncnorm
    from .policies import fit_key

    ns = [n for n in policy.fit_prefixes(max_N) if 1 <= n <= max_N] if hasattr(policy, "fit_prefixes") else []
    if not ns:
        return 0
    strength = float(policy.params.get("prior_strength", 1.0))
    todo: dict[tuple, list] = {}  # prior arity group -> rows
    for q in range(data.n_questions):
        qprior = policy.prior_for(tuple(data.prior[q]) if data.prior is not None else None)
        seen = set()
        for o in range(orders.shape[0]):
            for n in ns:
                idx = orders[o, q, :n]
                key = fit_key(qprior, strength, idx)
                if key in caches[q] or key in seen:
                    continue
                seen.add(key)
                group = None if qprior is None else len(qprior)
                todo.setdefault(group, []).append((q, key, idx, qprior))
    total = 0
    for group, rows in todo.items():
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            X = np.zeros((len(part), max_N))
            M = np.zeros((len(part), max_N), dtype=bool)
            for r, (q, _, idx, _) in enumerate(part):
                X[r, :len(idx)] = data.scores[q, idx]
                M[r, :len(idx)] = True
            prior = None if group is None else tuple(np.array([p[3][j] for p in part]) for j in range(group))
            fit = fit_truncnorm(X, prior=prior, prior_strength=strength, mask=M) if prior is not None \
                else fit_truncnorm(X, mask=M)
            for r, (q, key, _, _) in enumerate(part):
                caches[q][key] = _Fit((float(fit.mu[r]), float(fit.sigma[r])))
            total += len(part)
    # N* for this policy's (target, delta) of every prefix, in one vectorized bound call
    if hasattr(policy, "target") and hasattr(policy, "delta"):
        from .bounds import n_star

        pending = []  # (question, n_star key, fit key, n)
        for q in range(data.n_questions):
            qprior = policy.prior_for(tuple(data.prior[q]) if data.prior is not None else None)
            seen = set()
            for o in range(orders.shape[0]):
                for n in ns:
                    fk = fit_key(qprior, strength, orders[o, q, :n])
                    nk = ("n_star", fk, policy.target, policy.delta, max_N)
                    if nk not in caches[q] and nk not in seen:
                        seen.add(nk)
                        pending.append((q, nk, fk, n))
        if pending:
            mu = np.array([caches[q][fk].mu for q, _, fk, _ in pending])
            sg = np.array([caches[q][fk].sigma for q, _, fk, _ in pending])
            N, ok = n_star(mu, sg, policy.target, policy.delta, max_N, 1)
            # clip(N, n_min, max_N) == max(clip(N, 1, max_N), n_min) for n_min <= max_N
            N = np.maximum(N, [n for *_, n in pending])
            for (q, nk, _, _), Nj, okj in zip(pending, N, ok):
                caches[q][nk] = (int(Nj), bool(okj))
    return total


def replay(policy: Policy, data: PoolArrays, orders: np.ndarray, max_N: int | None = None,
           caches: list[dict] | None = None) -> ReplayResult:
    """Feed each question's samples in each order until the policy stops (or ``max_N``).

    ``orders``: (n_orders, questions, >= max_N) from :func:`optscale.pools.replay_orders`;
    ``caches``: one dict per question shared between policies (fit caching)."""
    max_N = min(max_N or data.n, data.n)
    O, Q = orders.shape[0], data.n_questions
    if orders.shape[1] != Q:
        raise ValueError(f"orders cover {orders.shape[1]} questions, data has {Q}")
    caches = caches if caches is not None else [dict() for _ in range(Q)]
    warm_fit_cache(policy, data, orders, max_N, caches)
    n_out = np.zeros((O, Q), dtype=int)
    tok = np.zeros((O, Q))
    cor = np.zeros((O, Q), dtype=bool)
    sel = np.full((O, Q), -1, dtype=int)
    for q in range(Q):
        samples = data.samples(q)
        prior = tuple(data.prior[q]) if data.prior is not None else None
        ctx = QuestionContext(max_N=max_N, prior=prior, cache=caches[q], question_id=str(data.question_ids[q]))
        for o in range(O):
            policy.reset(ctx)
            t = 0.0
            for i in orders[o, q, :max_N]:
                s = samples[i]
                stop = policy.observe(s)
                t += policy.charge(s)
                if stop:
                    break
            pos = policy.select()
            n_out[o, q] = len(policy.seen)
            tok[o, q] = t
            if pos is not None:
                idx = policy.seen[pos].index
                sel[o, q] = idx
                cor[o, q] = bool(data.correct[q, idx]) and data.classes[q, idx] >= 0
    return ReplayResult(policy.label(), n_out, tok, cor, sel)


def bon_curve(data: PoolArrays, orders: np.ndarray, max_N: int | None = None) -> dict[str, np.ndarray]:
    """Best-of-N for every N = 1..max_N, vectorized. Returns ``N`` (max_N,), ``correct`` and
    ``tokens`` of shape (max_N, orders, questions). Samples without an answer never win unless
    none has one."""
    max_N = min(max_N or data.n, data.n)
    idx = orders[..., :max_N]
    take = lambda a: np.take_along_axis(np.broadcast_to(a, orders.shape[:1] + a.shape), idx, axis=-1)  # noqa: E731
    score = take(np.where(data.classes >= 0, data.scores, data.scores - 10.0))
    corr = take(data.correct & (data.classes >= 0))
    toks = take(data.tokens)
    run_best = np.maximum.accumulate(score, axis=-1)
    # position of the (first) running argmax for each prefix
    is_new = np.concatenate([np.ones_like(score[..., :1], dtype=bool), score[..., 1:] > run_best[..., :-1]], -1)
    pos = np.maximum.accumulate(np.where(is_new, np.arange(max_N), 0), axis=-1)
    correct = np.take_along_axis(corr, pos, -1)
    tokens = np.cumsum(toks, -1)
    return {"N": np.arange(1, max_N + 1), "correct": np.moveaxis(correct, -1, 0),
            "tokens": np.moveaxis(tokens, -1, 0)}


def oracle_curve(data: PoolArrays, orders: np.ndarray, max_N: int | None = None) -> dict[str, np.ndarray]:
    """Oracle frontier: with budget N, stop at the first correct sample among the first N.
    Returns ``N``, ``correct`` and ``tokens`` of shape (max_N, orders, questions)."""
    max_N = min(max_N or data.n, data.n)
    idx = orders[..., :max_N]
    take = lambda a: np.take_along_axis(np.broadcast_to(a, orders.shape[:1] + a.shape), idx, axis=-1)  # noqa: E731
    corr = take(data.correct & (data.classes >= 0))
    toks = take(data.tokens)
    first = np.where(corr.any(-1), corr.argmax(-1), max_N)  # (O, Q)
    cum = np.cumsum(toks, -1)
    Ns = np.arange(1, max_N + 1)[:, None, None]
    correct = first[None] < Ns
    stop_at = np.minimum(first[None], Ns - 1)  # index of the last sample drawn
    tokens = np.take_along_axis(np.broadcast_to(cum, (max_N,) + cum.shape), stop_at[..., None], -1)[..., 0]
    return {"N": Ns.ravel(), "correct": correct, "tokens": tokens}


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
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
    from .samplers.base import derive_seed

    u = np.array([derive_seed("calibration-split", seed, q) / 2**31 for q in question_ids])
    calib = np.flatnonzero(u < calibration_fraction)
    test = np.flatnonzero(u >= calibration_fraction)
    return calib, test


def crossfit_folds(question_ids: Sequence[str], seed: int, folds: int = 2) -> list[np.ndarray]:
    """Question indices of each cross-fitting fold: the questions ranked by a stable hash of
    ``(seed, question id)`` (ties by id) and dealt out in turn, so fold sizes differ by at most
    one and every question is in exactly one fold."""
    from .samplers.base import derive_seed

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


# ---------------------------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------------------------
def _grid_points(policy_cls: type[Policy]) -> list[dict[str, Any]]:
    grid = policy_cls.grid
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def tune(name: str, calib: PoolArrays, orders: np.ndarray, max_N: int, reference_accuracy: float,
         tolerance: float = 0.01, caches: list[dict] | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Grid search on ``calib`` only: the fewest mean tokens among grid points whose accuracy is
    within ``tolerance`` of ``reference_accuracy`` (BoN or majority at max_N on the same
    questions); if none is, the most accurate (then cheapest). Returns (params, grid table)."""
    cls = POLICIES.get(name)
    rows = []
    for params in _grid_points(cls):
        pol = make_policy(name, **params)
        pol.prepare(calib)
        r = replay(pol, calib, orders, max_N, caches)
        rows.append({**params, "accuracy": float(r.correct.mean()), "tokens": float(r.tokens.mean()),
                     "n": float(r.n.mean())})
    table = pd.DataFrame(rows)
    feasible = table[table["accuracy"] >= reference_accuracy - tolerance - 1e-12]
    if len(feasible):
        best = feasible.sort_values(["tokens", "accuracy"], ascending=[True, False]).index[0]
    else:
        best = table.sort_values(["accuracy", "tokens"], ascending=[False, True]).index[0]
    table["chosen"] = table.index == best
    params = {k: table.loc[best, k] for k in cls.grid}
    params = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
    return params, table


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
DEFAULT_POLICIES = ("bon", "majority", "weighted-vote", "optscale-0", "optscale-t", "optscale-seq", "esc",
                    "asc", "dsc", "consol", "optpo", "ias", "deepconf", "oracle")
PROTOCOLS = ("crossfit", "calibrated", "test-tuned")
# A split (calibration, test, or a cross-fitting half) with fewer questions gets a warning in the
# notes and the summary table: tuning on it, and bootstrap CIs over it, mean little.
MIN_SPLIT_QUESTIONS = 10


@dataclass
class Evaluation:
    """Outputs of :func:`evaluate` for one pool. ``results``: policy name -> ReplayResult on the
    reported questions (``reported_on``, in pool order; with cross-fitting every question, each
    from the fold where it was a test question); ``curves``: BoN and oracle curves on the same
    questions; ``summary``, ``logs``, ``tuning`` and ``savings`` are DataFrames; ``notes`` lists
    skipped policies, dropped questions and small-split warnings; ``folds``: (tuned on, reported
    on) question indices per fold; ``params``: policy -> tuned parameters (a list, one per fold,
    with cross-fitting)."""

    data: PoolArrays
    protocol: str
    tuned_on: np.ndarray
    reported_on: np.ndarray
    results: dict[str, ReplayResult]
    params: dict[str, Any]
    curves: dict[str, dict[str, np.ndarray]]
    summary: pd.DataFrame
    logs: pd.DataFrame
    tuning: pd.DataFrame
    savings: pd.DataFrame
    notes: list[str]
    settings: dict[str, Any]
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def split_warnings(splits: Mapping[str, Sequence[int]], minimum: int = MIN_SPLIT_QUESTIONS) -> list[str]:
    """One warning per named split with fewer than ``minimum`` questions."""
    return [f"warning: {name} has only {len(idx)} question(s), fewer than {minimum}: parameters tuned on it "
            f"and bootstrap CIs over it are not reliable" for name, idx in splits.items() if len(idx) < minimum]


def _tune_and_replay(data: PoolArrays, names: Sequence[str], tune_idx: np.ndarray, test_idx: np.ndarray,
                     o_tune: np.ndarray, o_test: np.ndarray, max_N: int, tolerance: float):
    """One fold: tune every policy on ``tune_idx`` only, replay it on ``test_idx``."""
    calib, test = data.subset(tune_idx), data.subset(test_idx)
    c_caches = [dict() for _ in range(calib.n_questions)]
    t_caches = [dict() for _ in range(test.n_questions)]
    ref = {}
    for by, nm in (("score", "bon"), ("vote", "majority")):
        r = replay(make_policy(nm), calib, o_tune, max_N, c_caches)
        ref[by] = float(r.correct.mean()) if calib.n_questions else float("nan")
    results: dict[str, ReplayResult] = {}
    params: dict[str, dict[str, Any]] = {}
    tuning_rows, notes = [], []
    for name in names:
        cls = POLICIES.get(name)
        if cls.needs_confidence and data.group_conf is None:
            notes.append(f"{name}: skipped, the pool has no token confidences")
            continue
        if calib.n_questions == 0 or test.n_questions == 0:
            notes.append(f"{name}: skipped, empty calibration or test split")
            continue
        if cls.grid:
            p, table = tune(name, calib, o_tune, max_N, max(ref.values()) if cls.selects_by == "score" else ref["vote"],
                            tolerance, c_caches)
            table.insert(0, "policy", name)
            tuning_rows.append(table)
        else:
            p = {}
        pol = make_policy(name, **p)
        pol.prepare(calib)
        params[name] = p
        results[name] = replay(pol, test, o_test, max_N, t_caches)
    return results, params, tuning_rows, notes, ref


def evaluate(data: PoolArrays, policies: Sequence[str] | None = None, max_N: int | None = None,
             calibration_fraction: float = 0.5, split_seed: int = 0, orders: int = 50, tune_orders: int = 10,
             order_seed: int = 12345, bootstrap_reps: int = 2000, ci_level: float = 0.95, seed: int = 0,
             tolerance: float = 0.01, margin: float = 0.02, protocol: str = "crossfit",
             verbose: bool = True, ni_margin: float = 0.02, ni_level: float = 0.95,
             test_tuned_on: str = "test-split") -> Evaluation:
    """Tune every policy on questions it is not reported on, replay it, and report with CIs.

    ``protocol="crossfit"`` (default): two-fold cross-fitting. The questions are split into
    halves A and B (:func:`crossfit_folds`, seeded by ``split_seed``); every policy is tuned on A
    and reported on B, then tuned on B and reported on A, so every question is a test question
    exactly once; CIs, paired tests and non-inferiority pool the per-question test results of
    both folds. ``protocol="calibrated"``: one split (:func:`split_questions`,
    ``calibration_fraction``), tuned on the calibration part, reported on the rest.
    ``protocol="test-tuned"``: tuned and reported on the same questions (the paper's protocol;
    only for side-by-side comparison, never as a result): the calibrated test split, or every
    question with ``test_tuned_on="all"``. Seeds: ``order_seed`` for replay orders (drawn for
    the whole pool, so a question gets the same orders whichever fold it is in), ``seed`` for
    bootstraps, ``split_seed`` for the split. ``ni_margin`` / ``ni_level``: non-inferiority to
    BoN@max_N in :attr:`Evaluation.savings`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if test_tuned_on not in ("test-split", "all"):
        raise ValueError(f"test_tuned_on must be 'test-split' or 'all', got {test_tuned_on!r}")
    max_N = min(max_N or data.n, data.n)
    names = list(policies or DEFAULT_POLICIES)
    Q = data.n_questions
    if protocol == "crossfit":
        half_a, half_b = crossfit_folds(data.question_ids, split_seed)
        folds = [(half_b, half_a), (half_a, half_b)]  # (tuned on, reported on)
        splits = {"cross-fitting half A": half_a, "cross-fitting half B": half_b}
    else:
        calib_idx, test_idx = split_questions(data.question_ids, calibration_fraction, split_seed)
        if protocol == "test-tuned":
            test_idx = np.arange(Q) if test_tuned_on == "all" else test_idx
            folds = [(test_idx, test_idx)]
            splits = {"the test split (tuned and reported on)": test_idx}
        else:
            folds = [(calib_idx, test_idx)]
            splits = {"the calibration split": calib_idx, "the test split": test_idx}
    warnings = split_warnings(splits)
    notes: list[str] = list(data.meta.get("notes", []))
    if data.prior is None:
        notes.append("no predictor prior: optscale-t, optscale-seq and dsc use the population prior "
                     + ("fitted on the tuning half of each fold" if len(folds) > 1 else "fitted on the calibration split"))
    notes += warnings
    o_tune_all = replay_orders(Q, data.n, tune_orders, order_seed + 1)
    o_test_all = replay_orders(Q, data.n, orders, order_seed)
    per_fold = []
    for tune_idx, test_idx in folds:
        per_fold.append(_tune_and_replay(data, names, tune_idx, test_idx, o_tune_all[:, tune_idx],
                                         o_test_all[:, test_idx], max_N, tolerance))
        notes += per_fold[-1][3]
    notes = list(dict.fromkeys(notes))
    reported = np.concatenate([t for _, t in folds]).astype(int)
    back = np.argsort(reported, kind="stable")
    reported = reported[back]
    fold_of = np.concatenate([np.full(len(t), k) for k, (_, t) in enumerate(folds)]).astype(int)[back]
    results: dict[str, ReplayResult] = {}
    params: dict[str, Any] = {}
    for name in names:
        if not all(name in f[0] for f in per_fold):
            continue
        parts = [f[0][name] for f in per_fold]
        cat = lambda attr: np.concatenate([getattr(r, attr) for r in parts], axis=1)[:, back]  # noqa: E731
        results[name] = ReplayResult(parts[0].label, cat("n"), cat("tokens"), cat("correct"), cat("selected"))
        params[name] = per_fold[0][1][name] if len(folds) == 1 else [f[1][name] for f in per_fold]
        if verbose:
            r = results[name]
            print(f"  {data.dataset:8s} {parts[0].label[:55]:55s} acc {r.correct.mean():.3f}  tokens "
                  f"{r.tokens.mean():8.1f}  N {r.n.mean():.2f}")
    test = data.subset(reported)
    o_rep = o_test_all[:, reported]
    curves = {"bon": bon_curve(test, o_rep, max_N), "oracle": oracle_curve(test, o_rep, max_N)}
    tuned_on = np.unique(np.concatenate([t for t, _ in folds])).astype(int)
    settings = dict(max_N=max_N, calibration_fraction=calibration_fraction, split_seed=split_seed, orders=orders,
                    tune_orders=tune_orders, order_seed=order_seed, bootstrap_reps=bootstrap_reps, ci_level=ci_level,
                    seed=seed, tolerance=tolerance, margin=margin, protocol=protocol, ni_margin=ni_margin,
                    ni_level=ni_level, folds=[(len(t), len(r)) for t, r in folds],
                    calibration_reference=[f[4] for f in per_fold])
    summary = _summary(results, params, data, protocol, bootstrap_reps, ci_level, seed,
                       "/".join(str(len(t)) for t, _ in folds), len(reported), len(folds), "; ".join(warnings))
    summary["max_N"] = max_N
    logs = _logs(results, test, protocol, fold_of)
    tuning_rows = []
    for k, f in enumerate(per_fold):
        for table in f[2]:
            tuning_rows.append(table.assign(fold=k + 1) if len(folds) > 1 else table)
    tuning = pd.concat(tuning_rows, ignore_index=True) if tuning_rows else pd.DataFrame()
    ev = Evaluation(data, protocol, tuned_on, reported, results, params, curves, summary, logs, tuning,
                    pd.DataFrame(), notes, settings, folds)
    ev.savings = savings_table(ev, bootstrap_reps, ci_level, seed, margin, ni_margin, ni_level)
    return ev


def _summary(results, params, data, protocol, reps, level, seed, n_calib, n_test, n_folds, warning) -> pd.DataFrame:
    rows = []
    pts = {}
    for metric, attr in (("accuracy", "correct"), ("tokens", "tokens"), ("n", "n")):
        pts[metric] = interval_estimates({k: getattr(r, attr) for k, r in results.items()}, seed, reps, level)
    for k, r in results.items():
        row = {"dataset": data.dataset, "policy": k, "params": json.dumps(params[k], default=str),
               "protocol": protocol, "folds": n_folds, "calibration_questions": n_calib, "test_questions": n_test,
               "orders": r.n.shape[0]}
        for metric in ("accuracy", "tokens", "n"):
            p, ci = pts[metric]
            row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = p[k], ci[k][0], ci[k][1]
        row["warning"] = warning
        rows.append(row)
    return pd.DataFrame(rows)


def _logs(results: dict[str, ReplayResult], test: PoolArrays, protocol: str, fold_of: np.ndarray) -> pd.DataFrame:
    """Per (policy, question): means over orders plus the detail of order 0 (the pool's order);
    ``fold`` is the fold in which the question was a test question."""
    frames = []
    for k, r in results.items():
        sel0 = r.selected[0]
        ans0 = [test.answers[q, i] if i >= 0 else None for q, i in enumerate(sel0)]
        frames.append(pd.DataFrame({
            "dataset": test.dataset, "protocol": protocol, "policy": k, "question_id": test.question_ids,
            "fold": fold_of + 1, "mean_n": r.n.mean(0), "mean_tokens": r.tokens.mean(0), "accuracy": r.correct.mean(0),
            "n_order0": r.n[0], "selected_order0": sel0, "answer_order0": ans0, "correct_order0": r.correct[0],
            "tokens_order0": r.tokens[0],
        }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def savings_table(ev: Evaluation, reps: int = 2000, level: float = 0.95, seed: int = 0,
                  margin: float = 0.02, ni_margin: float = 0.02, ni_level: float = 0.95) -> pd.DataFrame:
    """Tokens saved vs BoN@max_N (``1 - tokens / tokens_BoN``, bootstrap CI over questions),
    the paired accuracy difference vs BoN@max_N (bootstrap CI, permutation p, equivalence within
    ``margin``, non-inferiority: one-sided ``ni_level`` lower bound ``ni_lower`` above
    ``-ni_margin``), and tokens saved vs the BoN curve at matched accuracy (the smallest N whose
    BoN accuracy reaches the policy's)."""
    if "bon" not in ev.results:
        return pd.DataFrame()
    bon = ev.results["bon"]
    curve = ev.curves["bon"]
    acc_curve = curve["correct"].mean((1, 2))
    tok_curve = curve["tokens"].mean((1, 2))
    ratio = lambda t, b: 1.0 - np.mean(t) / np.mean(b)  # noqa: E731
    pts, cis = interval_estimates({k: (r.tokens, bon.tokens) for k, r in ev.results.items()}, seed, reps, level,
                                  stat=ratio)
    rows = []
    for k, r in ev.results.items():
        t = paired_test(r.correct, bon.correct, seed, reps, level, margin, ni_margin, ni_level)
        acc = float(r.correct.mean())
        hit = np.flatnonzero(acc_curve >= acc - 1e-12)
        n_match = int(curve["N"][hit[0]]) if hit.size else None
        saved_match = 1.0 - r.tokens.mean() / tok_curve[hit[0]] if hit.size else float("nan")
        rows.append({"dataset": ev.data.dataset, "policy": k, "protocol": ev.protocol,
                     "test_questions": len(ev.reported_on), "accuracy": acc,
                     "bon_accuracy": float(bon.correct.mean()), "acc_diff": t["diff"], "acc_diff_lo": t["lo"],
                     "acc_diff_hi": t["hi"], "p_value": t["p_value"], "matches_bon": t["equivalent"],
                     "ni_lower": t["ni_lower"], "ni_margin": ni_margin, "ni_level": ni_level,
                     "non_inferior": t["non_inferior"],
                     "tokens": float(r.tokens.mean()), "bon_tokens": float(bon.tokens.mean()),
                     "saved": pts[k], "saved_lo": cis[k][0], "saved_hi": cis[k][1],
                     "matched_bon_N": n_match, "saved_vs_matched_bon": saved_match})
    return pd.DataFrame(rows)


def verdict_table(savings: pd.DataFrame) -> pd.DataFrame:
    """The cross-fitted token-saving table in words: per (dataset, policy) the accuracy against
    BoN@max_N's, the paired difference with its CI (``ci_level``), the one-sided lower bound
    and the non-inferiority verdict at the margin, and tokens saved with CI (percent)."""
    if not len(savings):
        return pd.DataFrame()
    rows = []
    for r in savings.itertuples():
        rows.append({
            "dataset": r.dataset, "policy": r.policy, "protocol": r.protocol, "questions": r.test_questions,
            "accuracy": round(r.accuracy, 3), "bon_accuracy": round(r.bon_accuracy, 3),
            "accuracy - BoN [CI]": f"{r.acc_diff:+.3f} [{r.acc_diff_lo:+.3f}, {r.acc_diff_hi:+.3f}]",
            f"one-sided {r.ni_level:.0%} lower bound": f"{r.ni_lower:+.3f}",
            f"non-inferior (margin {r.ni_margin:g})": ("yes" if r.non_inferior else "no") + (
                " (trivially: neither is ever correct)" if r.accuracy == 0 and r.bon_accuracy == 0 else ""),
            "tokens saved % [CI]": f"{100 * r.saved:.1f} [{100 * r.saved_lo:.1f}, {100 * r.saved_hi:.1f}]",
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Paper table side by side
# ---------------------------------------------------------------------------------------------
PAPER_ROWS = {
    "bon": "Best-of-N (BoN)", "majority": "Self-Consistency", "esc": "Early-stopping SC (ESC)",
    "asc": "Adaptive SC (ASC)", "dsc": "Difficulty-Adaptive SC (DSC)", "optscale-0": "OptScale$^0$ (MLE) (Ours)",
    "optscale-t": "OptScale$^t$ (MAP) (Ours)",
}
PAPER_DATASETS = {"math500": "MATH500", "gsm8k": "GSM8K", "aime24": "AIME24", "aime25": "AIME25", "amc23": "AMC23"}


def load_reported_table(data_dir: str | Path | None = None) -> pd.DataFrame:
    """The paper's main table as long format: method, N, dataset, accuracy (fraction), tokens."""
    from .data import resolve_data_dir

    path = resolve_data_dir(data_dir) / "reference" / "results_table.csv"
    raw = pd.read_csv(path)
    rows = []
    for _, r in raw.iterrows():
        label = str(r.iloc[0])
        if not label or label == "nan" or "($N=" not in label:
            continue
        method, nstr = label.rsplit(" ($N=", 1)
        N = int(nstr.rstrip(")$"))
        for key, ds in PAPER_DATASETS.items():
            acc, tok = r.get(f"{ds} acc."), r.get(f"{ds} token.")
            if pd.notna(acc):
                rows.append({"method": method.strip(), "N": N, "dataset": key, "accuracy": float(acc) / 100,
                             "tokens": float(tok)})
    if not rows:
        raise ValueError(f"{path}: no rows of the form '<method> ($N=<n>)'")
    return pd.DataFrame(rows)


def paper_comparison(summaries: pd.DataFrame, reported: pd.DataFrame, pool_label: str) -> pd.DataFrame:
    """Side by side: the paper's numbers ("reported", at the paper's N closest to ours) and ours
    ("reproduced on <pool_label>") for the policies the paper lists."""
    rows = []
    for _, s in summaries.iterrows():
        if s["policy"] not in PAPER_ROWS:
            continue
        rep = reported[(reported["method"] == PAPER_ROWS[s["policy"]]) & (reported["dataset"] == s["dataset"])]
        if len(rep):
            n_ours = int(s.get("max_N", 0) or 0)
            rep = rep.iloc[(rep["N"] - n_ours).abs().argsort()[:1]]
        rows.append({
            "dataset": s["dataset"], "method": PAPER_ROWS[s["policy"]],
            "reported_N": int(rep["N"].iloc[0]) if len(rep) else None,
            "reported_acc": float(rep["accuracy"].iloc[0]) if len(rep) else float("nan"),
            "reported_tokens": float(rep["tokens"].iloc[0]) if len(rep) else float("nan"),
            "ours_N": s.get("max_N"), "ours_acc": s["accuracy"], "ours_acc_ci": f"[{s['accuracy_lo']:.3f}, {s['accuracy_hi']:.3f}]",
            "ours_tokens": s["tokens"], "ours_tokens_ci": f"[{s['tokens_lo']:.0f}, {s['tokens_hi']:.0f}]",
            "ours_source": f"reproduced on {pool_label}",
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Config-driven entry point (notebooks 05 / 06)
# ---------------------------------------------------------------------------------------------
def load_pool_arrays(config: Any, dataset: str, cache_dir: str | Path | None = None,
                     prior: np.ndarray | None = None, prior_source: str = "none", scorer: str | None = None,
                     pool_name: str | None = None, verbose: bool = True) -> PoolArrays | None:
    """The configured pool of ``dataset`` (pool set ``pool_name``, default ``pools.pool_name``)
    as :class:`PoolArrays` (scorer ``scorer``, default ``scoring.primary``; ``evaluation.max_N``),
    or None with a printed note when the pool does not exist yet."""
    from .pools import pool_path, read_pool

    if pool_name is not None:
        config = config.replace({"pools": {"pool_name": pool_name}})
    path = pool_path(config, dataset)
    if not path.is_file():
        print(f"note: {dataset}: no pool at {path}; skipped")
        return None
    pool = read_pool(path, allow_partial_scores=True)
    scorer = scorer or config.scoring.primary
    if f"score__{scorer}" not in pool.df.columns:
        print(f"note: {dataset}: pool has no {scorer!r} scores yet; skipped")
        return None
    data = pool_arrays(pool, scorer, config.evaluation.max_N, cache_dir, config.evaluation.deepconf_window,
                       prior, prior_source, verbose=verbose)
    if data.n_questions < 2:
        print(f"note: {dataset}: only {data.n_questions} fully scored question(s); skipped")
        return None
    return data


def evaluate_config(data: PoolArrays, config: Any, protocol: str | None = None, verbose: bool = True,
                    policies: Sequence[str] | None = None) -> Evaluation:
    """:func:`evaluate` with every setting taken from ``config.evaluation`` / ``config.pools``.
    ``protocol``: default ``evaluation.protocol``; ``"test-tuned"`` tunes and reports on the
    questions the configured protocol reports on (all of them with cross-fitting)."""
    e = config.evaluation
    protocol = protocol or e.protocol
    return evaluate(data, policies=policies or e.policies or None, max_N=e.max_N,
                    calibration_fraction=e.calibration_fraction, split_seed=e.split_seed, orders=e.orders,
                    tune_orders=e.tune_orders, order_seed=config.pools.replay_seed, bootstrap_reps=e.bootstrap_reps,
                    ci_level=e.ci_level, seed=e.seed, tolerance=e.tolerance, margin=e.margin, protocol=protocol,
                    verbose=verbose, ni_margin=e.noninferiority_margin, ni_level=e.noninferiority_level,
                    test_tuned_on="all" if e.protocol == "crossfit" else "test-split")


def curve_table(ev: Evaluation, reps: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """BoN and oracle curves (N = 1..max_N) with bootstrap CIs: columns curve, N, accuracy(_lo/_hi),
    tokens(_lo/_hi)."""
    rows = []
    for name, c in ev.curves.items():
        acc_p, acc_ci = interval_estimates({int(N): c["correct"][i] for i, N in enumerate(c["N"])}, seed, reps, level)
        tok_p, tok_ci = interval_estimates({int(N): c["tokens"][i] for i, N in enumerate(c["N"])}, seed, reps, level)
        for N in acc_p:
            rows.append({"dataset": ev.data.dataset, "curve": name, "N": N, "accuracy": acc_p[N],
                         "accuracy_lo": acc_ci[N][0], "accuracy_hi": acc_ci[N][1], "tokens": tok_p[N],
                         "tokens_lo": tok_ci[N][0], "tokens_hi": tok_ci[N][1]})
    return pd.DataFrame(rows)


def load_prior_table(run_dir: str | Path, dataset: str, question_ids: Sequence[str]) -> tuple[np.ndarray | None, str]:
    """Predictor output for ``dataset`` if notebook 03/04 left one at
    ``<run_dir>/tables/predictor_prior_<dataset>.csv`` (columns question_id, mu, sigma[,
    uncertainty]); returns (questions x 2|3 array aligned with ``question_ids``, source) or
    (None, "population prior (fitted on the tuning questions)")."""
    path = Path(run_dir) / "tables" / f"predictor_prior_{dataset}.csv"
    if not path.is_file():
        return None, "population prior (fitted on the tuning questions)"
    t = pd.read_csv(path)
    missing = {"question_id", "mu", "sigma"} - set(t.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    cols = ["mu", "sigma"] + (["uncertainty"] if "uncertainty" in t.columns else [])
    t = t.set_index(t["question_id"].astype(str))
    absent = [q for q in question_ids if str(q) not in t.index]
    if absent:
        return None, f"population prior (fitted on the tuning questions; {path.name} lacks {len(absent)} of the pool's questions)"
    return t.loc[[str(q) for q in question_ids], cols].to_numpy(float), f"predictor ({path.name})"


def run_evaluation(config: Any, run_dir: str | Path, verbose: bool = True) -> dict[str, pd.DataFrame]:
    """Notebook 05: every configured benchmark whose pool exists, with the configured protocol
    (``evaluation.protocol``, cross-fitting by default) and, for comparison only, tuned on the
    reported questions themselves. Writes the tables under ``<run_dir>/tables``
    (evaluation_*.csv, per-question logs as evaluation_logs.csv; ``notes`` lists skipped
    policies, dropped question ids and small-split warnings) and returns them."""
    from .provenance import save_table

    run_dir = Path(run_dir)
    out: dict[str, list[pd.DataFrame]] = {k: [] for k in ("summary", "summary_test_tuned", "savings", "logs",
                                                          "curves", "tuning", "notes")}
    for ds in config.data.benchmarks:
        data = load_pool_arrays(config, ds, run_dir / "cache")
        if data is None:
            continue
        prior, source = load_prior_table(run_dir, ds, list(data.question_ids))
        data = data.with_prior(prior, source)
        if verbose:
            print(f"{ds}: {data.description}; prior: {source}")
        ev = evaluate_config(data, config, verbose=verbose)
        tt = evaluate_config(data, config, protocol="test-tuned", verbose=False)
        for k, df in (("summary", ev.summary), ("summary_test_tuned", tt.summary), ("savings", ev.savings),
                      ("logs", ev.logs), ("curves", curve_table(ev, config.evaluation.bootstrap_reps,
                                                                  config.evaluation.ci_level, config.evaluation.seed)),
                      ("tuning", ev.tuning)):
            df = df.copy()
            df["pool"] = data.description
            df["prior_source"] = source
            out[k].append(df)
        out["notes"].append(pd.DataFrame({"dataset": ds, "protocol": ev.protocol, "note": ev.notes}))
    tables = {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in out.items()}
    tables["verdicts"] = verdict_table(tables["savings"])
    for k, df in tables.items():
        save_table(df, run_dir, f"evaluation_{k}")
    return tables


# ---------------------------------------------------------------------------------------------
# How good must the verifier be? (notebook 06's AUROC figure)
# ---------------------------------------------------------------------------------------------
def auroc_pool_sets(config: Any) -> tuple[list[str], list[str]]:
    """(pool sets to use, notes): ``evaluation.auroc_pool_sets``, or when empty every directory
    under ``pools.pool_dir`` holding a ``*.parquet`` pool, sorted; a listed set with no
    directory is left out with a note."""
    from .config import PROJECT_ROOT

    root = Path(config.pools.pool_dir)
    root = root if root.is_absolute() else PROJECT_ROOT / root
    listed = list(config.evaluation.auroc_pool_sets)
    if not listed:
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.parquet"))) if root.is_dir() else []
        return found, ([] if found else [f"no pool set under {root}"])
    present = [s for s in listed if (root / s).is_dir()]
    notes = [f"pool set {s!r}: no directory {root / s}; skipped" for s in listed if s not in present]
    return present, notes


def verifier_auroc_points(config: Any, run_dir: str | Path | None = None,
                          verbose: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """One row per (pool set, benchmark, scorer): the verifier's within-question AUROC on the
    first ``evaluation.max_N`` samples (mean over questions with a correct and a wrong sample,
    bootstrap CI over them; pooled AUROC and the token-count baseline beside it), and the
    cross-fitted evaluation (``evaluation`` settings, protocol ``crossfit`` whatever the
    configured one) of ``evaluation.auroc_policy`` against Best-of-max_N by the same scorer:
    tokens saved with CI, the paired accuracy difference with CI, and non-inferiority.

    Pool sets: :func:`auroc_pool_sets`. Every scorer a pool carries is used; OptScale uses no
    predictor prior here (the population prior of each fold's tuning half), so every scorer is
    treated alike. Returns (points, notes on what was skipped)."""
    from .curves import TOKENS_SCORER, auroc, within_question_auroc
    from .curves import bootstrap_mean_ci
    from .pools import pool_path, read_pool

    e = config.evaluation
    cfg = config.replace({"evaluation": {"protocol": "crossfit"}})
    sets, notes = auroc_pool_sets(config)
    cache = Path(run_dir) / "cache" if run_dir is not None else None
    rows = []
    for ps in sets:
        cps = cfg.replace({"pools": {"pool_name": ps}})
        for ds in config.data.benchmarks:
            path = pool_path(cps, ds)
            if not path.is_file():
                notes.append(f"{ps}/{ds}: no pool at {path}; skipped")
                continue
            pool = read_pool(path, allow_partial_scores=True)
            for sc in pool.scorers:
                data = pool_arrays(pool, sc, e.max_N, cache, e.deepconf_window, verbose=False)
                notes += data.meta.get("notes", [])
                if data.n_questions < 2:
                    notes.append(f"{ps}/{ds}/{sc}: {data.n_questions} fully scored question(s); skipped")
                    continue
                per_q = within_question_auroc(data.scores, data.correct)
                valid = per_q[~np.isnan(per_q)]
                if valid.size == 0:
                    notes.append(f"{ps}/{ds}/{sc}: no question has both a correct and a wrong sample "
                                 f"(single-sample accuracy {data.correct.mean():.3f}): within-question AUROC "
                                 "undefined; skipped")
                    continue
                w, w_lo, w_hi = bootstrap_mean_ci(valid, e.bootstrap_reps, e.seed, e.ci_level)
                tok_q = within_question_auroc(-data.tokens, data.correct)
                ev = evaluate_config(data, cps, policies=["bon", e.auroc_policy], verbose=False)
                if e.auroc_policy not in ev.results:
                    notes += [f"{ps}/{ds}/{sc}: {n}" for n in ev.notes]
                    continue
                s = ev.savings.set_index("policy").loc[e.auroc_policy]
                g = data.meta.get("generator", {})
                rows.append({
                    "pool_set": ps, "dataset": ds, "generator": g.get("model", "?"), "scorer": sc, "n": data.n,
                    "sampling_seed": data.meta.get("seed"), "questions": data.n_questions,
                    "auroc_within": w, "auroc_within_lo": w_lo, "auroc_within_hi": w_hi,
                    "auroc_within_questions": int(valid.size), "auroc_pooled": auroc(data.scores, data.correct),
                    f"auroc_within_{TOKENS_SCORER}": float(np.nanmean(tok_q)) if np.isfinite(tok_q).any() else float("nan"),
                    "policy": e.auroc_policy, "protocol": ev.protocol, "accuracy": s["accuracy"],
                    "bon_accuracy": s["bon_accuracy"], "acc_diff": s["acc_diff"], "acc_diff_lo": s["acc_diff_lo"],
                    "acc_diff_hi": s["acc_diff_hi"], "ni_lower": s["ni_lower"], "non_inferior": bool(s["non_inferior"]),
                    "saved": s["saved"], "saved_lo": s["saved_lo"], "saved_hi": s["saved_hi"],
                    "params": json.dumps(ev.params[e.auroc_policy], default=str), "pool": data.description,
                })
                if verbose:
                    r = rows[-1]
                    print(f"{ps}/{ds}/{sc}: within-question AUROC {w:.3f} [{w_lo:.3f}, {w_hi:.3f}] "
                          f"({valid.size} q), saved {r['saved']:.3f} [{r['saved_lo']:.3f}, {r['saved_hi']:.3f}], "
                          f"acc diff {r['acc_diff']:+.3f} [{r['acc_diff_lo']:+.3f}, {r['acc_diff_hi']:+.3f}]")
    return pd.DataFrame(rows), list(dict.fromkeys(notes))


def verifier_auroc_caption(points: pd.DataFrame, config: Any, notes: Sequence[str] = ()) -> str:
    """Caption of the verifier-AUROC figure: what is plotted, the protocol and CIs, and every pool
    it came from (pool set, generator, benchmark, n, sampling seed, questions, scorers)."""
    e = config.evaluation
    pools = []
    for (ps, gen, ds, n, seed, q), g in points.groupby(["pool_set", "generator", "dataset", "n", "sampling_seed",
                                                         "questions"], sort=False):
        pools.append(f"{ps}/{ds} (generator {gen}, n={n}, sampling seed {seed}, {q} questions; scorers "
                     f"{', '.join(g['scorer'])})")
    skipped = f" Skipped: {len(notes)} pool/scorer case(s), see verifier_auroc_notes.csv." if notes else ""
    return (f"{e.auroc_policy} against Best-of-N (N = min(max_N={e.max_N}, pool n)) by the same scorer, against the "
            f"scorer's within-question AUROC (mean over questions with a correct and a wrong sample; "
            f"{e.ci_level:.0%} bootstrap CI over those questions). Tokens saved and accuracy difference: two-fold "
            f"cross-fitted evaluation (tuned on one half, reported on the other, pooled; split seed "
            f"{e.split_seed}, {e.orders} orders), error bars: two-sided {e.ci_level:.0%} paired bootstrap CIs over "
            f"questions; filled marker = non-inferior (one-sided {e.noninferiority_level:.0%} lower bound above "
            f"-{e.noninferiority_margin:g}). Dash-dotted line: within-question AUROC of the token count alone "
            f"(shorter = predicted correct). No predictor prior. Pools: " + "; ".join(pools) + "." + skipped)
