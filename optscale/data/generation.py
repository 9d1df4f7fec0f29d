"""Generating pools with checkpoint / resume, and regrading them.

Generation keeps several questions in flight, appends each finished question (in any order) to a
JSONL checkpoint next to the pool and merges the checkpoint into the Parquet file every few
questions (write to a temporary file, then rename, rows sorted by question), so a killed run loses
at most the questions in flight and a rerun resumes with the missing ones. Regrading reapplies the
current grading rule to stored samples.

Integrity:

- A pool is never resumed under another setting. Every checkpoint line is one question,
  ``{"question_id", "settings", "rows"}``, and ``settings`` holds what the pool's metadata will say
  (n, seed, max_new_tokens, the sampling config, generator, scorers); a resume or a merge compares
  each line with the pool (or the run) exactly as it compares a Parquet pool's metadata, and each
  question's sample count with n. A line written before settings were recorded is merged only
  when its sample count matches.
- A run killed mid-write leaves a truncated last line: it is cut off (with a warning), keeping every
  complete line. A bad line anywhere else is an error naming the file and the line; nothing is
  changed, so nothing is lost.
- One writer per pool (:func:`optscale.data.pools.pool_lock`): generation, merge, scoring,
  combination and regrading refuse at once while another process holds the pool.
- "Done" compares question ids: a pool that holds questions outside the selection while some
  selected ones are missing is refused with the difference named.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..config import RunConfig
from ..sampling.base import Completion, SampleRequest, Sampler, derive_seed, load_prompt_template
from .benchmarks import Problem
from .grading import GRADING_RULE_VERSION, Grader, default_grader, grade, grading_rule
from .pools import PoolError, pool_lock, pool_path, read_pool, validate_pool_frame, write_pool

__all__ = ["merge_checkpoint", "regrade_frame", "regrade_pool", "generate_pool", "pool_needs_sampling",
           "checkpoint_path"]

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
    with pool_lock(path, "regrade"):
        pool = read_pool(path, allow_partial_scores=True)
        new, grading = regrade_frame(pool.df)
        old_ans = pool.df["answer"].astype(object).to_numpy(dtype=object, na_value=None)  # a missing answer: None
        summary = {
            "dataset": pool.dataset, "samples": len(new),
            "answers_changed": int((old_ans != new["answer"].to_numpy(dtype=object)).sum()),
            "correct_changed": int((pool.df["correct"].astype(bool).to_numpy() != new["correct"].to_numpy()).sum()),
            "accuracy_before": float(pool.df["correct"].astype(bool).mean()),
            "accuracy_after": float(new["correct"].mean()),
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


def checkpoint_path(path: str | os.PathLike) -> Path:
    """The JSONL checkpoint beside the pool at ``path``."""
    return Path(path).with_suffix(".checkpoint.jsonl")


# what a checkpoint line records of the pool's metadata: enough to check it against a pool or a
# run (:func:`_setting_differences`) and to create the pool from it (:func:`merge_checkpoint`)
_SETTINGS_KEYS = ("dataset", "pool_name", "generator", "scorers", "n_samples", "max_new_tokens", "seed", "sampling")


def _settings(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in _SETTINGS_KEYS if k in meta}


@dataclass
class _Checkpoint:
    """A parsed checkpoint: ``lines`` are ``(line number, question id, settings or None, rows)``."""

    path: Path
    lines: list[tuple[int, str, dict[str, Any] | None, list[dict]]] = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        """The rows of every question, from its first line (a question on two lines: the first)."""
        first = {}
        for _, qid, _, rows in self.lines:
            first.setdefault(qid, rows)
        return [r for rows in first.values() for r in rows]

    @property
    def question_ids(self) -> list[str]:
        return list(dict.fromkeys(q for _, q, _, _ in self.lines))


def _read_checkpoint(path: Path) -> _Checkpoint:
    """The complete questions of a JSONL checkpoint (see the module docstring); the caller holds
    the pool's lock.

    A bad last line (a run killed mid-write) is cut off the file with a warning, so that new lines
    follow the good ones; a bad line elsewhere is a :class:`PoolError` naming the file and the
    line, and the file is left as it is."""
    ck = _Checkpoint(path)
    if not path.is_file():
        return ck
    data = path.read_bytes()
    starts, pos = [], 0
    while pos < len(data):  # (start, end) of every line, the end before its newline
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        starts.append((pos, end))
        pos = end + 1
    last = max((i for i, (a, b) in enumerate(starts) if data[a:b].strip()), default=-1)
    for i, (a, b) in enumerate(starts):
        line = data[a:b]
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:  # JSONDecodeError, or a multi-byte character cut in two
            if i == last:
                import warnings

                kept = len(ck.lines)
                warnings.warn(f"{path}: line {i + 1} is truncated (a run killed mid-write); cut off, keeping the "
                              f"{kept} complete question(s) before it (that question is sampled again)")
                with open(path, "r+b") as f:
                    f.truncate(a)
                    f.flush()
                    os.fsync(f.fileno())
                break
            raise PoolError(f"{path}: line {i + 1} is not valid JSON ({getattr(e, 'msg', e)}); the other lines "
                            f"are intact and nothing was changed: repair or delete line {i + 1} (its question is "
                            "then sampled again) and rerun") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("rows"), list) or "question_id" not in rec:
            raise PoolError(f"{path}: line {i + 1}: expected an object with fields 'question_id' and 'rows'; "
                            "nothing was changed")
        settings = rec.get("settings")
        if settings is not None and not isinstance(settings, dict):
            raise PoolError(f"{path}: line {i + 1}: field 'settings' is not an object; nothing was changed")
        ck.lines.append((i + 1, str(rec["question_id"]), settings, rec["rows"]))
        if i == last and not data.endswith(b"\n"):
            with open(path, "ab") as f:  # a complete last line without its newline: the next line starts anew
                f.write(b"\n")
    return ck


def _setting_differences(old: dict[str, Any], new: dict[str, Any], dataset: str) -> list[str]:
    """``key: old -> new`` for n, seed and every sample-defining sampling key (:func:`_changed_sampling`)
    that differ between two pools' metadata (or a checkpoint line's settings)."""
    out = []
    if old.get("n_samples") != new.get("n_samples"):
        out.append(f"sampling.n_samples.{dataset}: {old.get('n_samples')!r} -> {new.get('n_samples')!r}")
    if old.get("seed") != new.get("seed"):
        out.append(f"sampling.seed: {old.get('seed')!r} -> {new.get('seed')!r}")
    return out + _changed_sampling(old.get("sampling") or {}, new.get("sampling") or {}, dataset)


def _check_checkpoint(ck: _Checkpoint, meta: dict[str, Any], against: str) -> None:
    """Every line of ``ck`` belongs to the pool described by ``meta`` (``against`` says whose
    metadata that is, for the message): the same settings and exactly ``n_samples`` samples
    0..n-1 of its own question. Raises :class:`PoolError` naming the line; changes nothing."""
    dataset, n = meta.get("dataset", "?"), meta.get("n_samples")
    legacy = 0
    for line, qid, settings, rows in ck.lines:
        if settings is None:
            legacy += 1
        else:
            changed = _setting_differences(settings, meta, dataset)
            if changed:
                raise PoolError(
                    f"{ck.path}: line {line} (question {qid!r}) was sampled under another setting than {against} "
                    f"(checkpoint -> {'run' if against == 'this run' else 'pool'}: {'; '.join(changed)}); resuming "
                    "would mix two settings in one pool. "
                    "Nothing was changed: rerun with the setting that wrote the checkpoint to merge it, or move the "
                    "checkpoint aside and use another pools.pool_name.")
        idx = sorted(r.get("sample_index", -1) if isinstance(r, dict) else -1 for r in rows)
        if n is not None and idx != list(range(n)):
            raise PoolError(f"{ck.path}: line {line}: question {qid!r} has {len(rows)} samples (sample_index "
                            f"{idx[:10]}{'...' if len(idx) > 10 else ''}), but {against} has n_samples={n}; "
                            "nothing was changed")
        others = {r.get("question_id") for r in rows} - {qid}
        if others:
            raise PoolError(f"{ck.path}: line {line}: question {qid!r} holds rows of question(s) "
                            f"{sorted(map(str, others))}; nothing was changed")
        datasets = {r.get("dataset") for r in rows} - {dataset}
        if datasets and meta.get("dataset"):
            raise PoolError(f"{ck.path}: line {line}: question {qid!r} has rows of dataset "
                            f"{sorted(map(str, datasets))}, {against} is {dataset!r}; nothing was changed")
    if legacy:
        import warnings

        warnings.warn(f"{ck.path}: {legacy} line(s) record no settings (written by an older version); merged into "
                      f"{against} because their sample counts match n_samples={n}", stacklevel=3)


def _validate_checkpoint_rows(ck: _Checkpoint, new_df: pd.DataFrame) -> None:
    """The checkpoint's rows pass the pool's validation; an error names the checkpoint line."""
    try:
        validate_pool_frame(new_df, ck.path, allow_partial_scores=True)
    except PoolError:
        for line, qid, _, rows in ck.lines:  # which line: validate them one at a time
            try:
                validate_pool_frame(pd.DataFrame(rows).drop(columns=["grading_unresolved"], errors="ignore"),
                                    f"{ck.path}: line {line}", allow_partial_scores=True)
            except PoolError as e:
                raise PoolError(f"{e}; nothing was changed: delete that line (its question is then sampled "
                                "again) and rerun") from None
        raise


def _merge_checkpoint_rows(path: Path, ck: _Checkpoint, base_df: pd.DataFrame | None,
                           meta: dict) -> pd.DataFrame | None:
    """Append the checkpoint's complete questions to ``base_df``, write the pool (validated), then
    delete the checkpoint. Returns the merged frame (``base_df`` when the checkpoint holds no
    question; an empty checkpoint file is deleted). The caller holds the pool's lock and has
    checked the checkpoint (:func:`_check_checkpoint`)."""
    rows = ck.rows
    if not rows:
        ck.path.unlink(missing_ok=True)
        return base_df
    new_df = pd.DataFrame(rows)
    flags = new_df.pop("grading_unresolved") if "grading_unresolved" in new_df else None
    _validate_checkpoint_rows(ck, new_df)
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
    ck.path.unlink(missing_ok=True)
    return df


def merge_checkpoint(path: str | os.PathLike) -> int:
    """Merge the checkpoint a stopped ``generate_pool`` left beside ``path`` into the pool, without
    loading a model (``generate_pool`` does the same first thing when it resumes), under the pool's
    lock. Returns the number of questions merged. Every line is checked against the pool's
    metadata (settings, n); without a pool, the pool is created from the settings the lines
    record (a run stopped before its first merge), and a checkpoint without them is an error."""
    path = Path(path)
    ckpt = checkpoint_path(path)
    if not ckpt.is_file():
        return 0
    with pool_lock(path, "merge"):
        ck = _read_checkpoint(ckpt)
        if not ck.lines:
            ckpt.unlink(missing_ok=True)
            return 0
        if path.is_file():
            existing = read_pool(path, allow_partial_scores=True)
            base_df, meta, before = existing.df, dict(existing.meta), existing.n_questions
            against = f"the pool {path}"
        else:
            recorded = [st for _, _, st, _ in ck.lines if st is not None]
            if len(recorded) < len(ck.lines):
                raise PoolError(f"{ckpt}: no pool at {path} to merge into, and the checkpoint records no settings "
                                "(an older version wrote it); rerun `python -m optscale.generate pools` with the "
                                "setting that wrote it, which merges the checkpoint when it starts")
            base_df, meta, before = None, {**recorded[0], "git_hash": _git_hash()}, 0
            against = f"its line {ck.lines[0][0]}"
        _check_checkpoint(ck, meta, against)
        merged = _merge_checkpoint_rows(path, ck, base_df, meta)
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
# the backends whose samples depend on sampling.dtype
DTYPE_BACKENDS = ("hf-cpu", "vllm")


def _changed_sampling(old: dict[str, Any], new: dict[str, Any], dataset: str) -> list[str]:
    """``key: old -> new`` for every sample-defining sampling key that differs (a key the old
    pool did not record is compared with its default, i.e. the new config's value when it is the
    default)."""
    from ..config import SamplingConfig
    from ..sampling.hf_models import resolve_dtype

    defaults = SamplingConfig()
    out = []
    for k in _SAMPLE_KEYS:
        a, b = old.get(k, getattr(defaults, k)), new.get(k)
        if k == "dtype":  # the dtype computed in (auto resolved on this machine), where the backend uses it
            if new.get("backend") not in DTYPE_BACKENDS:
                continue  # llama.cpp computes in the GGUF's own types; an endpoint chooses its own
            device = "cuda" if new.get("backend") == "vllm" else "cpu"
            a, b = resolve_dtype(a, device), resolve_dtype(b, device)
        if a != b:
            out.append(f"sampling.{k}: {a!r} -> {b!r}")
    a = (old.get("max_new_tokens") or {}).get(dataset)
    b = (new.get("max_new_tokens") or {}).get(dataset)
    if a is not None and a != b:
        out.append(f"sampling.max_new_tokens.{dataset}: {a} -> {b}")
    return out


def _short_ids(ids: Sequence[str], k: int = 10) -> str:
    ids = [str(q) for q in ids]
    return ", ".join(ids[:k]) + (f", ... ({len(ids) - k} more)" if len(ids) > k else "")


def _check_selection(path: Path, held: Sequence[str], problems: Sequence[Problem]) -> None:
    """Refuse a pool (with its checkpoint) that holds questions outside ``problems`` while some of
    ``problems`` are missing: another selection (``data.selection``, ``selection_seed``, ``offset``)
    made it, and growing it would mix two selections. A pool holding every selected question and
    more (a smaller selection of the same order) is complete."""
    wanted = {p.id for p in problems}
    have = set(held)
    missing = [p.id for p in problems if p.id not in have]
    extra = [q for q in dict.fromkeys(held) if q not in wanted]
    if missing and extra:
        raise PoolError(f"{path}: the pool holds {len(extra)} question(s) not in this selection ({_short_ids(extra)}) "
                        f"and {len(missing)} selected question(s) missing ({_short_ids(missing)}): another selection "
                        "(data.selection, data.selection_seed, data.offset, data.max_questions) or benchmark file made "
                        "it. Growing it would mix two selections; nothing was sampled. Use another pools.pool_name for "
                        "this selection, or the selection that made the pool.")


def pool_needs_sampling(path: str | os.PathLike, problems: Sequence[Problem]) -> bool:
    """Whether :func:`generate_pool` has work for the pool at ``path``: a checkpoint to merge, or
    questions of ``problems`` (by id) the pool lacks. Raises :class:`PoolError` for a pool of
    another selection (:func:`_check_selection`). Reads only (no lock)."""
    path = Path(path)
    if checkpoint_path(path).is_file():
        return True
    held = read_pool(path, allow_partial_scores=True).question_ids if path.is_file() else []
    _check_selection(path, held, problems)
    have = set(held)
    return any(p.id not in have for p in problems)


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

    The run holds the pool's lock (:func:`optscale.data.pools.pool_lock`) throughout; the pool and
    its checkpoint are checked first (same settings and n, the same selection of questions: see
    the module docstring), and a refusal changes nothing.

    ``max_questions`` (>= 1) stops after that many new questions (for interleaving benchmarks);
    ``deadline`` (a ``time.time()`` value) starts no new question after it, so a time-boxed run
    overshoots by at most the questions in flight. ``grading_workers`` (default: 1 for samplers
    that stream questions over HTTP, 0 for in-process and Ray ones) grades in a separate process, so that grading
    (math-verify, pure Python) does not hold up the HTTP event loop. A sampler with replicas (``run_summary()``)
    has its per-replica counts of this run logged and stored in the metadata (``run_summary``).
    """
    path = Path(path) if path else pool_path(config, dataset)
    n = config.sampling.n_samples.get(dataset)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PoolError(f"{path}: sampling.n_samples.{dataset} = {n!r}: the samples per question must be an integer "
                        ">= 1; nothing was sampled")
    if max_questions is not None and (isinstance(max_questions, bool) or not isinstance(max_questions, int)
                                      or max_questions < 1):
        raise PoolError(f"{path}: max_questions (--chunk) = {max_questions!r}: must be an integer >= 1 "
                        "(questions per benchmark per round); nothing was sampled")
    path.parent.mkdir(parents=True, exist_ok=True)
    with pool_lock(path, f"generate pools ({dataset})"):
        return _generate_locked(config, dataset, problems, sampler, scorers, path, flush_every, progress,
                                max_questions, on_question, deadline, questions_in_flight, grading_workers)


