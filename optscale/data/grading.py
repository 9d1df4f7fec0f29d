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

Determinism and cost (:class:`Grader`). Each answer string gets a cheap, sympy-free
*signature* (:func:`answer_signature`: outer ``$``/``\\boxed`` removed, ``\\dfrac``/``\\tfrac``
as ``\\frac``, ``\\left``/``\\right`` dropped, spaces that LaTeX ignores removed, plain
rationals by value); strings with one signature share one math-verify parse. That parse (the list
of sympy objects / strings math-verify returns) is the answer's *form*, and answers with the same
form are equal without a comparison. ``verify`` is called at most once per pair of distinct forms
(gold vs form for correctness; form vs class representative for classes) and cached; pairs whose
result follows from verify's own rules are decided without it: a shared string, two exact
rationals, and pairs whose numbers differ by more than ``_FAR`` (constants, an assignment
``x = c`` against a number, expressions evaluated at fixed points of their free symbols, interval
endpoints, matrix entries) or whose kinds cannot match (a number against an interval, a matrix or
a tuple; tuples or matrices of different sizes). So the cost of :meth:`Grader.classes` grows with
the number of distinct forms of a question, and ``verify`` runs only between forms that could be
equal (``benchmarks/bench_grading.py --source math500-forms``: 256 samples a question, 80+ forms,
the same classes as comparing every answer with every class representative through math-verify).
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
from dataclasses import dataclass, field, replace
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
    "answer_signature",
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
    kind: str = "opaque"  # what verify's rules can say about it without a call (see _kind_of)
    probe: tuple = ()  # the numbers the kind's rules compare (see _kind_of)


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


# -- kinds: what math-verify 0.9's ``sympy_expr_eq`` can conclude between two single objects ----
# (strict mode, no set/relation comparison; each rule is checked against ``verify`` in
# tests/test_grading.py on real answers):
# - "number": a plain constant (probe: its value). "assign": ``symbols = constant`` (probe: the
#   constant). Against anything that is not an equation verify replaces an equation by its right
#   side (and an assignment gold by its right side), so both compare as numbers.
# - "expr": an expression with free symbols, evaluated at fixed points of its symbols (probe: the
#   values). Numbers / expressions that differ by more than _FAR at one point differ as functions:
#   the numeric test ``(a - b).evalf() == 0`` and ``simplify(a - b).is_zero`` are False (rounding a
#   symbolic expression raises, and verify counts that as not equal).
# - "intervals": an Interval or a Union of them with numeric endpoints (probe: endpoints, open
#   flags). A number is never equal to one (verify compares {number} with the set: the symmetric
#   difference is not empty); two with as many pieces differ when an endpoint differs by > _FAR
#   (sympy keeps unions disjoint and sorted), two single intervals also when an end's openness
#   differs.
# - "matrix": numeric entries (probe: shape, entries). Never equal to a number (subtracting raises);
#   unequal to a matrix of another shape or with an entry > _FAR away.
# - "tuple": a Tuple / FiniteSet of >= 2 numbers far apart from each other (probe: size). Never
#   equal to a number ({number} has one element) or to a tuple / set of another size, nor to
#   intervals unless one open interval meets a pair (verify's interval-as-pair rule). Numbers,
#   expressions, intervals and tuples are never equal to a matrix ({matrix} is a one-element set).
# - "symbol": a bare symbol (probe: its name): ``sympy_compare_symbols`` matches it only to Euler's
#   number (name e), a product of symbols spelling its name, or a printed form equal to its name.
_PROBE_POINTS = 2


def _symbol_value(name: str, point: int) -> float:
    """The value a free symbol takes at probe point ``point``: fixed by its name, in [0.3, 1.6]."""
    import zlib

    return 0.3 + ((zlib.crc32(f"{point}:{name}".encode()) % 10007) / 10007) * 1.3


def _number_value(x) -> complex | None:
    from sympy import N

    try:
        v = complex(N(x, 15))
    except (TypeError, ValueError, OverflowError, ArithmeticError, AttributeError):
        return None
    return v if math.isfinite(v.real) and math.isfinite(v.imag) else None


def _far(a: complex, b: complex) -> bool:
    if not (math.isfinite(abs(a)) and math.isfinite(abs(b))):  # interval ends at +-infinity
        return a != b
    return abs(a - b) > _FAR * max(1.0, abs(a), abs(b))


def _plain(x) -> bool:
    """A scalar sympy expression verify compares numerically (no set, relation, boolean, matrix,
    percent marker, bare symbol or undefined function)."""
    from sympy import Expr, Symbol, UnevaluatedExpr
    from sympy.core.function import AppliedUndef

    return isinstance(x, Expr) and not isinstance(x, Symbol) and not x.has(UnevaluatedExpr) \
        and not x.atoms(AppliedUndef)


