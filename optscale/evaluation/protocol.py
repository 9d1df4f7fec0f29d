"""Tune stopping policies on questions they are not reported on, replay them, and report with CIs.

Pipeline (notebook 05)::

    data = pool_arrays(pool, scorer, max_N=16, cache_dir=run / "cache")   # answer classes cached
    ev = evaluate_config(data, cfg)   # runner; cross-fitted by default (config evaluation.protocol)
    ev.summary      # one row per policy: accuracy, mean tokens, mean N, each with a bootstrap CI
    ev.logs         # per-question logs: chosen N, selected answer, correct, tokens
    ev.savings      # tokens saved vs BoN@max_N, paired accuracy difference, non-inferiority

``pool_arrays`` and the replay are in :mod:`optscale.evaluation.replay`, ``evaluate_config`` in
:mod:`optscale.evaluation.runner`, the statistics in :mod:`optscale.evaluation.statistics`.

Statistics:

- Replay averages over many seeded random sample orders per question
  (:func:`optscale.data.pools.replay_orders`).
- :func:`~optscale.evaluation.statistics.interval_estimates` is the one CI entry point (as in rliable): per-question values
  (averaged over orders) are resampled over questions with a required seed; with
  ``stratified=True`` the orders are also resampled within each question.
- :func:`~optscale.evaluation.statistics.paired_test` compares two policies on the same questions (paired bootstrap CI of the
  mean difference, sign-flip permutation p-value, equivalence within a margin).
- Hyper-parameters are never tuned on the questions they are reported on. Default
  (``protocol="crossfit"``): two-fold cross-fitting (:func:`~optscale.evaluation.statistics.crossfit_folds`): tuned on half A,
  reported on half B, then swapped, so every question is reported exactly once and the CIs,
  paired tests and non-inferiority to BoN@max_N pool both folds. ``protocol="calibrated"``:
  one calibration split (:func:`~optscale.evaluation.statistics.split_questions`, a stable hash of the question id, so the
  split does not move as a pool grows), reported on the rest. ``protocol="test-tuned"`` tunes
  on the reported questions themselves, only to compare with the paper's protocol.
- A split with fewer than :data:`MIN_SPLIT_QUESTIONS` questions is warned about in the notes
  and the summary table; questions :func:`~optscale.evaluation.replay.pool_arrays` drops (missing samples, NaN scores) are
  listed by id in the notes.
- :func:`~optscale.evaluation.verifier_auroc.verifier_auroc_points`: OptScale's tokens saved and accuracy gap against BoN, per
  (pool set, benchmark, scorer), beside the scorer's within-question AUROC (notebook 06).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.pools import replay_orders
from ..policies import POLICIES, Policy, make_policy
from .replay import PoolArrays, ReplayResult, bon_curve, oracle_curve, replay
from .statistics import crossfit_folds, interval_estimates, paired_test, split_questions

__all__ = [
    "Evaluation",
    "tune",
    "evaluate",
    "savings_table",
    "split_warnings",
    "verdict_table",
    "PROTOCOLS",
    "MIN_SPLIT_QUESTIONS",
]


# ---------------------------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------------------------
def _grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def tune(name: str, calib: PoolArrays, orders: np.ndarray, max_N: int, reference_accuracy: float,
         tolerance: float = 0.01, caches: list[dict] | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Grid search on ``calib`` only (the policy's ``tuning_grid(calib)``): the fewest mean tokens
    among grid points whose accuracy is within ``tolerance`` of ``reference_accuracy`` (BoN or
    majority at max_N on the same questions); if none is, the most accurate (then cheapest).
    Returns (params, grid table)."""
    cls = POLICIES.get(name)
    grid = cls.tuning_grid(calib)
    rows = []
    for params in _grid_points(grid):
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
    params = {k: table.loc[best, k] for k in grid}
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
