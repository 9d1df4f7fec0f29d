"""Replay stopping policies offline on a pool: the pool as arrays (:class:`PoolArrays`, answer
classes cached), many seeded sample orders per question, and the fixed-N curves of BoN and the
oracle.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.grading import GRADING_RULE_VERSION, answer_classes, default_grader
from ..data.pools import Pool, PoolError
from ..policies import Policy, QuestionContext, Sample, group_confidences

__all__ = ["PoolArrays", "ReplayResult", "pool_arrays", "answer_class_matrix", "replay", "warm_fit_cache",
           "bon_curve", "oracle_curve"]


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
        from ..theory.fits import fit_truncnorm

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
    """(questions x n) int labels from :func:`optscale.data.grading.answer_classes` per question
    (math-verify equivalence; -1 = no answer). Cached on disk under ``cache_dir`` keyed by a hash
    of the answers and the grading rule. Comparisons left unresolved by the grader's CPU budget
    are printed as a note (and logged by :mod:`optscale.data.grading`)."""
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
    """Arrays of the first ``max_N`` samples per question (default: the most samples any question
    has). Questions with fewer than ``max_N`` samples (a ragged, e.g. imported, pool) are dropped,
    never the samples of every other question; a ``max_N`` above every question's sample count is
    lowered to the largest one. Questions whose ``scorer`` score is missing (a pool still being
    scored) are dropped too. Each of these is written into ``meta["notes"]`` (by question id) and
    printed when ``verbose``."""
    if max_N is not None and (isinstance(max_N, bool) or not isinstance(max_N, (int, np.integer)) or max_N < 1):
        raise PoolError(f"{pool.path}: max_N={max_N!r}; it must be an integer >= 1 (evaluation.max_N)")
    full = pool.df.groupby("question_id", sort=False).size()
    if full.empty:
        raise PoolError(f"{pool.path}: the pool has no samples")
    largest = int(full.max())
    notes = []  # dropped questions, by id, and a lowered max_N; evaluate() copies them into its notes table
    n = int(max_N) if max_N else largest
    if n > largest:
        notes.append(f"{pool.dataset}: max_N={n} (evaluation.max_N) but no question of the pool has more than "
                     f"{largest} samples: evaluated at N={largest}")
        if verbose:
            print(f"note: {notes[-1]}")
        n = largest
    keep_ids = set(full.index[full >= n])
    if len(keep_ids) < len(full):
        short = [f"{q} ({int(full[q])})" for q in full.index if q not in keep_ids]
        notes.append(f"{pool.dataset}: dropped {len(short)} question(s) with fewer than {n} samples: "
                     f"{', '.join(short)} (samples in parentheses)")
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
    tokens = p.tokens(n)[ok]
    if tokens.size and not tokens.any():  # only empty completions (validation refuses 0 tokens with text)
        notes.append(f"{pool.dataset}: every sample has 0 tokens, so token savings are undefined (NaN)")
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
        tokens=tokens, classes=answer_class_matrix(answers, cache_dir), answers=answers,
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
    (prefixes ``policy.fit_prefixes(max_N)`` of every order), in batched fits. A policy that fits
    most prefixes 1..n (``optscale-seq``) has each order's first n scores fitted at once by
    :func:`optscale.theory.fits.fit_truncnorm_prefixes` (running sufficient statistics); one
    that fits a few prefixes (``optscale-0`` / ``-t``: the one at k) has each prefix fitted as a
    masked row of :func:`optscale.theory.fits.fit_truncnorm`. Returns the number of new fits."""
    from ..theory.fits import fit_truncnorm, fit_truncnorm_prefixes
    from ..policies.score_distribution import fit_key

    ns = [n for n in policy.fit_prefixes(max_N) if 1 <= n <= max_N] if hasattr(policy, "fit_prefixes") else []
    if not ns:
        return 0
    strength = float(policy.params.get("prior_strength", 1.0))
    n_top = max(ns)
    by_prefix = 2 * len(ns) >= n_top  # most prefixes 1..n_top are asked for: fit whole orders
    todo: dict[tuple, list] = {}  # prior arity group -> rows: (question, [(key, n)], indices, prior)
    for q in range(data.n_questions):
        qprior = policy.prior_for(tuple(data.prior[q]) if data.prior is not None else None)
        group = None if qprior is None else len(qprior)
        seen = set()
        for o in range(orders.shape[0]):
            new = []
            for n in ns:
                idx = orders[o, q, :n]
                key = fit_key(qprior, strength, idx)
                if key in caches[q] or key in seen:
                    continue
                seen.add(key)
                if by_prefix:
                    new.append((key, n))
                else:
                    todo.setdefault(group, []).append((q, [(key, n)], idx, qprior))
            if new:
                todo.setdefault(group, []).append((q, new, orders[o, q, :n_top], qprior))
    total = 0
    width = n_top if by_prefix else max_N
    for group, rows in todo.items():
        step = max(1, chunk // n_top) if by_prefix else chunk
        for start in range(0, len(rows), step):
            part = rows[start:start + step]
            X = np.zeros((len(part), width))
            M = np.zeros((len(part), width), dtype=bool)
            for r, (q, _, idx, _) in enumerate(part):
                X[r, :len(idx)] = data.scores[q, idx]
                M[r, :len(idx)] = True
            prior = None if group is None else tuple(np.array([p[3][j] for p in part]) for j in range(group))
            kw = {} if prior is None else {"prior": prior, "prior_strength": strength}
            fit = (fit_truncnorm_prefixes if by_prefix else fit_truncnorm)(X, mask=M, **kw)
            for r, (q, keys, _, _) in enumerate(part):
                for key, n in keys:
                    at = (r, n - 1) if by_prefix else r
                    caches[q][key] = _Fit((float(fit.mu[at]), float(fit.sigma[at])))
                total += len(keys)
    # N* for this policy's (target, delta) of every prefix, in one vectorized bound call
    if hasattr(policy, "target") and hasattr(policy, "delta"):
        from ..theory.bounds import n_star

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

    ``orders``: (n_orders, questions, >= max_N) from :func:`optscale.data.pools.replay_orders`;
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