def _generate_locked(config: RunConfig, dataset: str, problems: Sequence[Problem], sampler: Sampler,
                     scorers: Sequence[Any], path: Path, flush_every: int, progress: bool, max_questions: int | None,
                     on_question: Callable[[Problem], None] | None, deadline: float | None,
                     questions_in_flight: int | None, grading_workers: int | None) -> Path:
    """:func:`generate_pool` with the pool's lock held."""
    from tqdm.auto import tqdm

    ckpt = checkpoint_path(path)
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
    if s.backend in DTYPE_BACKENDS:  # record the dtype computed in, not "auto"
        from ..sampling.hf_models import resolve_dtype

        device = "cuda" if s.backend == "vllm" else getattr(sampler, "device", "cpu")
        meta["sampling"]["dtype"] = resolve_dtype(s.dtype, device)
    run_settings = dict(meta)
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
    ck = _read_checkpoint(ckpt)  # a truncated last line is cut off here (we hold the lock)
    _check_checkpoint(ck, run_settings, "this run")  # the run's setting is the pool's (checked above)
    held = (existing.question_ids if existing is not None else []) + ck.question_ids
    _check_selection(path, held, problems)
    done = set(held)
    todo = [p for p in problems if p.id not in done]
    if max_questions is not None:
        todo = todo[:max_questions]
    settings = json.loads(json.dumps(_settings(meta), default=str))  # recorded on every checkpoint line
    short: list[str] = []  # questions the sampler returned with another number of samples

    def flush(parsed: _Checkpoint | None = None) -> None:
        nonlocal base_df
        base_df = _merge_checkpoint_rows(path, parsed or _read_checkpoint(ckpt), base_df, meta)

    flush(ck)  # a checkpoint left by a killed run is merged first
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
        if len(rows) != n:  # never checkpointed (a merge would refuse it); the others still are
            short.append(f"{p.id} ({len(rows)})")
            _log.error("%s: sampler %r returned %d samples for question %r, asked for %d; not checkpointed",
                       path, getattr(sampler, "name", "?"), len(rows), p.id, n)
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        with open(ckpt, "a") as f:
            f.write(json.dumps({"question_id": p.id, "settings": settings, "rows": rows}) + "\n")
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
    if short:
        raise PoolError(f"{path}: sampler {getattr(sampler, 'name', '?')!r} returned another number of samples than "
                        f"n_samples={n} for {len(short)} question(s) ({_short_ids(short)}; samples in parentheses); "
                        "they were not stored (the other questions were) and are sampled again by a rerun")
    return path
