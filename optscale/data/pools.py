"""Sample pools: generate once at the largest n, store as validated Parquet, replay subsamples.

A pool file holds every sample of every question of one benchmark, one row per sample:

==================  =============  ===========================================================
column              type           meaning
==================  =============  ===========================================================
dataset             string         benchmark name
question_id         string         id in the source file
question_index      int32          position in the source file
sample_index        int32          0..n-1 within the question
text                string         the completion
answer              string (null)  extracted final answer (None when the model gave none)
gold                string         gold answer
correct             bool           math-verify equivalence of answer and gold
n_tokens            int32          generated tokens
finish_reason       string         stop | stop_string | length
seed                int64          seed of the chunk that produced the sample
token_logprobs      list<float32>  log-prob of each generated token (untempered model)
token_confidence    list<float32>  mean top-k log-prob per token (DeepConf)
score__<scorer>     float64        sample score in [0, 1], one column per scorer
step_scores__<s.>   list<float64>  per-step scores in [0, 1]
==================  =============  ===========================================================

Generator and scorer metadata, the sampling config, git hash and creation time are kept once
per file in the Parquet key-value metadata under ``optscale``. Generation keeps several questions
in flight, appends each finished question (in any order) to a JSONL checkpoint next to the pool
and merges the checkpoint into the Parquet file every few questions (write to a temporary file,
then rename, rows sorted by question), so a killed run loses at most the questions in flight and
a rerun resumes with the missing ones.
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
import pyarrow as pa
import pyarrow.parquet as pq

from .config import PROJECT_ROOT, RunConfig
from .data import Problem
from .grading import GRADING_RULE_VERSION, Grader, default_grader, grade, grading_rule
from .samplers.base import Completion, SampleRequest, Sampler, derive_seed, load_prompt_template

__all__ = [
    "PoolError",
    "Pool",
    "POOL_SCHEMA",
    "pool_path",
    "read_pool",
    "write_pool",
    "validate_pool_frame",
    "regrade_frame",
    "regrade_pool",
    "generate_pool",
    "score_pool",
    "replay_orders",
    "subsample",
]

META_KEY = b"optscale"
_log = logging.getLogger("optscale.pools")

POOL_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("question_id", pa.string()),
        ("question_index", pa.int32()),
        ("sample_index", pa.int32()),
        ("text", pa.string()),
        ("answer", pa.string()),
        ("gold", pa.string()),
        ("correct", pa.bool_()),
        ("n_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("seed", pa.int64()),
        ("token_logprobs", pa.list_(pa.float32())),
        ("token_confidence", pa.list_(pa.float32())),
    ]
)
FINISH_REASONS = {"stop", "stop_string", "length"}


class PoolError(ValueError):
    """A pool file that is missing, unreadable, truncated or does not match the schema."""


def pool_path(config: RunConfig, dataset: str) -> Path:
    root = Path(config.pools.pool_dir)
    if not root.is_absolute():
        root = PROJECT_ROOT / root
    return root / config.pools.pool_name / f"{dataset}.parquet"


# ---------------------------------------------------------------------------------------------
# Reading, writing, validation
# ---------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """A validated pool: the per-sample frame plus the file's metadata."""

    df: pd.DataFrame
    meta: dict[str, Any]
    path: Path | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def dataset(self) -> str:
        return str(self.meta.get("dataset", self.df["dataset"].iloc[0] if len(self.df) else ""))

    @property
    def scorers(self) -> list[str]:
        return sorted(c.split("__", 1)[1] for c in self.df.columns if c.startswith("score__"))

    @property
    def question_ids(self) -> list[str]:
        return list(dict.fromkeys(self.df["question_id"]))

    @property
    def n_questions(self) -> int:
        return self.df["question_id"].nunique()

    @property
    def n_per_question(self) -> int:
        """Samples per question (the minimum, if questions differ)."""
        return int(self.df.groupby("question_id", sort=False).size().min()) if len(self.df) else 0

    def matrix(self, column: str, n: int | None = None) -> np.ndarray:
        """(questions x n) array of a per-sample column, questions in file order, samples by
        ``sample_index``. ``n`` defaults to :attr:`n_per_question`."""
        n = n or self.n_per_question
        key = f"{column}@{n}"
        if key not in self._cache:
            df = self.df[self.df["sample_index"] < n].sort_values(["question_index", "sample_index"], kind="stable")
            col = df[column]
            # text columns come out as objects with None for a missing value (pandas' string
            # dtype stores it as NaN, which voting would take for an answer)
            vals = col.to_numpy(dtype=object, na_value=None) if pd.api.types.is_string_dtype(col) else col.to_numpy()
            self._cache[key] = vals.reshape(-1, n)
        return self._cache[key]

    def scores(self, scorer: str, n: int | None = None) -> np.ndarray:
        return self.matrix(f"score__{scorer}", n).astype(float)

    def correct(self, n: int | None = None) -> np.ndarray:
        return self.matrix("correct", n).astype(bool)

    def tokens(self, n: int | None = None) -> np.ndarray:
        return self.matrix("n_tokens", n).astype(float)

    def answers(self, n: int | None = None) -> np.ndarray:
        """(questions x n) object array of extracted answers; a missing answer is ``None``."""
        return self.matrix("answer", n)

    def fully_scored(self) -> "Pool":
        """The questions whose every sample has every score (a pool being scored may be partial)."""
        cols = [c for c in self.df.columns if c.startswith("score__")]
        ok = self.df[cols].notna().all(axis=1).groupby(self.df["question_id"]).transform("all")
        return Pool(self.df[ok].reset_index(drop=True), dict(self.meta), self.path)

    def head(self, n_questions: int) -> "Pool":
        keep = set(self.question_ids[:n_questions])
        return Pool(self.df[self.df["question_id"].isin(keep)].reset_index(drop=True), dict(self.meta), self.path)

    def describe(self) -> str:
        g = self.meta.get("generator", {})
        return (f"{self.dataset}: {self.n_questions} questions x {self.n_per_question} samples, "
                f"generator {g.get('model', '?')} ({g.get('backend', '?')}, T={g.get('temperature', '?')}), "
                f"scorers {', '.join(self.scorers)}, seed {self.meta.get('seed', '?')}")


