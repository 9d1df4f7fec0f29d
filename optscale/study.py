"""The generator / prompt / decoding study: small pools per arm on questions outside every pool.

``python -m optscale.study run`` samples each arm of ``data/study/arms.yaml`` (config overrides on
the ``cpu`` profile) on the same study questions: positions ``[offset, offset + questions)`` of the
seeded stratified selection order (:mod:`optscale.selection`), past the questions any pool uses.
Each arm's samples are an ordinary pool (``data/study/<arm>/<benchmark>.parquet``: resumable,
checkpointed, scored and graded like every pool), and the wall time and tokens of every call are
appended to ``data/study/<arm>/timing.jsonl`` so tokens/s are measured, not estimated. Arms run
round-robin one question at a time, so a time-boxed run (``--hours``) leaves every arm with about
the same number of questions.

``python -m optscale.study report`` prints one row per (arm, benchmark): questions x samples,
single-sample accuracy with a 95% bootstrap CI over questions, truncation, share of samples that
write code, mean tokens and tokens/s.
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
from .data import load_benchmark
from .selection import select_questions

__all__ = ["STUDY_DIR", "load_arms", "arm_config", "study_problems", "run_study", "study_table", "main"]

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
    over = {**arms[arm], f"sampling.n_samples.{dataset}": samples, f"sampling.max_new_tokens.{dataset}": cap,
            "scoring.scorers": ["self-certainty"], "scoring.primary": "self-certainty"}
    return load_config(profile, over)


def study_problems(dataset: str, questions: int, offset: int, seed: int = 0, data_dir: Any = None):
    return select_questions(load_benchmark(dataset, data_dir), questions, "stratified", seed, offset)


def run_study(arm_names: Sequence[str], datasets: Sequence[str], questions: int, samples: int,
              caps: dict[str, int], offset: int, hours: float = 0.0, out_dir: Path = STUDY_DIR) -> None:
    """Round-robin over arms, one question at a time, until every arm has ``questions`` questions
    per benchmark or the deadline passes (no new question starts after it)."""
    from .pools import generate_pool, read_pool
    from .samplers import get_sampler
    from .scorers import get_scorer

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
                    cfg = arm_config(arm, arms, ds, samples, caps[ds])
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
                    t0 = time.time()
                    before = _tokens(path)
                    generate_pool(cfg, ds, problems[ds], sampler, [get_scorer("self-certainty", cfg.scoring)],
                                  path=path, max_questions=1, flush_every=1, progress=False)
                    dt = time.time() - t0
                    toks = _tokens(path) - before
                    with open(out_dir / arm / "timing.jsonl", "a") as f:
                        f.write(json.dumps({"dataset": ds, "seconds": round(dt, 2), "tokens": int(toks),
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
    from .pools import merge_checkpoint, read_pool

    if not path.is_file():
        return 0
    return int(read_pool(path, allow_partial_scores=True).df["n_tokens"].sum())


def study_table(arm_names: Sequence[str] | None = None, out_dir: Path = STUDY_DIR, reps: int = 2000,
                seed: int = 0) -> pd.DataFrame:
    from .curves import bootstrap_mean_ci
    from .pools import read_pool

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optscale.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--arms", required=True, help="comma-separated arm names from data/study/arms.yaml")
    r.add_argument("--datasets", default="gsm8k,math500")
    r.add_argument("--questions", type=int, default=40)
    r.add_argument("--samples", type=int, default=8)
    r.add_argument("--caps", default="gsm8k=512,math500=1024", help="token cap per benchmark")
    r.add_argument("--offset", type=int, default=400, help="position in the stratified order of the first study question")
    r.add_argument("--hours", type=float, default=0)
    rep = sub.add_parser("report")
    rep.add_argument("--arms", default="")
    rep.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        caps = {k: int(v) for k, v in (kv.split("=") for kv in args.caps.split(","))}
        run_study(args.arms.split(","), args.datasets.split(","), args.questions, args.samples, caps,
                  args.offset, args.hours)
        return 0
    table = study_table(args.arms.split(",") if args.arms else None)
    if args.format == "markdown":
        print(table.to_markdown(index=False, floatfmt=".3f"))
    elif args.format == "csv":
        print(table.to_csv(index=False), end="")
    else:
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
