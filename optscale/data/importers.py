"""Importers: evaluate other people's pools unchanged, as the project's pool frame.

- :func:`import_optscale_json`: the OptScale authors' ``scored_*_64.json`` — a JSON list over
  questions, each with ``score.completions`` (list of str), ``score.scores`` (per-completion list
  of step rewards), ``score.last_scores`` and ``score.completion_tokens`` (the question text and
  gold answer under ``problem``/``question`` and ``answer`` when present).
- :func:`import_sal_jsonl`: search-and-learn style JSONL, one question per line with
  ``completions``, ``scores`` (per-completion step rewards), optional ``completion_tokens``,
  ``problem``, ``answer``, ``unique_id``.

Both return a :class:`optscale.data.pools.Pool` (validated with
:func:`optscale.data.pools.validate_pool_frame`) whose sample score is the mean step reward (as in the
paper) under ``score__<scorer>`` with the steps under ``step_scores__<scorer>``.

The whole file is read and checked before any sample is graded. A malformed or truncated file,
an empty one, a record without a gold answer, or a text field holding a lone surrogate raises
:class:`PoolImportError` naming the file, the line (JSONL) or question index (JSON) and the field;
with ``keep_partial=True`` the questions read before the fault are returned and the fault is
recorded in ``pool.meta["import_error"]``. Gold answers missing from the file can be passed as
``gold={question_id: answer}`` (e.g. from :func:`optscale.data.benchmarks.load_benchmark`).

Token counts: the file's ``completion_tokens`` when present; otherwise the ``tokenizer`` given
(a name for ``transformers.AutoTokenizer`` or an object with ``encode``), else the tokenizer of
the named ``generator``, else whitespace-separated words with a warning. ``pool.meta["token_count"]``
says which; ``pool.meta["grading"]`` records the grading rule and the samples whose grading stayed
unresolved (:func:`optscale.data.generation.regrade_frame`). Imported samples carry no finish reason and
are graded as finished.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ..scoring.scorers import aggregate_steps
from .generation import regrade_frame
from .pools import Pool, validate_pool_frame

__all__ = ["PoolImportError", "import_optscale_json", "import_sal_jsonl", "export_optscale_json"]


class PoolImportError(ValueError):
    """A pool file to import that is malformed or truncated (message names file and line)."""


def _check_unicode(value: str, where: str, field: str) -> str:
    """``value``, else a PoolImportError when it holds a lone surrogate (``"\\ud83d"`` in JSON: not
    valid Unicode, so the pool's Parquet file could not store it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PoolImportError(f"{where}: {field} holds a lone surrogate {value[e.start]!r} at character {e.start} "
                              "(not valid Unicode text; fix or drop it before importing)") from None
    return value


def _gold_answer(rec: dict, qid: str, where: str, gold: Mapping[str, str] | None) -> str:
    g = rec.get("answer")
    if g is None or not str(g).strip():
        if gold is not None and qid in gold:
            return str(gold[qid])
        hint = "not in the gold answers passed" if gold is not None else "pass gold={question_id: answer}"
        raise PoolImportError(f"{where}: question {qid!r} has no gold answer (field 'answer'; {hint})")
    g = str(g)
    if "####" in g:
        g = g.rsplit("####", 1)[1].strip().replace(",", "")
    return g


