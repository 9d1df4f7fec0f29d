"""Answer extraction, equivalence (math-verify) and equivalence classes for voting.

- :func:`extract_answer`: the last ``\\boxed{...}`` (nested braces, ``\\fbox``), else a GSM8K
  ``#### x`` line, else "the answer is x", else the last number in the text.
- :func:`is_equivalent`: math-verify's ``parse`` + ``verify`` (fractions, ``\\dfrac``, LaTeX vs
  plain, intervals, units, degrees, percent), memoised because voting compares many pairs.
- :func:`answer_classes`: groups answers into equivalence classes, so majority voting counts
  ``\\frac{1}{2}`` and ``0.5`` as one answer (the reference votes on raw strings).
- :func:`split_steps`: the step spans a PRM / judge scores (paragraphs separated by blank lines).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Sequence

__all__ = [
    "extract_boxed",
    "extract_answer",
    "is_equivalent",
    "grade",
    "answer_classes",
    "split_steps",
]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_THE_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?(?:\.\s|\.?$|\n)", re.IGNORECASE)


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}``, with nested braces; None if absent
    or unclosed."""
    last = None
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            last = text[m.end() : i - 1].strip()
    return last


def extract_answer(text: str) -> str | None:
    """The model's final answer as a string, or None when it gave none."""
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        if tail and tail[0].strip():
            return tail[0].strip().replace(",", "")
    m = list(_THE_ANSWER_IS.finditer(text))
    if m:
        ans = m[-1].group(1).strip().rstrip(".")
        if ans:
            return ans
    nums = _NUMBER.findall(text)
    if nums:
        return nums[-1].replace(",", "")
    return None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=200_000)
def _parse(ans: str):
    from math_verify import parse

    # math-verify's timeout uses SIGALRM, which only works in the main thread.
    timeout = 5 if _in_main_thread() else None
    text = ans if "$" in ans or "\\boxed" in ans else f"${ans}$"
    parsed = parse(text, parsing_timeout=timeout)
    if not parsed:
        parsed = parse(ans, parsing_timeout=timeout)
    return parsed


@lru_cache(maxsize=500_000)
def is_equivalent(gold: str, pred: str | None) -> bool:
    """True when ``pred`` is mathematically equal to ``gold`` (math-verify), else False."""
    if pred is None or gold is None:
        return False
    g, p = gold.strip(), pred.strip()
    if not p:
        return False
    if g == p:
        return True
    from math_verify import verify

    pg, pp = _parse(g), _parse(p)
    if not pg or not pp:
        return False
    timeout = 5 if _in_main_thread() else None
    return bool(verify(pg, pp, timeout_seconds=timeout))


def grade(gold: str, text: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one completion."""
    ans = extract_answer(text)
    return ans, is_equivalent(gold, ans)


def answer_classes(answers: Sequence[str | None]) -> list[int]:
    """Equivalence-class label per answer (None -> -1). Labels are the index of the first
    member of the class, so ``answer_classes(["1/2", "0.5", "2"]) == [0, 0, 2]``.

    Equivalence is checked against each class representative (math-verify's equality is not
    guaranteed transitive; the representative is the first answer seen).
    """
    reps: list[tuple[int, str]] = []
    labels: list[int] = []
    for i, a in enumerate(answers):
        if a is None or not str(a).strip():
            labels.append(-1)
            continue
        for j, rep in reps:
            if rep == a or is_equivalent(rep, a):
                labels.append(j)
                break
        else:
            reps.append((i, a))
            labels.append(i)
    return labels


def split_steps(text: str, max_steps: int | None = None) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the reasoning steps: paragraphs separated by one or
    more blank lines (the convention of Qwen2.5-Math-PRM and the OptScale paper). With
    ``max_steps``, steps after the limit are merged into the last one. Empty text -> one empty
    step, so every sample has at least one step score."""
    spans = []
    start = 0
    for m in re.finditer(r"\n\s*\n", text):
        if text[start : m.start()].strip():
            spans.append((start, m.start()))
            start = m.end()
    if text[start:].strip() or not spans:
        spans.append((start, len(text)))
    if max_steps and len(spans) > max_steps:
        spans = spans[: max_steps - 1] + [(spans[max_steps - 1][0], spans[-1][1])]
    return spans
