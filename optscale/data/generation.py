"""Generating pools with checkpoint / resume, and regrading them.

Generation keeps several questions in flight, appends each finished question (in any order) to a
JSONL checkpoint next to the pool and merges the checkpoint into the Parquet file every few
questions (write to a temporary file, then rename, rows sorted by question), so a killed run loses
at most the questions in flight and a rerun resumes with the missing ones. A pool is never resumed
under another sampling setting. Regrading reapplies the current grading rule to stored samples.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..config import RunConfig
from ..sampling.base import Completion, SampleRequest, Sampler, derive_seed, load_prompt_template
from .benchmarks import Problem
from .grading import GRADING_RULE_VERSION, Grader, default_grader, grade, grading_rule
from .pools import PoolError, pool_path, read_pool, write_pool

__all__ = ["merge_checkpoint", "regrade_frame", "regrade_pool", "generate_pool"]

_log = logging.getLogger("optscale.data.generation")


def regrade_frame(df: pd.DataFrame, grader: Grader | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``answer`` and ``correct`` of every row derived again from its ``text``, ``finish_reason``
    and ``gold`` by the current grading rule (no model). Returns the new frame and the pool's
    ``meta["grading"]`` entry (:func:`_grading_meta`)."""
    graded = [_grade_row(g, t, f, grader) for g, t, f in zip(df["gold"], df["text"], df["finish_reason"])]
    out = df.copy()
    out["answer"] = pd.Series([a for a, _, _ in graded], index=df.index, dtype=object)
    out["correct"] = [c for _, c, _ in graded]
    return out, _grading_meta([a for a, _, unresolved in graded if unresolved])


def _grade_row(gold: str, text: str, finish_reason: str, grader: Grader | None = None) -> tuple[str | None, bool, bool]:
    """(answer, correct, unresolved): unresolved when the grader's CPU budget cut a parse or a
    comparison short (:mod:`optscale.data.grading`; the answer then counts as not correct)."""
    grader = grader or default_grader()
    with grader.record() as stats:
        ans, ok = grader.grade(gold, text, finish_reason)
    return ans, bool(ok), stats.timeouts > 0


def _grading_meta(unresolved_answers: Sequence[str]) -> dict[str, Any]:
    """A pool's ``meta["grading"]``: the rule (:func:`optscale.data.grading.grading_rule`) and the
    samples whose grading stayed unresolved (their number and a few of their answers)."""
    return {**grading_rule(default_grader().cpu_budget_s), "unresolved_samples": len(unresolved_answers),
            "unresolved_examples": sorted(set(unresolved_answers))[:10]}


