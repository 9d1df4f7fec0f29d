"""Pilot evaluation of the probe verifier on the questions whose features are already cached.

While ``python -m optscale.generate score --scorer probe`` is still extracting (it writes the score
column only once every question has features), this cross-fits the probe (5 folds by question id) over
the questions done so far and prints its within-question AUROC (bootstrap CI over questions) beside
self-certainty's on the same questions, for three regularisation strengths, the feature-extraction
seconds per sample, and the learning curve (held-out AUROC against the number of training questions).
With ``--external`` another benchmark's cached pool features (questions outside this evaluation) are
added to every fold's training data, and a head trained on them alone scores this benchmark (transfer).

    python scripts/probe_pilot.py gsm8k 16                       # benchmark, probed block count(s), e.g. 16 or 16,28
    python scripts/probe_pilot.py math500 16 --external gsm8k
"""

import argparse
import json
import sys

import numpy as np

from optscale.config import load_config
from optscale.data.pools import pool_path, read_pool
from optscale.evaluation.curves import auroc_summary
from optscale.scoring.probe import (cached_extraction_timing, cached_pool_features, cached_seconds_per_sample,
                                    crossfit_probe_scores, fit_probe_head, probe_learning_curve)


def pool_labels(cfg, ds: str, layers: list[int]) -> tuple[dict, dict, list, "object"]:
    """(features, correctness, question ids with features, pool) of benchmark ``ds``'s pool."""
    pool = read_pool(pool_path(cfg, ds), allow_partial_scores=True)
    feats = cached_pool_features(cfg.pools.pool_name, ds, layers, pool.question_ids)
    qids = [q for q in pool.question_ids if q in feats]
    rows = {q: g.sort_values("sample_index") for q, g in pool.df.groupby("question_id") if q in feats}
    correct = {q: rows[q]["correct"].to_numpy().astype(int) for q in qids}
    return feats, correct, qids, rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark")
    ap.add_argument("layers", help="comma-separated block counts, e.g. 16")
    ap.add_argument("--profile", default="cpu-1.5b")
    ap.add_argument("--external", default="", help="comma-separated benchmarks whose cached features train every fold too")
    ap.add_argument("--curve-csv", default="", help="also write the learning curve (with the pool named) to this CSV")
    ap.add_argument("--repeats", type=int, default=3, help="draws of the training questions per learning-curve size")
    args = ap.parse_args(argv)
    ds, layers = args.benchmark, [int(x) for x in args.layers.split(",")]
    cfg = load_config(args.profile, "")
    feats, correct, qids, rows = pool_labels(cfg, ds, layers)
    if len(qids) < 5:
        print(f"{ds}: features for {len(qids)} questions; need at least 5 for 5 folds", file=sys.stderr)
        return 1
    Y = np.stack([correct[q] for q in qids])
    summary = lambda scores: auroc_summary(np.stack([scores[q] for q in qids]), Y, reps=1000)  # noqa: E731
    probe = {}
    for C in (0.001, 0.01, 0.1):
        scores, _, _ = crossfit_probe_scores(feats, correct, k=5, C=C)
        probe[str(C)] = summary(scores)
    sc = np.stack([rows[q]["score__self-certainty"].to_numpy() for q in qids])
    out = {"benchmark": ds, "layers": layers, "questions": len(qids), "samples": int(Y.size),
           "accuracy": float(Y.mean()), "probe_by_C": probe, "self_certainty": auroc_summary(sc, Y, reps=1000)}
    for ext in [e for e in args.external.split(",") if e]:
        xf, xc, xq, _ = pool_labels(cfg, ext, layers)
        scores, _, _ = crossfit_probe_scores(feats, correct, k=5, C=0.01, external=[(ext, xf, xc)])
        head = fit_probe_head(np.concatenate([xf[q] for q in xq]), np.concatenate([xc[q] for q in xq]), C=0.01)
        out[f"probe_plus_{ext}"] = {"external_questions": len(xq), **summary(scores)}
        out[f"probe_trained_on_{ext}_only"] = summary({q: head.score(feats[q]) for q in qids})
    out.update({"seconds_per_sample": cached_seconds_per_sample(cfg.pools.pool_name, ds, layers),
                "extraction_timing": cached_extraction_timing(cfg.pools.pool_name, ds, layers)})
    print(json.dumps(out, indent=1))
    sizes = sorted({2, 4, 8, 16, 32, 64, max(2, int(len(qids) * 0.8) - 1)} & set(range(2, int(len(qids) * 0.8))))
    curve = probe_learning_curve(feats, correct, train_questions=sizes, k=5, C=0.01, repeats=args.repeats)
    print(curve.to_string())
    fit = curve[curve["train_questions"] >= 8]
    if len(fit) >= 2:  # a straight line in log2(training questions): what one more doubling bought so far
        slope = float(np.polyfit(np.log2(fit["train_questions"]), fit["auroc_within"], 1)[0])
        print(f"within-question AUROC per doubling of the training questions (least squares, m >= 8): {slope:+.3f}")
    if args.curve_csv:
        curve.assign(pool=cfg.pools.pool_name, benchmark=ds, layers="-".join(map(str, layers)), C=0.01,
                     repeats=args.repeats).to_csv(args.curve_csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
