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
per file in the Parquet key-value metadata under ``optscale``. Generation with checkpoint / resume
is in :mod:`optscale.data.generation`; this module reads, writes and validates pools, adds score
columns, and draws the replay orders.

One writer at a time: every function that rewrites a pool (:func:`write_pool`, :func:`score_pool`,
:func:`write_score_column`, and generation, merge and regrade) holds the pool's lock
(:func:`pool_lock`, the file ``<pool>.parquet.lock``), and a second writer is refused at once with
the holder's pid and command (:class:`PoolLockedError`). A rewrite goes to a temporary file of its
own in the same folder, then replaces the pool.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import PROJECT_ROOT, RunConfig
from ..sampling.base import Completion
from .locks import LockHeld, hold, lock_file

__all__ = [
    "PoolError",
    "PoolLockedError",
    "pool_lock",
    "Pool",
    "POOL_SCHEMA",
    "pool_path",
    "read_pool",
    "write_pool",
    "validate_pool_frame",
    "score_pool",
    "replay_orders",
    "subsample",
]

META_KEY = b"optscale"

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


class PoolLockedError(PoolError):
    """Another writer (process or thread) holds the pool's lock; ``holder`` is its record."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None):
        super().__init__(message)
        self.holder = holder


@contextmanager
def pool_lock(path: str | os.PathLike, what: str) -> Iterator[dict[str, Any]]:
    """Hold the writer lock of the pool at ``path`` for the ``with`` block (re-entrant in the
    holding thread; :mod:`optscale.data.locks`). ``what`` says what the holder does (shown to a
    refused writer). Raises :class:`PoolLockedError` at once when another writer holds it, and
    :class:`PoolError` when the lock file cannot be made (a read-only folder)."""
    stack = ExitStack()
    try:
        record = stack.enter_context(hold(path, what))
    except LockHeld as e:
        h = e.holder
        if h is None:
            who = "a writer that was taking or releasing it just now (rerun to see whether it is still there)"
        else:
            thread = f", thread {h['thread']!r} of this process" if "thread" in h else ""
            who = (f"pid {h.get('pid')} on {h.get('host', '?')}{thread}, {h.get('what', '?')} since "
                   f"{h.get('since', '?')}, command: {h.get('command', '?')}")
        raise PoolLockedError(f"{path}: locked by another writer: {who}. Refused, so that neither loses the other's "
                              f"samples or scores; rerun once it has finished (the lock {e.path} goes with its "
                              "process).", h) from None
    except FileNotFoundError:
        raise PoolError(f"{path}: pool file not found (its folder {Path(path).parent} does not exist)") from None
    except OSError as e:
        raise PoolError(f"{path}: cannot create the pool lock {lock_file(path)} ({e.strerror or e}); "
                        "is the folder writable?") from None
    with stack:
        yield record


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
    # a completion with text took at least one token (0 would make every token saving NaN)
    has_text = df["text"].map(lambda t: isinstance(t, str) and bool(t.strip())).to_numpy(dtype=bool)
    bad = (has_text & (df["n_tokens"].to_numpy() == 0)).nonzero()[0]
    if bad.size:
        raise _fail(path, f"{where(int(bad[0]))}: field 'n_tokens' is 0 for a non-empty text "
                          f"({int(bad.size)} such sample(s)); a token count must be at least 1")
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
        bad = _first_non_number(df[col])
        if bad is not None:
            raise _fail(path, f"{where(bad)}: field {col!r} = {df[col].iloc[bad]!r} is not a number")
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


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _parses_as_number(x: Any) -> bool:
    try:
        float(x)
        return isinstance(x, str)
    except (TypeError, ValueError):
        return False


def _first_non_number(values: pd.Series | np.ndarray | Sequence[Any]) -> int | None:
    """Position of the first value that is neither a real number nor missing (None / NaN / NA);
    among those, the first one that is not even a number written as a string ("high", not "0.8")."""
    if isinstance(values, pd.Series) and pd.api.types.is_numeric_dtype(values) \
            and not pd.api.types.is_bool_dtype(values):
        return None
    bad = [i for i, x in enumerate(values) if not (x is None or x is pd.NA or _is_number(x))]
    if not bad:
        return None
    return next((i for i in bad if not _parses_as_number(values[i] if not isinstance(values, pd.Series)
                                                         else values.iloc[i])), bad[0])


def read_pool(path: str | os.PathLike, allow_partial_scores: bool = False) -> Pool:
    path = Path(path)
    if not path.is_file():
        raise PoolError(f"{path}: pool file not found (generate it with "
                        "`python -m optscale.generate pools --profile <the profile naming this pool>`)")
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
    """Validate, then write atomically under the pool's lock (:func:`pool_lock`): a temporary file
    of this writer's own in the same folder, then a rename over the pool."""
    path = Path(path)
    df = df.sort_values(["question_index", "sample_index"], kind="stable").reset_index(drop=True)
    validate_pool_frame(df, path, allow_partial_scores)
    table = _to_table(df, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pool_lock(path, "write_pool"):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
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
    scorer, e.g. a fitted combination of other columns; ``scores`` in the pool file's row order,
    NaN where a sample is not scored (yet)."""
    values = np.asarray(scores, dtype=object).ravel() if np.ndim(scores) else np.asarray([scores], dtype=object)
    bad = _first_non_number(values)
    if bad is not None:
        raise PoolError(f"{path}: row {bad}: score__{name} = {values[bad]!r} is not a number; nothing written")
    scores = np.asarray(scores, dtype=float)
    with pool_lock(path, f"write score__{name}"):
        df, meta, _ = open_score_column(path, name, description)
        if scores.shape != (len(df),):
            raise PoolError(f"{path}: {scores.size} scores for {len(df)} samples (column score__{name})")
        df[f"score__{name}"] = scores
        df[f"step_scores__{name}"] = pd.Series([None if np.isnan(x) else [float(x)] for x in scores],
                                               index=df.index, dtype=object)
        return write_pool(df, meta, path, allow_partial_scores=True)


def score_pool(path: str | os.PathLike, scorer: Any, questions: dict[str, str], flush_every: int = 8,
               progress: bool = True, max_questions: int | None = None) -> Path:
    """Add (or complete) the ``score__<scorer>`` column of a pool, question by question,
    rewriting the file every ``flush_every`` questions so an interrupted run resumes.
    ``max_questions`` scores at most that many of the unscored questions (a time-boxed caller)."""
    from tqdm.auto import tqdm

    with pool_lock(path, f"score {scorer.name}"):
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