def _rows(dataset: str, q_index: int, rec: dict, where: str, scorer: str, aggregation: str,
          gold: Mapping[str, str] | None) -> list[dict]:
    """Checked rows of one record, not graded yet (``answer`` / ``correct`` filled later;
    ``n_tokens`` None when the file has no ``completion_tokens``)."""
    sc = rec.get("score", rec)
    comps, steps = sc.get("completions"), sc.get("scores")
    if not isinstance(comps, list) or not isinstance(steps, list):
        raise PoolImportError(f"{where}: expected lists 'completions' and 'scores'")
    if not comps:
        raise PoolImportError(f"{where}: 'completions' is empty")
    if len(comps) != len(steps):
        raise PoolImportError(f"{where}: {len(comps)} completions but {len(steps)} score lists")
    toks = sc.get("completion_tokens")
    if toks is not None and (not isinstance(toks, list) or len(toks) != len(comps)
                             or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in toks)):
        raise PoolImportError(f"{where}: 'completion_tokens' must be a list of {len(comps)} non-negative integers")
    qid = _check_unicode(str(rec.get("unique_id", rec.get("id", q_index))), where,
                         f"field {'unique_id' if 'unique_id' in rec else 'id'!r}")
    gold_answer = _check_unicode(_gold_answer(rec, qid, where, gold), where,
                                 "field 'answer'" if rec.get("answer") is not None else f"the gold answer passed for {qid!r}")
    rows = []
    for k, (text, st) in enumerate(zip(comps, steps)):
        if not isinstance(text, str):
            raise PoolImportError(f"{where}: completion {k} is not a string")
        _check_unicode(text, where, f"completion {k} (field 'completions')")
        st = [st] if isinstance(st, (int, float)) else st
        try:
            arr = [float(x) for x in st]
        except (TypeError, ValueError):
            raise PoolImportError(f"{where}: score list {k} is not a list of numbers") from None
        if not arr or any(not 0 <= x <= 1 for x in arr):
            raise PoolImportError(f"{where}: score list {k} is empty or outside [0, 1]")
        rows.append({
            "dataset": dataset, "question_id": qid, "question_index": q_index, "sample_index": k, "text": text,
            "answer": None, "gold": gold_answer, "correct": False,
            "n_tokens": int(toks[k]) if toks is not None else None, "finish_reason": "stop", "seed": 0,
            "token_logprobs": [], "token_confidence": [],
            f"score__{scorer}": aggregate_steps(arr, aggregation), f"step_scores__{scorer}": arr,
        })
    return rows


def _collect_rows(records: Iterable[tuple[str, Any]], dataset: str, scorer: str, aggregation: str, keep_partial: bool,
                  meta: dict[str, Any], gold: Mapping[str, str] | None) -> list[dict]:
    """Checked rows from ``(location, record)`` pairs, question index = position, nothing graded.
    A bad record (or a :class:`PoolImportError` raised while reading the next one) stops the
    import: it is raised, or with ``keep_partial`` recorded in ``meta["import_error"]`` keeping
    the rows read so far."""
    rows: list[dict] = []
    seen: dict[str, str] = {}
    q = 0
    try:
        for where, rec in records:
            if not isinstance(rec, dict):
                raise PoolImportError(f"{where}: expected an object, got {type(rec).__name__}")
            new = _rows(dataset, q, rec, where, scorer, aggregation, gold)
            qid = new[0]["question_id"]
            if qid in seen:
                raise PoolImportError(f"{where}: question {qid!r} appears again (first at {seen[qid]})")
            seen[qid] = where
            rows.extend(new)
            q += 1
    except PoolImportError as e:
        if not keep_partial or not rows:
            raise
        meta["import_error"] = str(e)
    return rows


def _count_tokens(rows: list[dict], meta: dict[str, Any], path: Path, tokenizer: Any, generator: str | None) -> None:
    missing = [r for r in rows if r["n_tokens"] is None]
    if not missing:
        meta["token_count"] = "completion_tokens (from the file)"
        return
    name = tokenizer if isinstance(tokenizer, str) else generator if tokenizer is None else None
    if name is not None:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(name)
        except Exception as e:  # offline without a cached copy, unknown name, ...
            raise PoolImportError(f"{path}: {len(missing)} sample(s) have no completion_tokens and the tokenizer "
                                  f"{name!r} could not be loaded ({type(e).__name__}: {e}); pass tokenizer=") from None
    if tokenizer is not None:
        for r in missing:
            try:  # transformers tokenizers: count the completion's own tokens, no BOS / EOS
                ids = tokenizer.encode(r["text"], add_special_tokens=False)
            except TypeError:
                ids = tokenizer.encode(r["text"])
            r["n_tokens"] = len(ids)
        source = f"tokenizer {name or getattr(tokenizer, 'name_or_path', None) or type(tokenizer).__name__}"
    else:
        for r in missing:
            r["n_tokens"] = len(r["text"].split())
        source = "whitespace-separated words: not model tokens"
        warnings.warn(f"{path}: {len(missing)} of {len(rows)} samples have no completion_tokens and no tokenizer was "
                      "given (tokenizer= or generator=); their n_tokens are whitespace word counts", stacklevel=3)
    meta["token_count"] = source if len(missing) == len(rows) else \
        f"completion_tokens (from the file) for {len(rows) - len(missing)} samples, {source} for {len(missing)}"


