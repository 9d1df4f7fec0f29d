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

from optscale.config import DEFAULT_PROFILE, load_config
from optscale.data.pools import pool_path, read_pool, replay_orders
from optscale.evaluation.curves import answer_labels, auroc_summary, bon_correct, bootstrap_mean_ci
from optscale.sampling.verifier_fit import fit_combination


def _report(label: str, pool, column: str, reps: int = 2000, seed: int = 0) -> str:
    """Within-question AUROC and BoN@n - single of the pool's ``score__<column>``, with the project's
    Best-of-n rule (a sample without an answer never wins unless none has one) and bootstrap CIs."""
    scores, correct = pool.scores(column), pool.correct()
    a = auroc_summary(scores, correct, reps, seed)
    q, n = scores.shape
    bon = bon_correct(scores, correct, replay_orders(q, n, 1, seed), n, answered=answer_labels(pool) >= 0)[0]
    gain, lo, hi = bootstrap_mean_ci(bon - correct.mean(1), reps, seed)
    return (f"{label}: within-question AUROC {a['within']:.3f} [{a['within_lo']:.3f}, {a['within_hi']:.3f}] "
            f"({a['within_questions']} mixed questions); BoN@{n} - single {gain:+.3f} [{lo:+.3f}, {hi:+.3f}]")


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
            column = f"oof-{len(feats)}-features-C{c}"  # its own column: Pool caches matrices by column
            pool.df[f"score__{column}"] = oof[0]  # in pool.df's row order, as fit_combination returns it
            print(_report(f"out-of-fold, C={c}, {len(feats)} features", pool, column))


if __name__ == "__main__":
    main()
