"""How good must the verifier be? OptScale's tokens saved and accuracy gap against BoN per (pool set,
benchmark, scorer), beside the scorer's within-question AUROC (notebook 06's figure).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .replay import pool_arrays
from .runner import evaluate_config

__all__ = ["auroc_pool_sets", "verifier_auroc_points", "verifier_auroc_caption"]


def auroc_pool_sets(config: Any) -> tuple[list[str], list[str]]:
    """(pool sets to use, notes): ``evaluation.auroc_pool_sets``, or when empty every directory
    under ``pools.pool_dir`` holding a ``*.parquet`` pool, sorted; a listed set with no
    directory is left out with a note."""
    from ..config import PROJECT_ROOT

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
    from ..data.pools import pool_path, read_pool

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
