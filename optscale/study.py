"""The generator / prompt / decoding study: small pools per arm on questions outside every pool.

``python -m optscale.study run`` samples each arm of ``data/study/arms.yaml`` (config overrides on
the ``cpu`` profile) on the same study questions: positions ``[offset, offset + questions)`` of the
seeded stratified selection order (:mod:`optscale.data.selection`), past the questions any pool uses.
Each arm's samples are an ordinary pool (``data/study/<arm>/<benchmark>.parquet``: resumable,
checkpointed, scored and graded like every pool), and the wall time and tokens of every call are
appended to ``data/study/<arm>/timing.jsonl`` so tokens/s are measured, not estimated. Arms run
round-robin one question at a time, so a time-boxed run (``--hours``) leaves every arm with about
the same number of questions.

``python -m optscale.study report`` prints one row per (arm, benchmark): questions x samples,
single-sample accuracy with a 95% bootstrap CI over questions, truncation, share of samples that
write code, mean tokens and tokens/s.

``python -m optscale.study score --arms A --scorers S1,S2 [--judge-model M]`` adds verifier
columns to the arms' pools (resumable, time-boxed, CPU seconds per scored sample logged), and
``python -m optscale.study verifiers`` prints one row per (arm, benchmark, verifier): AUROC pooled
and within questions, the token-count baseline, BoN@n minus single-sample accuracy with CIs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from .config import PROJECT_ROOT, load_config
from .data.benchmarks import load_benchmark
from .data.selection import select_questions

__all__ = ["STUDY_DIR", "load_arms", "arm_config", "study_problems", "run_study", "study_table", "score_study",
           "verifier_table", "aggregate_study", "combine_study", "study_caption", "plot_study", "main"]

STUDY_DIR = PROJECT_ROOT / "data" / "study"
CODE = re.compile(r"```|\bdef \w+\(|\bprint\(|\bimport \w+")


def load_arms(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    path = Path(path) if path else STUDY_DIR / "arms.yaml"
    arms = yaml.safe_load(path.read_text())
    if not isinstance(arms, dict) or not all(isinstance(v, dict) for v in arms.values()):
        raise ValueError(f"{path}: expected a mapping of arm name -> overrides mapping")
    return arms


def arm_config(arm: str, arms: dict[str, dict[str, Any]], dataset: str, samples: int, cap: int,
               profile: str = "cpu"):
    if arm not in arms:
        raise KeyError(f"unknown arm {arm!r}; arms: {sorted(arms)}")
    over = dict(arms[arm])
    profile = over.pop("profile", profile)  # an arm may be a whole profile (the pools' own setting)
    over.update({f"sampling.n_samples.{dataset}": samples, "scoring.scorers": ["self-certainty"],
                 "scoring.primary": "self-certainty"})
    if cap:
        over[f"sampling.max_new_tokens.{dataset}"] = cap
    return load_config(profile, over)


def study_problems(dataset: str, questions: int, offset: int, seed: int = 0, data_dir: Any = None):
    return select_questions(load_benchmark(dataset, data_dir), questions, "stratified", seed, offset)


def run_study(arm_names: Sequence[str], datasets: Sequence[str], questions: int, samples: int,
              caps: dict[str, int], offset: int, hours: float = 0.0, out_dir: Path = STUDY_DIR) -> None:
    """Round-robin over arms, one question at a time, until every arm has ``questions`` questions
    per benchmark or the deadline passes (no new question starts after it)."""
    from .data.generation import generate_pool
    from .data.pools import read_pool
    from .sampling import get_sampler
    from .scoring.scorers import get_scorer

    arms = load_arms(out_dir / "arms.yaml")
    deadline = time.time() + hours * 3600 if hours else None
    problems = {ds: study_problems(ds, questions, offset[ds] if isinstance(offset, dict) else offset)
                for ds in datasets}
    for arm in arm_names:
        if arm not in arms:
            raise KeyError(f"unknown arm {arm!r}; arms: {sorted(arms)}")
    samplers: dict[str, Any] = {}
    try:
        while True:
            progressed = False
            for ds in datasets:
                for arm in arm_names:
                    if deadline is not None and time.time() >= deadline:
                        print(f"study: stopping after {hours} h; rerun to continue", file=sys.stderr)
                        return
                    cfg = arm_config(arm, arms, ds, samples, caps.get(ds, 0))
                    path = out_dir / arm / f"{ds}.parquet"
                    have = read_pool(path, allow_partial_scores=True).n_questions if path.is_file() else 0
                    if have >= len(problems[ds]):
                        continue
                    key = json.dumps(cfg.to_dict()["sampling"], sort_keys=True, default=list)
                    if arm not in samplers or samplers[arm][0] != key:
                        if arm in samplers:
                            samplers[arm][1].close()
                        # one model in memory at a time: close the other arms' samplers
                        for other in list(samplers):
                            samplers.pop(other)[1].close()
                        samplers[arm] = (key, get_sampler(cfg.sampling.backend, cfg.sampling))
                    sampler = samplers[arm][1]
                    t0, c0 = time.time(), time.process_time()
                    before = _tokens(path)
                    generate_pool(cfg, ds, problems[ds], sampler, [get_scorer("self-certainty", cfg.scoring)],
                                  path=path, max_questions=1, flush_every=1, progress=False)
                    dt, cpu = time.time() - t0, time.process_time() - c0
                    toks = _tokens(path) - before
                    with open(out_dir / arm / "timing.jsonl", "a") as f:
                        f.write(json.dumps({"dataset": ds, "seconds": round(dt, 2), "cpu_seconds": round(cpu, 2),
                                            "samples": samples, "tokens": int(toks),
                                            "threads": getattr(sampler, "n_threads", None)}) + "\n")
                    print(f"study {arm} {ds}: {have + 1}/{len(problems[ds])} questions, {toks} tokens in {dt:.0f} s "
                          f"({toks / max(dt, 1e-9):.1f} tokens/s)", file=sys.stderr, flush=True)
                    progressed = True
            if not progressed:
                return
    finally:
        for _, s in samplers.values():
            s.close()


def _tokens(path: Path) -> int:
    from .data.pools import read_pool

    if not path.is_file():
        return 0
    return int(read_pool(path, allow_partial_scores=True).df["n_tokens"].sum())


def study_table(arm_names: Sequence[str] | None = None, out_dir: Path = STUDY_DIR, reps: int = 2000,
                seed: int = 0) -> pd.DataFrame:
    from .evaluation.curves import bootstrap_mean_ci
    from .data.pools import read_pool

    arms = load_arms(out_dir / "arms.yaml")
    rows = []
    for arm in arm_names or list(arms):
        for path in sorted((out_dir / arm).glob("*.parquet")):
            pool = read_pool(path, allow_partial_scores=True)
            df = pool.df
            per_q = df.groupby("question_id", sort=False)["correct"].mean().to_numpy()
            acc, lo, hi = bootstrap_mean_ci(per_q, reps, seed)
            timing = out_dir / arm / "timing.jsonl"
            tps = np.nan
            if timing.is_file():
                t = pd.read_json(timing, lines=True)
                t = t[t["dataset"] == pool.dataset]
                if len(t) and t["seconds"].sum() > 0:
                    tps = t["tokens"].sum() / t["seconds"].sum()
            rows.append({
                "arm": arm, "benchmark": pool.dataset, "questions": pool.n_questions, "samples": pool.n_per_question,
                "accuracy": acc, "accuracy_lo": lo, "accuracy_hi": hi,
                "truncated": float((df["finish_reason"] == "length").mean()),
                "writes_code": float(df["text"].map(lambda t: bool(CODE.search(t))).mean()),
                "no_answer": float(df["answer"].isna().mean()),
                "mean_tokens": float(df["n_tokens"].mean()),
                "tokens_per_s": tps,
            })
    return pd.DataFrame(rows)


def score_study(arm_names: Sequence[str], scorer_names: Sequence[str], judge_model: str | None = None,
                datasets: Sequence[str] | None = None, out_dir: Path = STUDY_DIR, hours: float = 0.0) -> None:
    """Add each scorer's column to the arms' pools (resumable: only unscored questions), and append
    the CPU seconds per scored sample to ``data/study/<arm>/scoring.jsonl``. Question by question,
    arms round-robin, until done or the deadline (no new question after it)."""
    from .data.pools import read_pool, score_pool
    from .scoring.scorers import get_scorer

    deadline = time.time() + hours * 3600 if hours else None
    base = load_config("cpu", {"scoring.judge_model": judge_model} if judge_model else None)
    scorers = {name: get_scorer(name, base.scoring) for name in scorer_names}
    for name, sc in scorers.items():
        for arm in arm_names:
            for path in sorted((out_dir / arm).glob("*.parquet")):
                if datasets and path.stem not in datasets:
                    continue
                questions = {p.id: p.question for p in load_benchmark(path.stem)}
                while True:
                    if deadline is not None and time.time() >= deadline:
                        print("study score: deadline reached; rerun to continue", file=sys.stderr)
                        return
                    df = read_pool(path, allow_partial_scores=True).df
                    col = f"score__{sc.name}"
                    todo = df if col not in df else df[df[col].isna()]
                    if todo.empty:
                        break
                    qid = todo["question_id"].iloc[0]
                    t0, c0 = time.time(), time.process_time()
                    score_pool(path, sc, questions, progress=False, max_questions=1)
                    n = int((df["question_id"] == qid).sum())
                    with open(out_dir / arm / "scoring.jsonl", "a") as f:
                        f.write(json.dumps({"dataset": path.stem, "scorer": sc.name, "samples": n,
                                            "seconds": round(time.time() - t0, 2),
                                            "cpu_seconds": round(time.process_time() - c0, 2)}) + "\n")


def verifier_table(arm_names: Sequence[str] | None = None, out_dir: Path = STUDY_DIR, reps: int = 2000,
                   seed: int = 0, orders: int = 200) -> pd.DataFrame:
    """One row per (arm, benchmark, verifier): accuracy, truncation, AUROC pooled and within
    questions (CI), the token-count baseline, BoN@n minus single-sample accuracy (CI) and the
    CPU seconds per scored sample (0 for scores read off the sampler's log-probs)."""
    from .evaluation.curves import TOKENS_SCORER, pool_status
    from .data.pools import read_pool, replay_orders

    arms = load_arms(out_dir / "arms.yaml")
    rows = []
    for arm in arm_names or list(arms):
        cost = {}
        sj = out_dir / arm / "scoring.jsonl"
        if sj.is_file():
            t = pd.read_json(sj, lines=True)
            for (ds, sc), g in t.groupby(["dataset", "scorer"]):
                cost[(ds, sc)] = g["cpu_seconds"].sum() / max(g["samples"].sum(), 1)
        for path in sorted((out_dir / arm).glob("*.parquet")):
            pool = read_pool(path, allow_partial_scores=True)
            r = pool_status(pool, replay_orders(pool.n_questions, pool.n_per_question, orders, seed), reps, seed)
            for sc in pool.scorers + [TOKENS_SCORER]:
                rows.append({
                    "arm": arm, "benchmark": pool.dataset, "questions": pool.n_questions, "samples": pool.n_per_question,
                    "accuracy": r["single_sample_accuracy"], "truncated": r["truncated_rate"], "verifier": sc,
                    "auroc_pooled": r[f"auroc_{sc}"], "auroc_within": r[f"auroc_within_{sc}"],
                    "auroc_within_lo": r[f"auroc_within_{sc}_lo"], "auroc_within_hi": r[f"auroc_within_{sc}_hi"],
                    "mixed_questions": r[f"auroc_within_questions_{sc}"],
                    "bon_gain": r.get(f"bon_gain__{sc}", np.nan), "bon_gain_lo": r.get(f"bon_gain__{sc}_lo", np.nan),
                    "bon_gain_hi": r.get(f"bon_gain__{sc}_hi", np.nan),
                    # a derived column (aggregate_study) costs what its source scorer cost
                    "cpu_s_per_sample": cost.get((pool.dataset, pool.meta.get("scorers", {}).get(sc, {})
                                                  .get("source_scorer", sc)), 0.0),
                })
    return pd.DataFrame(rows)


def aggregate_study(arm: str, scorer: str, hows: Sequence[str], out_dir: Path = STUDY_DIR) -> list[str]:
    """Write ``<scorer>-<how>`` columns that aggregate a step-scored verifier's stored step scores
    another way (e.g. the per-step LM judge by its ``min`` or ``last`` step, besides the ``mean``
    it was scored with), so the verifier table reports each aggregation. No model is run. Samples
    the scorer has not reached yet stay unscored (NaN), as in the source column."""
    from .data.pools import read_pool, write_score_column
    from .scoring.scorers import aggregate_steps

    written = []
    paths = sorted((out_dir / arm).glob("*.parquet"))
    for path in paths:
        df = read_pool(path, allow_partial_scores=True).df
        col = f"step_scores__{scorer}"
        if col not in df:
            continue
        for how in hows:
            name = f"{scorer}-{how}"
            scores = np.array([np.nan if v is None else aggregate_steps(v, how) for v in df[col]])
            write_score_column(path, name, scores, {"scorer": name, "source_scorer": scorer, "aggregation": how,
                                                    "definition": f"{how} of {scorer}'s stored step scores"})
            written.append(f"{path.stem}:{name}")
    if not written:
        raise ValueError(f"no pool of arm {arm!r} under {out_dir} has step scores of {scorer!r}")
    return written


def combine_study(arm: str, features: Sequence[str], folds: int = 5, seed: int = 0,
                  out_dir: Path = STUDY_DIR) -> dict[str, Any]:
    """Fit the logistic-regression combination of ``features`` on an arm's study pools, write
    its out-of-fold P(correct) as the ``combined-oof`` column of each pool (so the verifier table
    reports its held-out AUROC) and the model fitted on all study questions to
    ``data/study/<arm>/combined.json`` (for :func:`optscale.scoring.combinations.add_combined_score`)."""
    from .data.pools import read_pool, write_score_column
    from .scoring.combinations import fit_combination

    paths = sorted((out_dir / arm).glob("*.parquet"))
    pools = [read_pool(p, allow_partial_scores=True) for p in paths]
    oof, model = fit_combination(pools, features, folds=folds, seed=seed)
    description = {"scorer": "combined-oof", "features": list(features), "folds": folds, "seed": seed,
                   "definition": "out-of-fold P(correct) of a logistic regression on the features, folds by question"}
    for path, s in zip(paths, oof):
        write_score_column(path, "combined-oof", s, description)
    model["arm"] = arm
    (out_dir / arm / "combined.json").write_text(json.dumps(model, indent=1) + "\n")
    return model


def study_caption(arms: pd.DataFrame, out_dir: Path = STUDY_DIR) -> str:
    """Names every arm's pool from its own metadata: generator and backend, prompt, decoding,
    questions x samples, seed."""
    from .data.pools import read_pool

    parts = []
    for r in arms.itertuples():
        meta = read_pool(out_dir / r.arm / f"{r.benchmark}.parquet", allow_partial_scores=True).meta
        gen, smp = meta.get("generator", {}), meta.get("sampling", {})
        extra = "".join([
            f", top-k {smp['top_k']}" if smp.get("top_k") else "",
            f", repetition penalty {smp['repetition_penalty']}" if smp.get("repetition_penalty", 1.0) != 1.0 else "",
            ", system prompt" if smp.get("system_prompt") else "",
        ])
        parts.append(f"{r.arm} ({gen.get('model')}, {gen.get('backend')}, prompt {smp.get('prompt_template')}, "
                     f"T {smp.get('temperature')}, top-p {smp.get('top_p')}{extra}; {r.benchmark} "
                     f"{r.questions} x {r.samples}, seed {meta.get('seed')})")
    return ("Study pools (questions at positions 400+ of the seeded stratified order, outside every pool): "
            + "; ".join(parts) + ". 95% bootstrap CIs over questions.")


def plot_study(arms: pd.DataFrame, verifiers: pd.DataFrame | None = None):
    """Left: single-sample accuracy per arm and benchmark (95% CI). Right: within-question AUROC
    per (arm, verifier) with CIs; the token-count baseline drawn as an open marker."""
    import matplotlib.pyplot as plt

    ncols = 2 if verifiers is not None and len(verifiers) else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 0.45 * max(len(arms), 4) + 1.6), squeeze=False)
    ax = axes[0, 0]
    labels = [f"{r.arm} · {r.benchmark}" for r in arms.itertuples()]
    y = np.arange(len(arms))
    ax.errorbar(arms["accuracy"], y, xerr=[arms["accuracy"] - arms["accuracy_lo"], arms["accuracy_hi"] - arms["accuracy"]],
                fmt="o", color="k", capsize=2, lw=0.8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("single-sample accuracy")
    if ncols == 2:
        ax = axes[0, 1]
        v = verifiers.dropna(subset=["auroc_within"]).reset_index(drop=True)
        labels = [f"{r.arm} · {r.benchmark} · {r.verifier}" for r in v.itertuples()]
        y = np.arange(len(v))
        base = v["verifier"] == "fewer-tokens"
        for mask, face in ((~base, "k"), (base, "white")):
            g = v[mask]
            ax.errorbar(g["auroc_within"], y[mask.to_numpy()],
                        xerr=[g["auroc_within"] - g["auroc_within_lo"], g["auroc_within_hi"] - g["auroc_within"]],
                        fmt="o", mfc=face, color="k", capsize=2, lw=0.8)
        ax.axvline(0.5, color="0.6", lw=0.8, ls="--")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("AUROC within questions (open: token count alone)")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optscale.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--arms", required=True, help="comma-separated arm names from data/study/arms.yaml")
    r.add_argument("--datasets", default="gsm8k,math500")
    r.add_argument("--questions", type=int, default=40)
    r.add_argument("--samples", type=int, default=8)
    r.add_argument("--caps", default="", help="token cap per benchmark, e.g. gsm8k=512 (default: the arm's profile)")
    r.add_argument("--offset", type=int, default=400, help="position in the stratified order of the first study question")
    r.add_argument("--hours", type=float, default=0)
    sc = sub.add_parser("score", help="add verifier columns to the arms' pools")
    sc.add_argument("--arms", required=True)
    sc.add_argument("--scorers", required=True, help="e.g. lowest-group-confidence,tail-confidence,answer-judge")
    sc.add_argument("--judge-model", default="", help="scoring.judge_model for lm-judge / answer-judge")
    sc.add_argument("--datasets", default="")
    sc.add_argument("--hours", type=float, default=0)
    ag = sub.add_parser("aggregate", help="add other aggregations of a step-scored verifier (no model run)")
    ag.add_argument("--arm", required=True)
    ag.add_argument("--scorer", default="lm-judge")
    ag.add_argument("--how", default="min,last", help="comma-separated: mean|min|last|prod")
    cb = sub.add_parser("combine", help="fit the logistic-regression combination of verifier features")
    cb.add_argument("--arm", required=True)
    cb.add_argument("--features", required=True, help="e.g. self-certainty,tail-confidence,answer-judge,log-tokens")
    cb.add_argument("--folds", type=int, default=5)
    for name in ("report", "verifiers"):
        rep = sub.add_parser(name)
        rep.add_argument("--arms", default="")
        rep.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        caps = {k: int(v) for k, v in (kv.split("=") for kv in args.caps.split(","))} if args.caps else {}
        run_study(args.arms.split(","), args.datasets.split(","), args.questions, args.samples, caps,
                  args.offset, args.hours)
        return 0
    if args.cmd == "score":
        score_study(args.arms.split(","), args.scorers.split(","), args.judge_model or None,
                    args.datasets.split(",") if args.datasets else None, hours=args.hours)
        return 0
    if args.cmd == "aggregate":
        print("\n".join(aggregate_study(args.arm, args.scorer, args.how.split(","))))
        return 0
    if args.cmd == "combine":
        model = combine_study(args.arm, args.features.split(","), folds=args.folds)
        print(json.dumps(model, indent=1))
        return 0
    arms = args.arms.split(",") if args.arms else None
    table = study_table(arms) if args.cmd == "report" else verifier_table(arms)
    if args.format == "markdown":
        print(table.to_markdown(index=False, floatfmt=".3f"))
    elif args.format == "csv":
        print(table.to_csv(index=False), end="")
    else:
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