def _fail(path: Any, msg: str) -> PoolError:
    return PoolError(f"{path}: {msg}")


def validate_pool_frame(df: pd.DataFrame, path: Any = "<pool>", allow_partial_scores: bool = False) -> None:
    """Raise :class:`PoolError` naming file, row and field for the first problem found."""
    missing = [f.name for f in POOL_SCHEMA if f.name not in df.columns]
    if missing:
        raise _fail(path, f"missing column(s) {missing}")

    def where(i: int) -> str:
        r = df.iloc[i]
        return f"row {i} (question {r['question_id']!r}, sample {r['sample_index']})"

    for col in ("dataset", "question_id", "text", "gold", "finish_reason"):
        bad = df[col].isna().to_numpy().nonzero()[0]
        if bad.size:
            raise _fail(path, f"{where(int(bad[0]))}: field {col!r} is missing")
    for col in ("correct", "n_tokens", "sample_index", "question_index", "seed"):
        bad = df[col].isna().to_numpy().nonzero()[0]
        if bad.size:
            raise _fail(path, f"{where(int(bad[0]))}: field {col!r} is missing")
    missing_answer = df["answer"].isna().to_numpy()
    empty_answer = df["answer"].map(lambda a: isinstance(a, str) and not a.strip()).to_numpy(dtype=bool)
    bad = (df["correct"].astype(bool).to_numpy() & (missing_answer | empty_answer)).nonzero()[0]
    if bad.size:
        i = int(bad[0])
        raise _fail(path, f"{where(i)}: field 'correct' is True but field 'answer' is "
                          f"{'missing' if missing_answer[i] else 'empty'}")
    bad = (~df["finish_reason"].isin(FINISH_REASONS)).to_numpy().nonzero()[0]
    if bad.size:
        raise _fail(path, f"{where(int(bad[0]))}: field 'finish_reason' = {df['finish_reason'].iloc[bad[0]]!r}, "
                          f"expected one of {sorted(FINISH_REASONS)}")
    bad = (df["n_tokens"].to_numpy() < 0).nonzero()[0]
    if bad.size:
        raise _fail(path, f"{where(int(bad[0]))}: field 'n_tokens' is negative")
    lengths = df["token_logprobs"].map(lambda x: 0 if x is None else len(x)).to_numpy()
    bad = ((lengths != 0) & (lengths != df["n_tokens"].to_numpy())).nonzero()[0]
    if bad.size:
        raise _fail(path, f"{where(int(bad[0]))}: field 'token_logprobs' has {lengths[bad[0]]} values for "
                          f"n_tokens={df['n_tokens'].iloc[bad[0]]}")
    # sample_index must be 0..n-1 within each question, without duplicates
    for qid, g in df.groupby("question_id", sort=False):
        idx = np.sort(g["sample_index"].to_numpy())
        if not np.array_equal(idx, np.arange(len(idx))):
            i = int(g.index[0])
            raise _fail(path, f"row {i} (question {qid!r}): field 'sample_index' is {idx.tolist()[:20]}, "
                              f"expected 0..{len(idx) - 1} without gaps or duplicates")
    for col in [c for c in df.columns if c.startswith("score__")]:
        v = df[col].to_numpy(dtype=float, na_value=np.nan)
        nan = np.isnan(v)
        if nan.any() and not allow_partial_scores:
            raise _fail(path, f"{where(int(nan.nonzero()[0][0]))}: field {col!r} is NaN/missing")
        out = (~nan & ((v < 0) | (v > 1))).nonzero()[0]
        if out.size:
            raise _fail(path, f"{where(int(out[0]))}: field {col!r} = {float(v[out[0]])!r} is outside [0, 1]")
    for col in [c for c in df.columns if c.startswith("step_scores__")]:
        for i, steps in enumerate(df[col]):
            if steps is None:
                if allow_partial_scores:
                    continue
                raise _fail(path, f"{where(i)}: field {col!r} is missing")
            a = np.asarray(steps, dtype=float)
            if a.size == 0 or np.isnan(a).any() or (a < 0).any() or (a > 1).any():
                raise _fail(path, f"{where(i)}: field {col!r} has empty, NaN or out-of-range values")


