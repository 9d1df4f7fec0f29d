"""Config-driven entry point of notebooks 05 and 06: load a pool's arrays, evaluate every policy
under the configured protocol, and write the summary, savings, verdict, curve and log tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .protocol import Evaluation, evaluate, verdict_table
from .replay import PoolArrays, pool_arrays
from .statistics import interval_estimates

__all__ = ["load_pool_arrays", "evaluate_config", "curve_table", "run_evaluation", "load_prior_table"]


def load_pool_arrays(config: Any, dataset: str, cache_dir: str | Path | None = None,
                     prior: np.ndarray | None = None, prior_source: str = "none", scorer: str | None = None,
                     pool_name: str | None = None, verbose: bool = True) -> PoolArrays | None:
    """The configured pool of ``dataset`` (pool set ``pool_name``, default ``pools.pool_name``)
    as :class:`PoolArrays` (scorer ``scorer``, default ``scoring.primary_for(dataset)``; ``evaluation.max_N``),
    or None with a printed note when the pool does not exist yet."""
    from ..data.pools import pool_path, read_pool

    if pool_name is not None:
        config = config.replace({"pools": {"pool_name": pool_name}})
    path = pool_path(config, dataset)
    if not path.is_file():
        print(f"note: {dataset}: no pool at {path}; skipped")
        return None
    pool = read_pool(path, allow_partial_scores=True)
    scorer = scorer or config.scoring.primary_for(dataset)
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
    from ..provenance import save_table

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