def _finish(rows: list[dict], meta: dict[str, Any], path: Path, tokenizer: Any, generator: str | None) -> Pool:
    if not rows:
        raise PoolImportError(f"{path}: the file holds no questions")
    _count_tokens(rows, meta, path, tokenizer, generator)
    # graded only now, when the whole file has been read and checked; the pools' grading rule
    df, meta["grading"] = regrade_frame(pd.DataFrame(rows))
    meta["finish_reason"] = "not in the file: every sample is taken as finished ('stop')"
    validate_pool_frame(df, path)
    return Pool(df=df, meta=meta, path=path)


def _meta(path: Path, dataset: str, backend: str, scorer: str, aggregation: str, generator: str | None) -> dict:
    return {"dataset": dataset, "pool_name": path.stem, "imported_from": str(path),
            "generator": {"model": generator or "imported", "backend": backend},
            "scorers": {scorer: {"aggregation": aggregation}}}


def import_optscale_json(path: str | os.PathLike, dataset: str, scorer: str = "prm", aggregation: str = "mean",
                         keep_partial: bool = False, gold: Mapping[str, str] | None = None, tokenizer: Any = None,
                         generator: str | None = None) -> Pool:
    """The authors' ``scored_*_64.json`` as a Pool (see the module docstring)."""
    path = Path(path)
    text = path.read_text()
    meta = _meta(path, dataset, "optscale-json", scorer, aggregation, generator)
    if not text.strip():
        raise PoolImportError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if not keep_partial:
            raise PoolImportError(f"{path}: line {e.lineno}, column {e.colno}: {e.msg} (truncated or malformed JSON)") from None
        data = _json_prefix(text)
        if not data:
            raise PoolImportError(f"{path}: line {e.lineno}, column {e.colno}: {e.msg}; no complete question "
                                  "before it") from None
        meta["import_error"] = f"line {e.lineno}: {e.msg}; kept {len(data)} complete question(s)"
    if not isinstance(data, list):
        raise PoolImportError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    records = ((f"{path}: question {i}", rec) for i, rec in enumerate(data))
    rows = _collect_rows(records, dataset, scorer, aggregation, keep_partial, meta, gold)
    return _finish(rows, meta, path, tokenizer, generator)


def _json_prefix(text: str) -> list:
    """Complete top-level elements of a truncated JSON list ([] when it has no list)."""
    dec = json.JSONDecoder()
    start = text.find("[")
    if start < 0:
        return []
    i = start + 1
    out = []
    while True:
        while i < len(text) and text[i] in " \r\n\t,":
            i += 1
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return out
        out.append(obj)


def import_sal_jsonl(path: str | os.PathLike, dataset: str, scorer: str = "prm", aggregation: str = "mean",
                     keep_partial: bool = False, gold: Mapping[str, str] | None = None, tokenizer: Any = None,
                     generator: str | None = None) -> Pool:
    """Search-and-learn style JSONL (one question per line) as a Pool."""
    path = Path(path)
    meta = _meta(path, dataset, "sal-jsonl", scorer, aggregation, generator)

    def records():
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PoolImportError(f"{path}: line {lineno}: not valid JSON ({e.msg}; truncated?)") from None
                yield f"{path}: line {lineno}", rec

    rows = _collect_rows(records(), dataset, scorer, aggregation, keep_partial, meta, gold)
    return _finish(rows, meta, path, tokenizer, generator)


def export_optscale_json(pool: Pool, path: str | os.PathLike, scorer: str) -> Path:
    """Write a Pool in the authors' format (for round trips and sharing)."""
    out = []
    for qid, g in pool.df.sort_values(["question_index", "sample_index"]).groupby("question_id", sort=False):
        steps = [list(map(float, s)) for s in g[f"step_scores__{scorer}"]]
        out.append({"unique_id": qid, "answer": g["gold"].iloc[0],
                    "score": {"completions": list(g["text"]), "scores": steps,
                              "last_scores": [s[-1] for s in steps],
                              "completion_tokens": [int(t) for t in g["n_tokens"]]}})
    Path(path).write_text(json.dumps(out, indent=1))
    return Path(path)