def read_pool(path: str | os.PathLike, allow_partial_scores: bool = False) -> Pool:
    path = Path(path)
    if not path.is_file():
        raise PoolError(f"{path}: pool file not found (generate it with `python -m optscale.pools generate`)")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for truncated/corrupt files
        raise PoolError(f"{path}: not a readable Parquet pool ({type(e).__name__}: {e})") from None
    raw_meta = (table.schema.metadata or {}).get(META_KEY)
    if raw_meta is None:
        raise PoolError(f"{path}: no 'optscale' metadata (generator/scorer info); not a pool file")
    try:
        meta = json.loads(raw_meta)
    except json.JSONDecodeError as e:
        raise PoolError(f"{path}: metadata is not valid JSON ({e})") from None
    df = table.to_pandas()
    validate_pool_frame(df, path, allow_partial_scores)
    if meta.get("dataset") and len(df) and (df["dataset"] != meta["dataset"]).any():
        i = int((df["dataset"] != meta["dataset"]).to_numpy().nonzero()[0][0])
        raise PoolError(f"{path}: row {i}: field 'dataset' = {df['dataset'].iloc[i]!r} but the file "
                        f"metadata says {meta['dataset']!r}")
    return Pool(df=df, meta=meta, path=path)


def _to_table(df: pd.DataFrame, meta: dict[str, Any]) -> pa.Table:
    fields = list(POOL_SCHEMA)
    for c in df.columns:
        if c.startswith("score__"):
            fields.append(pa.field(c, pa.float64()))
        elif c.startswith("step_scores__"):
            fields.append(pa.field(c, pa.list_(pa.float64())))
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})
    return pa.Table.from_pandas(df[[f.name for f in fields]], schema=schema, preserve_index=False)


def write_pool(df: pd.DataFrame, meta: dict[str, Any], path: str | os.PathLike, allow_partial_scores: bool = False) -> Path:
    """Validate, then write atomically (temporary file + rename)."""
    path = Path(path)
    df = df.sort_values(["question_index", "sample_index"], kind="stable").reset_index(drop=True)
    validate_pool_frame(df, path, allow_partial_scores)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(_to_table(df, meta), tmp, compression="zstd")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# Generation with checkpoint / resume
# ---------------------------------------------------------------------------------------------
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
    comparison short (:mod:`optscale.grading`; the answer then counts as not correct)."""
    grader = grader or default_grader()
    with grader.record() as stats:
        ans, ok = grader.grade(gold, text, finish_reason)
    return ans, bool(ok), stats.timeouts > 0


def _grading_meta(unresolved_answers: Sequence[str]) -> dict[str, Any]:
    """A pool's ``meta["grading"]``: the rule (:func:`optscale.grading.grading_rule`) and the
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
    from .provenance import git_hash

    return git_hash()


