"""Answer extraction, equivalence (math-verify) and equivalence classes for voting.

- :func:`extract_answer`: the last ``\\boxed{...}`` (nested braces, ``\\fbox``), else a GSM8K
  ``#### x`` line, else "the answer is x", else — only for a finished sample — the last number in
  the text. A truncated sample (``finish_reason == "length"``) that never states an answer has no
  answer: the last number of a cut-off derivation is not a claim.
- :func:`is_equivalent`: math-verify's ``parse`` + ``verify`` (fractions, ``\\dfrac``, LaTeX vs
  plain, intervals, units, degrees, percent).
- :func:`answer_classes`: groups answers into equivalence classes, so majority voting counts
  ``\\frac{1}{2}`` and ``0.5`` as one answer (the reference votes on raw strings).
- :func:`split_steps`: the step spans a PRM / judge scores (paragraphs separated by blank lines).

Determinism and cost (:class:`Grader`). Each distinct answer string is parsed once; its parse
(the list of sympy objects / strings math-verify returns) is its *form*, and answers with the same
form are equal without a comparison. ``verify`` is called at most once per pair of distinct forms
(gold vs form for correctness; form vs class representative for classes) and cached; pairs whose
result follows from verify's own rules (a shared string, two exact rationals, two constants far
apart: see ``_FAR``) are decided without it.
Parsing and comparing run under a budget of **CPU time of this process** (``setitimer``
``ITIMER_PROF``), not math-verify's wall-clock ``SIGALRM``: load from other processes does not
change which comparisons finish, so classes and correctness do not depend on the machine's load.
Comparisons that exceed the budget are pathological (e.g. ``9^{9^{9}}`` or ``10^{12}!``, which
sympy tries to evaluate exactly): they are *unresolved*, counted in :class:`GradingStats`, logged
on the ``optscale.data.grading`` logger, and resolved by a fixed rule — an unresolved answer is not
correct and forms its own class (in :meth:`Grader.classes` it is not compared again within the
question). :func:`grading_rule` describes the rule; pools record it in their metadata.
The budget needs signals, so it applies in the main thread only; elsewhere math-verify runs
without a time limit (its own advice for threads). It counts the CPU time of every thread of the
process, so grade where no other thread of the same process computes (pool generation grades
between sampler calls, or in its own grading process).
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

__all__ = [
    "GRADING_RULE_VERSION",
    "CPU_BUDGET_S",
    "GradingStats",
    "Grader",
    "grading_rule",
    "extract_boxed",
    "extract_answer",
    "is_equivalent",
    "grade",
    "answer_classes",
    "default_grader",
    "split_steps",
]

# Bump when extraction or equivalence changes what a pool stores (pools record it in metadata).
# 1: boxed > #### > "the answer is" > last number; math-verify with a 5 s wall-clock timeout.
# 2: the last-number fallback only for finished samples; math-verify under a CPU-time budget,
#    each distinct answer parsed once and compared once per pair of distinct forms.
GRADING_RULE_VERSION = 2
# CPU seconds per parse and per comparison. On the committed pools and on MATH-500 gold answers
# (benchmarks/bench_grading.py) the slowest comparison took 0.16 s and the slowest parse 0.29 s
# (the first, which loads the LaTeX parser); exact evaluation of a power tower never finishes.
CPU_BUDGET_S = 2.0

log = logging.getLogger("optscale.data.grading")

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


def extract_answer(text: str, finished: bool = True) -> str | None:
    """The model's final answer as a string, or None when it gave none. ``finished=False`` (the
    sample hit its token cap) drops the last-number fallback: a truncated sample must state its
    answer (boxed, ``####`` or "the answer is")."""
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
    if not finished:
        return None
    nums = _NUMBER.findall(text)
    if nums:
        return nums[-1].replace(",", "")
    return None


def grading_rule(cpu_budget_s: float = CPU_BUDGET_S) -> dict[str, Any]:
    """The grading rule, as pools record it under ``meta["grading"]`` (with the samples whose
    grading stayed unresolved, :func:`optscale.data.generation.regrade_frame`)."""
    from importlib.metadata import version

    return {
        "version": GRADING_RULE_VERSION,
        "extraction": "last \\boxed{} > '####' line > 'the answer is' > last number (finished samples only; "
                      "finish_reason 'length' without a stated answer = no answer)",
        "equivalence": f"math-verify {version('math-verify')} parse + verify, CPU-time budget {cpu_budget_s} s "
                       "per parse / comparison; unresolved = not correct, own class",
    }


# ---------------------------------------------------------------------------------------------
# CPU-time budget
# ---------------------------------------------------------------------------------------------
class _BudgetExceeded(BaseException):
    """Raised by SIGPROF inside a budgeted call (a BaseException, so sympy's ``except Exception``
    and math-verify's own handlers let it through)."""


def _raise_budget(signum, frame):  # pragma: no cover - runs in a signal handler
    raise _BudgetExceeded()


def _budgeted(budget_s: float | None, fn, *args):
    """``(fn(*args), False)``, or ``(None, True)`` when it used more than ``budget_s`` seconds of
    this process's CPU time. No budget outside the main thread (signals need it)."""
    if not budget_s or threading.current_thread() is not threading.main_thread():
        return fn(*args), False
    old = signal.signal(signal.SIGPROF, _raise_budget)
    try:
        signal.setitimer(signal.ITIMER_PROF, budget_s)
        try:
            return fn(*args), False
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    except _BudgetExceeded:
        return None, True
    finally:
        signal.signal(signal.SIGPROF, old)


def _math_verify():
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # The budget above replaces math-verify's SIGALRM timeout; silence its one-time warning that
    # "timeout is disabled".
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return math_verify.parse, math_verify.verify


def _verify(gold: Sequence[Any], pred: Sequence[Any]) -> bool:
    """math-verify's ``verify`` with its defaults, minus its own (wall-clock) timeout."""
    _, verify = _math_verify()
    return verify(list(gold), list(pred), float_rounding=6, numeric_precision=15, strict=True,
                  allow_set_relation_comp=False, timeout_seconds=None)


# ---------------------------------------------------------------------------------------------
# Grader: parse once per string, compare once per pair of distinct forms
# ---------------------------------------------------------------------------------------------
@dataclass
class GradingStats:
    """What a grading run did: fresh parses and comparisons (cached results are not counted
    again), and which answers / pairs stayed unresolved because they exceeded the CPU budget
    (counted whether fresh or from the cache)."""

    parses: int = 0
    compares: int = 0
    parse_timeouts: set[str] = field(default_factory=set)
    compare_timeouts: set[tuple[str, str]] = field(default_factory=set)

    @property
    def timeouts(self) -> int:
        return len(self.parse_timeouts) + len(self.compare_timeouts)

    def as_dict(self, examples: int = 10) -> dict[str, Any]:
        return {
            "parses": self.parses,
            "compares": self.compares,
            "parse_timeouts": len(self.parse_timeouts),
            "compare_timeouts": len(self.compare_timeouts),
            "unresolved_examples": sorted(self.parse_timeouts)[:examples]
            + [f"{a} vs {b}" for a, b in sorted(self.compare_timeouts)[:examples]],
        }


@dataclass(frozen=True)
class _Form:
    text: str  # the stripped answer string
    parsed: tuple  # math-verify's parse (sympy objects and strings); () when it found nothing
    key: tuple  # hashable identity of ``parsed`` (srepr of sympy objects)
    self_equal: bool  # verify(parsed, parsed): same key => equal (false for nan / zoo / empty)
    timed_out: bool  # the parse exceeded the budget
    strings: frozenset = frozenset()  # the parse's (non-empty, stripped) strings
    exact: Any = None  # the parse is one exact rational (Integer / Rational, not Float) + strings
    value: complex | None = None  # the parse is one plain constant + strings: its value (15 digits)


# How math-verify 0.9's ``verify`` decides, used to skip calls whose result is known. ``verify``
# is True when any pair of the two parse lists compares equal; a string equals only an equal
# non-empty string and never a sympy object, so:
# - a string shared by the two forms: True;
# - two exact rationals: ``sympy_expr_eq`` compares ``a == b``, then numerically (``a == b`` for
#   rationals), then ``simplify(a - b).is_zero``: True exactly when the values are equal;
# - two plain constants (numbers without symbols, sets, relations or percent markers) whose
#   values differ by more than 1e-4 relative: ``verify``'s numeric test (rounding to 6 decimals,
#   or ``(a - b).evalf(15) == 0``) and ``simplify(a - b).is_zero`` are all False. Closer values
#   go to ``verify``. tests/test_grading.py checks these against ``verify`` on real answers.
_FAR = 1e-4


def _shortcut_parts(parsed: Sequence[Any]) -> tuple[frozenset, Any, complex | None]:
    """(strings, exact rational or None, constant value or None) of a parse (see above)."""
    from sympy import Basic, Float, N, Rational, UnevaluatedExpr
    from sympy.core.relational import Relational
    from sympy.logic.boolalg import Boolean
    from sympy.sets.sets import Set

    nums = [x for x in parsed if not isinstance(x, str)]
    strings = frozenset(x.strip() for x in parsed if isinstance(x, str) and x.strip())
    if len(nums) != 1 or not isinstance(nums[0], Basic):
        return strings, None, None
    x = nums[0]
    if isinstance(x, Rational) and not isinstance(x, Float):
        return strings, x, complex(x)
    if isinstance(x, (Set, Relational, Boolean)) or not x.is_number or x.has(UnevaluatedExpr):
        return strings, None, None
    try:
        v = complex(N(x, 15))
    except (TypeError, ValueError, OverflowError, ArithmeticError):
        return strings, None, None
    return strings, None, v if all(map(math.isfinite, (v.real, v.imag))) else None


def _form_key(parsed: Sequence[Any]) -> tuple:
    from sympy import srepr

    return tuple(("str", x) if isinstance(x, str) else ("sympy", srepr(x)) for x in parsed)


class Grader:
    """Extraction + math-verify equivalence with caches and a CPU-time budget (module docstring).

    One grader per process is the default (:func:`default_grader`); a fresh one starts with empty
    caches (benchmarks). :meth:`record` collects the :class:`GradingStats` of a block of work."""

    def __init__(self, cpu_budget_s: float | None = CPU_BUDGET_S) -> None:
        self.cpu_budget_s = cpu_budget_s
        self.stats = GradingStats()
        self._forms: dict[str, _Form] = {}
        self._eq: dict[tuple[tuple, tuple], bool | None] = {}  # None: unresolved (budget)
        self._recorders: list[GradingStats] = []

    # -- bookkeeping --------------------------------------------------------------------------
    def _all_stats(self) -> list[GradingStats]:
        return [self.stats, *self._recorders]

    @contextmanager
    def record(self) -> Iterator[GradingStats]:
        """``with grader.record() as st: ...``: the stats of the work done inside the block."""
        st = GradingStats()
        self._recorders.append(st)
        try:
            yield st
        finally:
            self._recorders.remove(st)

    # -- parse --------------------------------------------------------------------------------
    def form(self, answer: str) -> _Form:
        """The parsed form of one answer string (parsed once per distinct string)."""
        s = answer.strip()
        f = self._forms.get(s)
        if f is None:
            f = self._parse(s)
            self._forms[s] = f
        if f.timed_out:
            for st in self._all_stats():
                st.parse_timeouts.add(s)
        return f

    def _parse(self, s: str) -> _Form:
        parse, _ = _math_verify()

        def run():
            text = s if "$" in s or "\\boxed" in s else f"${s}$"
            p = parse(text, parsing_timeout=None)
            return p if p else parse(s, parsing_timeout=None)

        parsed, timed_out = _budgeted(self.cpu_budget_s, run)
        for st in self._all_stats():
            st.parses += 1
        if timed_out:
            log.warning("grading: parsing %r used more than %s s of CPU; unresolved (own class, not correct)",
                        s[:200], self.cpu_budget_s)
            return _Form(s, (), ("str", s), False, True)
        parsed = tuple(parsed)
        if not parsed:
            return _Form(s, (), ("str", s), False, False)
        key = _form_key(parsed)
        same, t = _budgeted(self.cpu_budget_s, _verify, parsed, parsed)
        parts, t2 = _budgeted(self.cpu_budget_s, _shortcut_parts, parsed)
        if t2:  # the constant's value took too long: no shortcut, verify decides
            parts = (frozenset(x.strip() for x in parsed if isinstance(x, str) and x.strip()), None, None)
        return _Form(s, parsed, key, bool(same) and not t, False, *parts)

    # -- compare ------------------------------------------------------------------------------
    def _compare(self, gold: _Form, pred: _Form) -> bool | None:
        """verify(gold, pred) on two forms: True / False, or None when unresolved."""
        if gold.timed_out or pred.timed_out:
            return None
        if gold.text == pred.text or (gold.key == pred.key and gold.self_equal):
            return True
        if not gold.parsed or not pred.parsed:
            return False
        if gold.strings & pred.strings:  # decided without a verify call (see _FAR)
            return True
        if gold.exact is not None and pred.exact is not None:
            return bool(gold.exact == pred.exact)
        if gold.value is not None and pred.value is not None and \
                abs(gold.value - pred.value) > _FAR * max(1.0, abs(gold.value), abs(pred.value)):
            return False
        k = (gold.key, pred.key)
        if k not in self._eq:
            res, timed_out = _budgeted(self.cpu_budget_s, _verify, gold.parsed, pred.parsed)
            for st in self._all_stats():
                st.compares += 1
            if timed_out:
                log.warning("grading: comparing %r with %r used more than %s s of CPU; unresolved "
                            "(counted as different, recorded)", gold.text[:200], pred.text[:200], self.cpu_budget_s)
            self._eq[k] = None if timed_out else bool(res)
        res = self._eq[k]
        if res is None:
            for st in self._all_stats():
                st.compare_timeouts.add((gold.text, pred.text))
        return res

    def equivalent(self, gold: str | None, pred: str | None) -> bool:
        """True when ``pred`` is mathematically equal to ``gold`` (math-verify); False otherwise,
        including unresolved comparisons (recorded in the stats)."""
        if pred is None or gold is None:
            return False
        g, p = str(gold).strip(), str(pred).strip()
        if not p:
            return False
        if g == p:
            return True
        return bool(self._compare(self.form(g), self.form(p)))

    def grade(self, gold: str, text: str, finish_reason: str | None = None) -> tuple[str | None, bool]:
        """(extracted answer, correct) for one completion; ``finish_reason="length"`` marks a
        truncated sample (no last-number fallback)."""
        ans = extract_answer(text, finished=finish_reason != "length")
        return ans, self.equivalent(gold, ans)

    def classes(self, answers: Sequence[str | None]) -> list[int]:
        """Equivalence-class label per answer (None / empty -> -1); see :func:`answer_classes`."""
        labels: list[int] = []
        reps: list[tuple[int, _Form]] = []
        by_key: dict[tuple, int] = {}
        by_text: dict[str, int] = {}
        for i, a in enumerate(answers):
            if a is None or not str(a).strip():
                labels.append(-1)
                continue
            f = self.form(str(a))
            if f.text in by_text:
                labels.append(by_text[f.text])
                continue
            if f.self_equal and f.key in by_key:
                label = by_key[f.key]
            else:
                label, resolved = i, not f.timed_out
                if resolved:
                    for j, rep in reps:
                        res = self._compare(rep, f)
                        if res is None:  # unresolved: own class, not compared again
                            resolved = False
                            break
                        if res:
                            label = j
                            break
                if label == i and resolved:  # an unresolved answer is nobody's representative
                    reps.append((i, f))
                if f.self_equal:
                    by_key[f.key] = label
            by_text[f.text] = label
            labels.append(label)
        return labels


_DEFAULT = Grader()


def default_grader() -> Grader:
    """The process-wide grader behind :func:`is_equivalent`, :func:`grade` and
    :func:`answer_classes` (shared caches)."""
    return _DEFAULT


def is_equivalent(gold: str | None, pred: str | None) -> bool:
    """True when ``pred`` is mathematically equal to ``gold`` (math-verify), else False."""
    return _DEFAULT.equivalent(gold, pred)


def grade(gold: str, text: str, finish_reason: str | None = None) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one completion. ``finish_reason="length"`` (truncated):
    an answer must be stated (boxed, ``####``, "the answer is"); no last-number fallback."""
    return _DEFAULT.grade(gold, text, finish_reason)


def answer_classes(answers: Sequence[str | None], grader: Grader | None = None) -> list[int]:
    """Equivalence-class label per answer (None -> -1). Labels are the index of the first
    member of the class, so ``answer_classes(["1/2", "0.5", "2"]) == [0, 0, 2]``.

    Equivalence is checked against each class representative (math-verify's equality is not
    guaranteed transitive; the representative is the first answer seen). Answers with the same
    string or the same parsed form join a class without a comparison; an unresolved comparison
    (CPU budget) leaves the answer in its own class.
    """
    return (grader or _DEFAULT).classes(answers)


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
