"""Importers: evaluate other people's pools unchanged, as the project's pool frame.

- :func:`import_optscale_json`: the OptScale authors' ``scored_*_64.json`` — a JSON list over
  questions, each with ``score.completions`` (list of str), ``score.scores`` (per-completion list
  of step rewards), ``score.last_scores`` and ``score.completion_tokens`` (the question text and
  gold answer under ``problem``/``question`` and ``answer`` when present).
- :func:`import_sal_jsonl`: search-and-learn style JSONL, one question per line with
  ``completions``, ``scores`` (per-completion step rewards), optional ``completion_tokens``,
  ``problem``, ``answer``, ``unique_id``.

Both return a :class:`optscale.pools.Pool` (validated with
:func:`optscale.pools.validate_pool_frame`) whose sample score is the mean step reward (as in the
paper) under ``score__<scorer>`` with the steps under ``step_scores__<scorer>``. A malformed or
truncated file raises :class:`ImportError_` naming the file and the line (JSONL) or question
index (JSON); with ``keep_partial=True`` the questions read before the fault are returned and the
fault is recorded in ``pool.meta["import_error"]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from .grading import extract_answer, is_equivalent
from .pools import Pool, validate_pool_frame
from .scorers import aggregate_steps

__all__ = ["PoolImportError", "import_optscale_json", "import_sal_jsonl", "export_optscale_json"]


class PoolImportError(ValueError):
    """A pool file to import that is malformed or truncated (message names file and line)."""


def _rows(dataset: str, q_index: int, rec: dict, where: str, scorer: str, aggregation: str) -> list[dict]:
    sc = rec.get("score", rec)
    comps, steps = sc.get("completions"), sc.get("scores")
    if not isinstance(comps, list) or not isinstance(steps, list):
        raise PoolImportError(f"{where}: expected lists 'completions' and 'scores'")
    if len(comps) != len(steps):
        raise PoolImportError(f"{where}: {len(comps)} completions but {len(steps)} score lists")
    toks = sc.get("completion_tokens")
    if toks is not None and (not isinstance(toks, list) or len(toks) != len(comps)):
        raise PoolImportError(f"{where}: 'completion_tokens' must be a list of {len(comps)} integers")
    gold = rec.get("answer")
    gold = None if gold is None else str(gold)
    if gold is not None and "####" in gold:
        gold = gold.rsplit("####", 1)[1].strip().replace(",", "")
    qid = str(rec.get("unique_id", rec.get("id", q_index)))
    rows = []
    for k, (text, st) in enumerate(zip(comps, steps)):
        if not isinstance(text, str):
            raise PoolImportError(f"{where}: completion {k} is not a string")
        st = [st] if isinstance(st, (int, float)) else st
        try:
            arr = [float(x) for x in st]
        except (TypeError, ValueError):
            raise PoolImportError(f"{where}: score list {k} is not a list of numbers") from None
        if not arr or any(not 0 <= x <= 1 for x in arr):
            raise PoolImportError(f"{where}: score list {k} is empty or outside [0, 1]")
        ans = extract_answer(text)
        n_tok = int(toks[k]) if toks is not None else len(text.split())
        rows.append({
            "dataset": dataset, "question_id": qid, "question_index": q_index, "sample_index": k, "text": text,
            "answer": ans, "gold": gold if gold is not None else "", "correct": bool(gold is not None and is_equivalent(gold, ans)),
            "n_tokens": n_tok, "finish_reason": "stop", "seed": 0, "token_logprobs": [], "token_confidence": [],
            f"score__{scorer}": aggregate_steps(arr, aggregation), f"step_scores__{scorer}": arr,
        })
    return rows


def _finish(rows: list[dict], meta: dict, path: Path) -> Pool:
    df = pd.DataFrame(rows)
    if len(df):
        validate_pool_frame(df, path)
    return Pool(df=df, meta=meta, path=path)


def import_optscale_json(path: str | os.PathLike, dataset: str, scorer: str = "prm", aggregation: str = "mean",
                         keep_partial: bool = False) -> Pool:
    """The authors' ``scored_*_64.json`` as a Pool (see the module docstring)."""
    path = Path(path)
    text = path.read_text()
    meta: dict[str, Any] = {"dataset": dataset, "pool_name": path.stem, "imported_from": str(path),
                            "generator": {"model": "imported", "backend": "optscale-json"},
                            "scorers": {scorer: {"aggregation": aggregation}}}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if not keep_partial:
            raise PoolImportError(f"{path}: line {e.lineno}, column {e.colno}: {e.msg} (truncated or malformed JSON)") from None
        data = _json_prefix(text)
        meta["import_error"] = f"line {e.lineno}: {e.msg}; kept {len(data)} complete question(s)"
    if not isinstance(data, list):
        raise PoolImportError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    records = ((f"{path}: question {i}", rec) for i, rec in enumerate(data))
    return _finish(_collect_rows(records, dataset, scorer, aggregation, keep_partial, meta), meta, path)


def _collect_rows(records, dataset: str, scorer: str, aggregation: str, keep_partial: bool,
                  meta: dict[str, Any]) -> list[dict]:
    """Pool rows from ``(location, record)`` pairs, question index = position. A bad record (or a
    :class:`PoolImportError` raised while reading the next one) stops the import: it is raised,
    or with ``keep_partial`` recorded in ``meta["import_error"]`` keeping the rows read so far."""
    rows: list[dict] = []
    q = 0
    try:
        for where, rec in records:
            if not isinstance(rec, dict):
                raise PoolImportError(f"{where}: expected an object")
            rows.extend(_rows(dataset, q, rec, where, scorer, aggregation))
            q += 1
    except PoolImportError as e:
        if not keep_partial:
            raise
        meta["import_error"] = str(e)
    return rows


def _json_prefix(text: str) -> list:
    """Complete top-level elements of a truncated JSON list."""
    dec = json.JSONDecoder()
    i = text.index("[") + 1
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
                     keep_partial: bool = False) -> Pool:
    """Search-and-learn style JSONL (one question per line) as a Pool."""
    path = Path(path)
    meta: dict[str, Any] = {"dataset": dataset, "pool_name": path.stem, "imported_from": str(path),
                            "generator": {"model": "imported", "backend": "sal-jsonl"},
                            "scorers": {scorer: {"aggregation": aggregation}}}

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

    return _finish(_collect_rows(records(), dataset, scorer, aggregation, keep_partial, meta), meta, path)


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