def _add_grading(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``meta["grading"]`` of a pool written in several merges (same rule): counts summed."""
    if not old or old.get("version") != new["version"]:
        return new
    examples = sorted(set(old.get("unresolved_examples", [])) | set(new["unresolved_examples"]))[:10]
    return {**new, "unresolved_samples": old.get("unresolved_samples", 0) + new["unresolved_samples"],
            "unresolved_examples": examples}


def regrade_pool(path: str | os.PathLike) -> dict[str, Any]:
    """Regrade a pool file in place (:func:`regrade_frame`; atomic rewrite). Returns how many
    answers and correct flags changed and the single-sample accuracy before and after."""
    pool = read_pool(path, allow_partial_scores=True)
    new, grading = regrade_frame(pool.df)
    old_ans = pool.df["answer"].astype(object).to_numpy(dtype=object, na_value=None)  # a missing answer: None
    summary = {
        "dataset": pool.dataset, "samples": len(new),
        "answers_changed": int((old_ans != new["answer"].to_numpy(dtype=object)).sum()),
        "correct_changed": int((pool.df["correct"].astype(bool).to_numpy() != new["correct"].to_numpy()).sum()),
        "accuracy_before": float(pool.df["correct"].astype(bool).mean()), "accuracy_after": float(new["correct"].mean()),
        "grading_before": pool.meta.get("grading", {}).get("version", 1), "grading": grading,
    }
    write_pool(new, {**pool.meta, "grading": grading}, path, allow_partial_scores=True)
    return summary


def _rows_for_question(problem: Problem, comps: Sequence[Completion], scores: dict[str, list]) -> list[dict]:
    rows = []
    for k, c in enumerate(comps):
        # a truncated sample (finish_reason "length") must state its answer: no last-number fallback
        ans, ok, unresolved = _grade_row(problem.answer, c.text, c.finish_reason)
        row = {
            "dataset": problem.dataset,
            "question_id": problem.id,
            "question_index": problem.index,
            "sample_index": k,
            "text": c.text,
            "answer": ans,
            "gold": problem.answer,
            "correct": bool(ok),
            "n_tokens": int(c.n_tokens),
            "finish_reason": c.finish_reason,
            "seed": int(c.seed),
            "token_logprobs": [float(x) for x in c.token_logprobs],
            "token_confidence": [float(x) for x in c.token_confidence],
            "grading_unresolved": unresolved,  # counted into meta["grading"] at the merge, not stored
        }
        for name, res in scores.items():
            row[f"score__{name}"] = res[k].score
            row[f"step_scores__{name}"] = list(res[k].step_scores)
        rows.append(row)
    return rows


def _read_checkpoint(path: Path) -> list[dict]:
    """Rows of complete questions from a JSONL checkpoint. A truncated last line (a run killed
    mid-write) is dropped with a warning; a malformed line elsewhere is an error."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                import warnings

                warnings.warn(f"{path}: line {i + 1} is truncated (killed run); dropping that question")
                break
            raise PoolError(f"{path}: line {i + 1} is not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "rows" not in rec:
            raise PoolError(f"{path}: line {i + 1}: expected an object with field 'rows'")
        rows.extend(rec["rows"])
    return rows


def _merge_checkpoint_rows(path: Path, ckpt: Path, base_df: pd.DataFrame | None, meta: dict) -> pd.DataFrame | None:
    """Append the checkpoint's complete questions to ``base_df``, write the pool (validated), then
    delete the checkpoint. Returns the merged frame (``base_df`` when the checkpoint is empty)."""
    rows = _read_checkpoint(ckpt)
    if not rows:
        return base_df
    new_df = pd.DataFrame(rows)
    flags = new_df.pop("grading_unresolved") if "grading_unresolved" in new_df else None
    parts = ([base_df] if base_df is not None else []) + [new_df]
    df = pd.concat(parts, ignore_index=True).drop_duplicates(["question_id", "sample_index"], keep="first")
    # a column scored offline (`generate score`) before the pool grew: its new rows are unscored
    # (score NaN, step scores None, as `open_score_column` leaves them; concat would give NaN)
    for col in [c for c in df.columns if c.startswith("step_scores__")]:
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    older_pool = base_df is not None and meta.get("grading", {}).get("version") != GRADING_RULE_VERSION
    if older_pool or flags is None or flags.isna().any():
        # a pool begun under an older grading rule, or checkpoint rows an older version wrote
        df, meta["grading"] = regrade_frame(df)
    else:  # graded by this rule where the question was sampled: record what stayed unresolved
        unresolved = new_df.loc[flags.astype(bool).to_numpy(), "answer"].dropna().astype(str).tolist()
        meta["grading"] = _add_grading(meta.get("grading"), _grading_meta(unresolved))
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_pool(df, meta, path, allow_partial_scores=True)
    ckpt.unlink(missing_ok=True)
    return df


def merge_checkpoint(path: str | os.PathLike) -> int:
    """Merge the checkpoint a stopped ``generate_pool`` left beside ``path`` into the pool, without
    loading a model (``generate_pool`` does the same first thing when it resumes). Returns the
    number of questions merged. The pool itself must exist: its metadata (generator, scorers) is
    written by the run that created it."""
    path = Path(path)
    ckpt = path.with_suffix(".checkpoint.jsonl")
    rows = _read_checkpoint(ckpt)
    if not rows:
        return 0
    if not path.is_file():
        raise PoolError(f"{ckpt}: no pool at {path} to merge into; rerun `python -m optscale.generate pools`, "
                        "which merges the checkpoint when it starts")
    existing = read_pool(path, allow_partial_scores=True)
    before = existing.n_questions
    merged = _merge_checkpoint_rows(path, ckpt, existing.df, dict(existing.meta))
    return int(merged["question_id"].nunique()) - before


def _git_hash() -> str | None:
    from ..provenance import git_hash

    return git_hash()


def _complete_questions(sampler: Sampler, scorers: Sequence[Any], jobs: Iterable[tuple[Problem, SampleRequest]],
                        questions_in_flight: int | None) -> Iterable[tuple[Problem, list[Completion], dict[str, list]]]:
    """``(problem, completions, scores)`` for every job, as each question completes.

    Three ways, by what the sampler offers: ``iter_questions`` (a distributed runner whose workers
    sample and score; see :mod:`optscale.sampling.distributed`), ``iter_complete`` (the endpoint sampler:
    many questions in flight across replicas, returned in completion order), or plain
    ``generate`` with ``questions_in_flight`` requests per call (in-process backends batch across
    questions). ``jobs`` is read lazily, so a deadline checked in it starts no new question late.
    Local ``scorers`` score every question whose scores did not come back with it."""

    def scored(p: Problem, comps: list[Completion], scores: dict[str, list] | None = None):
        scores = dict(scores or {})
        for sc in scorers:
            if sc.name not in scores:
                scores[sc.name] = sc.score(p.question, comps)
        return p, comps, scores

    if hasattr(sampler, "iter_questions"):
        for p, comps, scores in sampler.iter_questions(jobs, questions_in_flight):
            yield scored(p, comps, scores)
        return
    if hasattr(sampler, "iter_complete"):
        for p, comps in sampler.iter_complete(jobs, max_open=questions_in_flight):
            yield scored(p, comps)
        return
    k = max(int(questions_in_flight or getattr(sampler, "questions_in_flight", 1) or 1), 1)
    it = iter(jobs)
    while True:
        batch = list(islice(it, k))
        if not batch:
            return
        outs = sampler.generate([req for _, req in batch])
        if len(outs) != len(batch):
            raise PoolError(f"sampler {sampler.name!r} returned {len(outs)} results for {len(batch)} requests")
        for (p, _), comps in zip(batch, outs):
            yield scored(p, comps)


_GRADING_POOL: Any = None


def _grading_pool() -> Any:
    """One grading process for the session, forked on first use (before the sampler's threads
    start, and reused by later calls); grading runs there while this process drives the replicas."""
    global _GRADING_POOL
    if _GRADING_POOL is None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        _GRADING_POOL = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
        _GRADING_POOL.submit(grade, "1", "1")  # forks now (no sampler thread yet); loads math-verify there
    return _GRADING_POOL


def _replica_summary(sampler: Sampler, before: list[dict] | None) -> list[dict] | None:
    """Per-replica counts of this run (the sampler's counters minus those at its start)."""
    if not hasattr(sampler, "run_summary"):
        return None
    now = sampler.run_summary()
    if before is None:
        return now
    prev = {r["url"]: r for r in before}
    out = []
    for r in now:
        b = prev.get(r["url"], {})
        out.append({**r, **{k: r[k] - b.get(k, 0) for k in ("served", "failed", "retried", "tokens")
                            if isinstance(r.get(k), int)}})
    return out


# sampling keys that change what a sample is (the rest: batching, endpoints, retries, threads)
_SAMPLE_KEYS = ("backend", "model", "dtype", "temperature", "top_p", "top_k", "repetition_penalty", "system_prompt",
                "prompt_template", "top_k_logprobs")


def _changed_sampling(old: dict[str, Any], new: dict[str, Any], dataset: str) -> list[str]:
    """``key: old -> new`` for every sample-defining sampling key that differs (a key the old
    pool did not record is compared with its default, i.e. the new config's value when it is the
    default)."""
    from ..config import SamplingConfig

    defaults = SamplingConfig()
    out = []
    for k in _SAMPLE_KEYS:
        a, b = old.get(k, getattr(defaults, k)), new.get(k)
        if a != b:
            out.append(f"sampling.{k}: {a!r} -> {b!r}")
    a = (old.get("max_new_tokens") or {}).get(dataset)
    b = (new.get("max_new_tokens") or {}).get(dataset)
    if a is not None and a != b:
        out.append(f"sampling.max_new_tokens.{dataset}: {a} -> {b}")
    return out


def generate_pool(
    config: RunConfig,
    dataset: str,
    problems: Sequence[Problem],
    sampler: Sampler,
    scorers: Sequence[Any] = (),
    path: str | os.PathLike | None = None,
    flush_every: int = 4,
    progress: bool = True,
    max_questions: int | None = None,
    on_question: Callable[[Problem], None] | None = None,
    deadline: float | None = None,
    questions_in_flight: int | None = None,
    grading_workers: int | None = None,
) -> Path:
    """Sample ``n_samples[dataset]`` completions for every problem not yet in the pool, grade
    and score them, checkpoint each question as it completes, merge into Parquet every
    ``flush_every`` questions and at the end. Returns the pool path. Safe to kill and rerun.

    Several questions are in flight at once: ``questions_in_flight`` (default: the sampler's
    ``questions_in_flight``, else 1) requests per ``generate()`` call for in-process samplers;
    for the endpoint sampler the most questions open while samples stream across the replicas.
    Questions complete and are checkpointed in any order; each is sampled with its own seed
    (``derive_seed(seed, dataset, question id)``), so the pool does not depend on that order, and
    the Parquet file is sorted by question. If the sampler fails, every question that finished
    is in the checkpoint before the error is raised.

    ``max_questions`` stops after that many new questions (for interleaving benchmarks);
    ``deadline`` (a ``time.time()`` value) starts no new question after it, so a time-boxed run
    overshoots by at most the questions in flight. ``grading_workers`` (default: 1 for samplers
    that stream questions over HTTP, 0 for in-process and Ray ones) grades in a separate process, so that grading
    (math-verify, pure Python) does not hold up the HTTP event loop. A sampler with replicas (``run_summary()``)
    has its per-replica counts of this run logged and stored in the metadata (``run_summary``).
    """
    from tqdm.auto import tqdm

    path = Path(path) if path else pool_path(config, dataset)
    ckpt = path.with_suffix(".checkpoint.jsonl")
    s = config.sampling
    n, cap = s.n_samples[dataset], s.max_new_tokens[dataset]
    meta = {
        "dataset": dataset,
        "pool_name": config.pools.pool_name,
        "generator": sampler.describe(),
        "scorers": {**{sc.name: sc.describe() for sc in scorers},
                    **(sampler.scorer_descriptions() if hasattr(sampler, "scorer_descriptions") else {})},
        "n_samples": n,
        "max_new_tokens": cap,
        "seed": s.seed,
        "sampling": config.to_dict()["sampling"],
        "git_hash": _git_hash(),
    }
    existing = read_pool(path, allow_partial_scores=True) if path.is_file() else None
    base_df = existing.df if existing is not None else None
    if existing is not None:
        if existing.meta.get("n_samples") != n or existing.meta.get("seed") != s.seed:
            raise PoolError(f"{path}: existing pool has n_samples={existing.meta.get('n_samples')}, "
                            f"seed={existing.meta.get('seed')}; this run asks for n_samples={n}, seed={s.seed}. "
                            "Use another pools.pool_name for a different setting.")
        changed = _changed_sampling(existing.meta.get("sampling") or {}, meta["sampling"], dataset)
        if changed:
            raise PoolError(f"{path}: the existing pool was sampled with a different setting ({'; '.join(changed)}); "
                            "resuming would mix two settings in one pool. Use another pools.pool_name (or study arm).")
        meta = {**existing.meta, "git_hash": meta["git_hash"]}
    ck_rows = _read_checkpoint(ckpt)
    done = set(base_df["question_id"]) if base_df is not None else set()
    done |= {r["question_id"] for r in ck_rows}
    todo = [p for p in problems if p.id not in done]
    if max_questions is not None:
        todo = todo[:max_questions]

    def flush() -> None:
        nonlocal base_df
        base_df = _merge_checkpoint_rows(path, ckpt, base_df, meta)

    flush()  # a checkpoint left by a killed run is merged first
    template = load_prompt_template(s.prompt_template)

    def jobs():
        for p in todo:
            if deadline is not None and time.time() >= deadline:
                return
            yield p, SampleRequest(
                prompt=template.replace("{question}", p.question).strip(),
                n=n, max_new_tokens=cap, seed=derive_seed(s.seed, dataset, p.id), key=f"{dataset}/{p.id}",
            )

    before = sampler.run_summary() if hasattr(sampler, "run_summary") else None
    streams = hasattr(sampler, "iter_complete")  # an HTTP event loop that grading would slow down
    graders = _grading_pool() if (grading_workers if grading_workers is not None else streams) and todo else None
    t0, finished, toks, since = time.time(), 0, 0, 0
    bar = tqdm(total=len(todo), desc=f"{dataset} pool", disable=not progress)
    pending: deque = deque()  # (problem, completions, future rows) graded in the grading process
    ok = False

    def write(p: Problem, comps: Sequence[Completion], rows: list[dict]) -> None:
        nonlocal finished, toks, since
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        with open(ckpt, "a") as f:
            f.write(json.dumps({"question_id": p.id, "rows": rows}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        finished += 1
        toks += sum(c.n_tokens for c in comps)
        bar.update(1)
        bar.set_postfix(acc=f"{np.mean([r['correct'] for r in rows]):.2f}",
                        tok_s=f"{toks / max(time.time() - t0, 1e-9):.1f}")
        if on_question:
            on_question(p)
        since += 1
        if since >= flush_every:
            flush()
            since = 0

    try:
        for p, comps, scores in _complete_questions(sampler, scorers, jobs(), questions_in_flight):
            if graders is None:
                write(p, comps, _rows_for_question(p, comps, scores))
                continue
            pending.append((p, comps, graders.submit(_rows_for_question, p, comps, scores)))
            while pending and pending[0][2].done():
                q, c, fut = pending.popleft()
                write(q, c, fut.result())
        ok = True
    finally:
        try:  # every question that was sampled is graded and checkpointed, also when sampling failed
            while pending:
                q, c, fut = pending.popleft()
                write(q, c, fut.result())
        finally:
            bar.close()
            summary = _replica_summary(sampler, before)
            if summary is not None:
                meta["run_summary"] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       "questions": finished, "seconds": round(time.time() - t0, 3),
                                       "replicas": summary}
                _log.info("%s: %d question(s) in %.1f s; per replica: %s", dataset, finished, time.time() - t0,
                          "; ".join(f"{r['url']} served {r['served']} failed {r['failed']} retried {r['retried']}"
                                    + ("" if r["alive"] else f" dead since {r['dead_since']}") for r in summary))
    if ok:
        flush()
        if since == 0 and finished and base_df is not None:  # the last flush came before the run summary
            write_pool(base_df, meta, path, allow_partial_scores=True)
    return path
