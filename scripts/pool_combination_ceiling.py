"""How far can a linear combination of a pool's own per-sample features rank its samples?

Logistic regression on the features of the profile's fitted combination (scoring.combinations),
fitted 5-fold out-of-fold on the pool itself (folds by question, optscale.scoring.combinations),
then the within-question AUROC and the BoN@n gain of the out-of-fold scores, measured as
`python -m optscale.generate info` measures the pool's own scorers (pool_status: the profile's
replay orders and bootstrap). It trains on the pool's questions, so it is a ceiling for a linear
verifier on these features, not a verifier choice (the pools' primary combination is fitted on
the study questions).

    python scripts/pool_combination_ceiling.py [--profile cpu-1.5b] [--dataset math500] [--name combined]
"""
from __future__ import annotations

import argparse
import json

from optscale.config import DEFAULT_PROFILE, load_config
from optscale.data.pools import pool_path, read_pool, replay_orders
from optscale.evaluation.curves import pool_status
from optscale.scoring.combinations import fit_combination


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
    fits = {}
    for feats in (features, [f for f in features if f != "answer-judge"]):
        for c in (0.1, 1.0):
            oof, _ = fit_combination([pool], feats, folds=5, seed=0, C=c)
            column = f"oof-{len(feats)}-features-C{c}"
            pool.df[f"score__{column}"] = oof[0]  # in pool.df's row order, as fit_combination returns it
            fits[column] = f"out-of-fold, C={c}, {len(feats)} features"
    # the status table's measures (`generate info`): the profile's replay orders and bootstrap
    orders = replay_orders(pool.n_questions, pool.n_per_question, cfg.pools.replay_orders, cfg.pools.replay_seed)
    r = pool_status(pool, orders, reps=cfg.evaluation.bootstrap_reps, seed=cfg.evaluation.seed)
    n = pool.n_per_question
    for column, label in fits.items():
        a, g = f"auroc_within_{column}", f"bon_gain__{column}"
        print(f"{label}: within-question AUROC {r[a]:.3f} [{r[a + '_lo']:.3f}, {r[a + '_hi']:.3f}] "
              f"({r[f'auroc_within_questions_{column}']} mixed questions); "
              f"BoN@{n} - single {r[g]:+.3f} [{r[g + '_lo']:+.3f}, {r[g + '_hi']:+.3f}]")


if __name__ == "__main__":
    main()
