"""How far can a linear combination of a pool's own per-sample features rank its samples?

Logistic regression on the features of the profile's fitted combination (scoring.combinations),
fitted 5-fold out-of-fold on the pool itself (folds by question, optscale.sampling.verifier_fit),
then the within-question AUROC and the BoN@n gain of the out-of-fold scores with 95% bootstrap CIs
over questions. It trains on the pool's questions, so it is a ceiling for a linear verifier on these
features, not a verifier choice (the pools' primary combination is fitted on the study questions).

    python scripts/pool_combination_ceiling.py [--profile cpu-1.5b] [--dataset math500] [--name combined]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from optscale.config import DEFAULT_PROFILE, load_config
from optscale.data.pools import pool_path, read_pool
from optscale.evaluation.curves import auroc_summary
from optscale.sampling.verifier_fit import fit_combination


def _report(label: str, pool, scores: np.ndarray, reps: int = 2000, seed: int = 0) -> str:
    df = pool.df.assign(_s=scores).sort_values(["question_id", "sample_index"])
    q = df["question_id"].nunique()
    n = len(df) // q
    y = df["correct"].to_numpy(bool).reshape(q, n)
    s = df["_s"].to_numpy(float).reshape(q, n)
    a = auroc_summary(s, y)
    gain = y[np.arange(q), s.argmax(1)].astype(float) - y.mean(1)
    rng = np.random.default_rng(seed)
    boots = [gain[rng.integers(0, q, q)].mean() for _ in range(reps)]
    return (f"{label}: within-question AUROC {a['within']:.3f} [{a['within_lo']:.3f}, {a['within_hi']:.3f}] "
            f"({a['within_questions']} mixed questions); BoN@{n} - single {gain.mean():+.3f} "
            f"[{np.quantile(boots, 0.025):+.3f}, {np.quantile(boots, 0.975):+.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--dataset", default="math500")
    ap.add_argument("--name", default="combined", help="a key of scoring.combinations: its features are used")
    a = ap.parse_args()
    cfg = load_config(a.profile)
    features = json.loads(cfg.scoring.combination_path(a.name).read_text())["features"]
    pool = read_pool(pool_path(cfg, a.dataset))
    print(f"{pool_path(cfg, a.dataset)}: {pool.n_questions} questions; features {features}")
    for feats in (features, [f for f in features if f != "answer-judge"]):
        for c in (0.1, 1.0):
            oof, _ = fit_combination([pool], feats, folds=5, seed=0, C=c)
            print(_report(f"out-of-fold, C={c}, {len(feats)} features", pool, oof[0]))


if __name__ == "__main__":
    main()