def _kind_of(parsed: Sequence[Any]) -> tuple[str, tuple]:
    """(kind, probe) of a parse, as described above; ("opaque", ()) when no rule applies (then
    ``verify`` decides every comparison)."""
    from sympy import Eq, FiniteSet, Interval, MatrixBase, Symbol, Tuple, Union, oo
    from latex2sympy2_extended import is_expr_of_only_symbols

    nums = [x for x in parsed if not isinstance(x, str)]
    if len(nums) != 1:
        return "opaque", ()
    x = nums[0]
    if isinstance(x, MatrixBase):
        vals = [_number_value(e) if getattr(e, "is_number", False) else None for e in x]
        return ("matrix", (tuple(x.shape), tuple(vals))) if vals and None not in vals else ("opaque", ())
    if isinstance(x, (Interval, Union)):
        parts = [x] if isinstance(x, Interval) else list(x.args)
        probe = []
        for p in parts:
            if not isinstance(p, Interval):
                return "opaque", ()
            ends = []
            for e in (p.start, p.end):
                v = complex(math.copysign(math.inf, 1 if e == oo else -1)) if e in (oo, -oo) else \
                    (_number_value(e) if e.is_number else None)
                if v is None:
                    return "opaque", ()
                ends.append(v)
            probe.append((ends[0], ends[1], bool(p.left_open), bool(p.right_open)))
        return "intervals", tuple(probe)
    if isinstance(x, (Tuple, FiniteSet)):
        vals = [_number_value(e) if getattr(e, "is_number", False) else None for e in x.args]
        if len(vals) < 2 or None in vals or any(not _far(a, b) for i, a in enumerate(vals) for b in vals[i + 1:]):
            return "opaque", ()
        return "tuple", (len(vals),)
    if isinstance(x, Eq) and is_expr_of_only_symbols(x.lhs):
        rhs = x.rhs
        if _plain(rhs) and rhs.is_number:
            v = _number_value(rhs)
            return ("assign", (v,)) if v is not None else ("opaque", ())
        return "opaque", ()
    if isinstance(x, Symbol):
        return "symbol", (x.name,)
    if not _plain(x):
        return "opaque", ()
    free = sorted(x.free_symbols, key=lambda s: s.name)
    if not free:
        v = _number_value(x)
        return ("number", (v,)) if v is not None else ("opaque", ())
    vals = []
    for point in range(_PROBE_POINTS):
        v = _number_value(x.subs({s: _symbol_value(s.name, point) for s in free}))
        if v is None:
            return "opaque", ()
        vals.append(v)
    return "expr", tuple(vals)


def _kinds_decide(a: "_Form", b: "_Form") -> bool | None:
    """False when the kinds' rules (above) show ``verify(a, b)`` is False; None when they cannot."""
    ka, kb = a.kind, b.kind
    if ka == "opaque" or kb == "opaque":
        return None
    scalar = ("number", "assign", "expr")
    if ka in scalar and kb in scalar:  # an assignment compares as its right side, a number
        pa = a.probe if ka == "expr" else a.probe * _PROBE_POINTS
        pb = b.probe if kb == "expr" else b.probe * _PROBE_POINTS
        return False if any(_far(x, y) for x, y in zip(pa, pb)) else None
    sets = ("intervals", "matrix", "tuple")
    if ka in scalar and kb in sets or kb in scalar and ka in sets:
        return False
    if ka == "symbol" or kb == "symbol":
        return _symbol_decides(a, b) if ka != kb else None
    if {ka, kb} == {"intervals", "tuple"}:  # only an open interval may equal a pair
        iv, tup = (a, b) if ka == "intervals" else (b, a)
        return None if len(iv.probe) == 1 and iv.probe[0][2] and iv.probe[0][3] and tup.probe == (2,) else False
    if "matrix" in (ka, kb) and {ka, kb} & {"intervals", "tuple"}:  # {matrix} is no interval, no pair
        return False
    if ka == kb == "intervals":
        pa, pb = a.probe, b.probe
        if len(pa) != len(pb):  # sympy merges touching pieces: other piece counts, other sets
            return False
        if any(_far(x[0], y[0]) or _far(x[1], y[1]) for x, y in zip(pa, pb)):  # +-inf vs inf: not far
            return False
        if len(pa) == 1 and (pa[0][2:] != pb[0][2:]):
            return False
        return None
    if ka == kb == "matrix":
        (sa, va), (sb, vb) = a.probe, b.probe
        if sa != sb:
            return False
        return False if any(_far(x, y) for x, y in zip(va, vb)) else None
    if ka == kb == "tuple":
        return False if a.probe != b.probe else None
    return None


# -- signatures: strings math-verify parses alike, found without parsing -----------------------
_DOLLARS = re.compile(r"^\$([^$]*)\$$")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?=[()\[\]|]|\\[{}|])")
_FRAC_VARIANT = re.compile(r"\\[dt]frac(?![a-zA-Z])")
# whitespace next to an operator or a bracket, and after a comma unless digit groups could be
# thousands ("1, 000" and "11, \! 111" are parsed differently from "1,000", "11,\! 111"); not
# next to a digit or a command ("3 \sqrt{5}")
_SPACE_AT_OPERATOR = re.compile(r"\s+(?=[-+=()\[\]{}^_<>|])|(?<=[-+=()\[\]{}^_<>|])\s+")
_SPACE_AFTER_COMMA = re.compile(r",\s+")
_THOUSANDS = re.compile(r",\s*\d{3}(?!\d)|\\[!,;:]")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")  # prose ("5 cm", "the total is 6"), not a \command
_TEXT_COMMAND = re.compile(r"\\(?:text|mathrm|mbox|operatorname|textbf|mathbf)")
_INTEGER = re.compile(r"-?\d+")
_RATIONAL = re.compile(r"(-?)(?:\\frac\{(-?\d+)\}\{(\d+)\}|(\d+)/(\d+))")


