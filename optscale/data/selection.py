"""Which questions of a benchmark a pool (or a study) uses.

``data.selection`` chooses how a benchmark's questions are ordered before ``data.max_questions``
takes the first k of them (after skipping ``data.offset``):

- ``first``: file order (the 0.5B pools: MATH-500's file is sorted by subject, so its first 64
  questions are 62 number theory and 2 prealgebra).
- ``stratified``: a seeded order in which every prefix is a stratified sample: each question gets
  the fractional position ``(rank within its stratum + u) / stratum size`` with its within-stratum
  rank and ``u`` drawn from ``data.selection_seed``, and questions are sorted by it. Strata are
  (subject, level) on MATH-500 and the whole benchmark elsewhere (a plain seeded shuffle). Because
  the order is fixed, a pool grown from 100 to 150 questions keeps its first 100, and a study
  placed at ``data.offset`` past the pools' questions never overlaps them.

The selected questions are returned in file order (pools store them that way).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from .benchmarks import Problem, load_benchmark

__all__ = ["SELECTIONS", "selection_order", "select_questions", "config_problems", "strata_counts"]

SELECTIONS = ("first", "stratified")


def _stratum(p: Problem) -> tuple:
    subject, level = p.meta.get("subject"), p.meta.get("level")
    return (subject, level) if subject is not None and level is not None else ()


def selection_order(problems: Sequence[Problem], how: str = "first", seed: int = 0) -> list[int]:
    """Positions of ``problems`` in selection order (see the module docstring)."""
    if how == "first":
        return list(range(len(problems)))
    if how != "stratified":
        raise ValueError(f"data.selection must be one of {SELECTIONS}, got {how!r}")
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(problems):
        groups.setdefault(_stratum(p), []).append(i)
    key = np.empty(len(problems))
    for stratum in sorted(groups, key=repr):
        members = np.asarray(groups[stratum])
        rank = rng.permutation(len(members))
        key[members] = (rank + rng.random(len(members))) / len(members)
    return [int(i) for i in np.lexsort((np.arange(len(problems)), key))]


def select_questions(problems: Sequence[Problem], k: int | None, how: str = "first", seed: int = 0,
                     offset: int = 0) -> list[Problem]:
    """Questions at selection positions ``[offset, offset + k)`` (all after ``offset`` when k is
    0 or None), in file order."""
    order = selection_order(problems, how, seed)
    if offset < 0 or offset > len(order):
        raise ValueError(f"data.offset={offset} is outside the benchmark's {len(order)} questions")
    chosen = order[offset: offset + k] if k else order[offset:]
    return [problems[i] for i in sorted(chosen)]


def config_problems(config: Any, dataset: str, data_dir: Any = None) -> list[Problem]:
    """The questions ``config`` selects for ``dataset`` (``data.selection``, ``selection_seed``,
    ``offset``, ``max_questions``)."""
    d = config.data
    problems = load_benchmark(dataset, data_dir if data_dir is not None else d.data_dir)
    return select_questions(problems, d.max_questions.get(dataset, 0) or None, d.selection,
                            d.selection_seed, d.offset.get(dataset, 0))


def strata_counts(problems: Sequence[Problem]) -> dict[str, int]:
    """``{"Algebra/L3": 5, ...}`` for a README or a pool's metadata (empty without strata)."""
    c = Counter(_stratum(p) for p in problems)
    return {f"{s[0]}/L{s[1]}": n for s, n in sorted(c.items(), key=lambda kv: repr(kv[0])) if s}