def _complete_questions(sampler: Sampler, scorers: Sequence[Any], jobs: Iterable[tuple[Problem, SampleRequest]],
                        questions_in_flight: int | None) -> Iterable[tuple[Problem, list[Completion], dict[str, list]]]:
    """``(problem, completions, scores)`` for every job, as each question completes.

    Three ways, by what the sampler offers: ``iter_questions`` (a distributed runner whose workers
    sample and score; see :mod:`optscale.distributed`), ``iter_complete`` (the endpoint sampler:
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
    from .config import SamplingConfig

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


def open_score_column(path: str | os.PathLike, name: str, description: dict[str, Any]
                      ) -> tuple[pd.DataFrame, dict[str, Any], list[str]]:
    """A pool's frame with the columns ``score__<name>`` / ``step_scores__<name>`` present (NaN /
    None where not scored yet), its metadata naming the scorer, and the ids of the questions that
    still have unscored samples, in pool order."""
    pool = read_pool(path, allow_partial_scores=True)
    df, meta = pool.df.copy(), dict(pool.meta)
    col, scol = f"score__{name}", f"step_scores__{name}"
    if col not in df.columns:
        df[col] = np.nan
        df[scol] = None
    df[scol] = df[scol].astype(object)
    meta.setdefault("scorers", {})[name] = description
    todo = [q for q, g in df.groupby("question_id", sort=False) if g[col].isna().any()]
    return df, meta, todo


def question_completions(df: pd.DataFrame, question_id: str) -> tuple[pd.Index, list[Completion]]:
    """The rows of one question, in sample order, as (frame index, Completions) for a scorer."""
    g = df.loc[df["question_id"] == question_id].sort_values("sample_index")
    return g.index, [Completion(text=r.text, n_tokens=int(r.n_tokens), finish_reason=r.finish_reason, seed=int(r.seed),
                                token_logprobs=list(r.token_logprobs), token_confidence=list(r.token_confidence))
                     for r in g.itertuples()]


def store_scores(df: pd.DataFrame, index: Iterable[Any], results: Sequence[Any], name: str) -> None:
    for i, r in zip(index, results):
        df.at[i, f"score__{name}"] = r.score
        df.at[i, f"step_scores__{name}"] = list(r.step_scores)


def write_score_column(path: str | os.PathLike, name: str, scores: np.ndarray, description: dict[str, Any]) -> Path:
    """Write a whole ``score__<name>`` column (one-step ``step_scores__<name>``) computed outside a
    scorer, e.g. a fitted combination of other columns; ``scores`` in the pool file's row order."""
    df, meta, _ = open_score_column(path, name, description)
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(df),):
        raise PoolError(f"{path}: {scores.size} scores for {len(df)} samples (column score__{name})")
    df[f"score__{name}"] = scores
    df[f"step_scores__{name}"] = pd.Series([[float(x)] for x in scores], index=df.index, dtype=object)
    return write_pool(df, meta, path, allow_partial_scores=True)


def score_pool(path: str | os.PathLike, scorer: Any, questions: dict[str, str], flush_every: int = 8,
               progress: bool = True, max_questions: int | None = None) -> Path:
    """Add (or complete) the ``score__<scorer>`` column of a pool, question by question,
    rewriting the file every ``flush_every`` questions so an interrupted run resumes.
    ``max_questions`` scores at most that many of the unscored questions (a time-boxed caller)."""
    from tqdm.auto import tqdm

    df, meta, todo = open_score_column(path, scorer.name, scorer.describe())
    if max_questions is not None:
        todo = todo[:max_questions]
    since = 0
    for qid in tqdm(todo, desc=f"{Path(path).stem} {scorer.name}", disable=not progress):
        if qid not in questions:
            raise PoolError(f"{path}: question {qid!r} has no question text to score")
        index, comps = question_completions(df, qid)
        store_scores(df, index, scorer.score(questions[qid], comps), scorer.name)
        since += 1
        if since >= flush_every:
            write_pool(df, meta, path, allow_partial_scores=True)
            since = 0
    write_pool(df, meta, path, allow_partial_scores=True)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------
def replay_orders(n_questions: int, pool_n: int, n_orders: int, seed: int) -> np.ndarray:
    """(n_orders, n_questions, pool_n) int array: a seeded random permutation of each question's
    samples per replicate. Order 0 is the identity (the pool's own order)."""
    rng = np.random.default_rng(seed)
    keys = rng.random((n_orders, n_questions, pool_n))
    orders = np.argsort(keys, axis=-1)
    orders[0] = np.arange(pool_n)
    return orders


def subsample(values: np.ndarray, orders: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` samples of each question under each order.

    ``values``: (questions, pool_n); ``orders``: (n_orders, questions, pool_n) from
    :func:`replay_orders`; returns (n_orders, questions, n)."""
    if n > values.shape[1]:
        raise ValueError(f"n={n} exceeds the pool's {values.shape[1]} samples per question")
    idx = orders[..., :n]
    return np.take_along_axis(np.broadcast_to(values, orders.shape[:1] + values.shape), idx, axis=-1)