def _strip_wrapper(s: str) -> str:
    """``X`` for ``$X$`` or ``\\boxed{X}`` spanning the whole string (balanced braces), else ``s``."""
    m = _DOLLARS.match(s)
    if m and "\\boxed" not in m.group(1):  # the grader parses "X" as "$X$": the same input
        return m.group(1).strip()
    head = "\\boxed{"
    if s.startswith(head) and s.endswith("}") and "$" not in s and s.count("\\boxed") == 1:
        depth = 0
        for i, ch in enumerate(s[len(head) - 1:], len(head) - 1):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0:
                return s[len(head):-1].strip() if i == len(s) - 1 else s
    return s


def answer_signature(answer: str) -> str:
    """A cheap canonical string of an answer, without sympy: answers with equal signatures get the
    same math-verify parse, so :class:`Grader` parses one per signature.

    Rewrites (each one math-verify's own normalisation makes before parsing): the outer ``$...$``
    or ``\\boxed{...}`` (not around a ``$``); ``\\dfrac`` / ``\\tfrac`` as ``\\frac``; ``\\left`` /
    ``\\right`` before a delimiter; whitespace next to an operator or a bracket, and after a comma
    unless a group of three digits follows one (``1, 000`` is a pair, ``1,000`` a number), unless
    the string has words or ``\\text``-like commands
    (math-verify picks a number out of prose by its spacing); an integer, ``a/b`` or
    ``\\frac{a}{b}`` of integers becomes its reduced value (``"\\frac{4}{8}"`` and ``"1/2"`` give
    ``"rational:1/2"``). Decimals keep their digits (math-verify reads ``0.5`` as ``1/2`` but
    ``0.50`` as a float). tests/test_grading.py checks on real answers that equal signatures
    mean equal parses."""
    from fractions import Fraction

    s = str(answer).strip()
    for _ in range(3):
        t = _strip_wrapper(s)
        if t == s:
            break
        s = t
    s = _FRAC_VARIANT.sub(r"\\frac", s)
    s = _LEFT_RIGHT.sub("", s)
    if not _TEXT_COMMAND.search(s) and not _WORD.search(s):
        s = _SPACE_AT_OPERATOR.sub("", s)
        if not _THOUSANDS.search(s):
            s = _SPACE_AFTER_COMMA.sub(",", s)
    if _INTEGER.fullmatch(s):
        return f"rational:{int(s)}"
    m = _RATIONAL.fullmatch(s)
    if m:
        num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(4), m.group(5))
        if int(den) != 0:
            v = Fraction(int(num), int(den)) * (-1 if m.group(1) else 1)
            return f"rational:{v.numerator}/{v.denominator}" if v.denominator != 1 else f"rational:{v.numerator}"
    return s


def _symbol_decides(a: "_Form", b: "_Form") -> bool | None:
    """A bare symbol against a number, an assignment, an expression, intervals or a tuple
    (``sympy_compare_symbols``): False unless a name could match (``e`` for Euler's number, a
    product of symbols spelling the name, or equal printed forms); then None."""
    sym, other = (a, b) if a.kind == "symbol" else (b, a)
    if other.kind in ("intervals", "tuple"):  # {symbol} has one element and no interval
        return False
    if other.kind not in ("number", "assign", "expr", "matrix"):
        return None
    from sympy import E, Eq, Mul, Symbol

    name = sym.probe[0]
    x = next(v for v in other.parsed if not isinstance(v, str))
    if other.kind == "matrix":
        return None if str(x) == name else False
    if isinstance(x, Eq):  # an assignment compares as its right side
        x = x.rhs
    if name.lower() == "e" or str(x) == name:
        return None
    if isinstance(x, Mul) and all(arg == E or isinstance(arg, Symbol) for arg in x.args):
        return None
    return False


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
        self._by_signature: dict[str, _Form] = {}
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
        """The parsed form of one answer string (parsed once per distinct signature,
        :func:`answer_signature`)."""
        s = answer.strip()
        f = self._forms.get(s)
        if f is None:
            sig = answer_signature(s)
            same = self._by_signature.get(sig)
            if same is None:
                f = self._by_signature[sig] = self._parse(s)
            else:
                f = replace(same, text=s)
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
        kind, t3 = (None, True) if t2 else _budgeted(self.cpu_budget_s, _kind_of, parsed)
        if t3:  # evaluating it took too long: verify decides every comparison
            kind = ("opaque", ())
        return _Form(s, parsed, key, bool(same) and not t, False, *parts, *kind)

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
        if gold.value is not None and pred.value is not None and _far(gold.value, pred.value):
            return False
        if _kinds_decide(gold, pred) is False:
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
