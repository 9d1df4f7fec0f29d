import re
import subprocess
import sys
import time

import numpy as np
import pytest

from optscale.config import load_config
from optscale.data.benchmarks import load_benchmark
from optscale.data.grading import (Grader, _verify, answer_classes, extract_answer, extract_boxed, grade,
                                   is_equivalent, split_steps)
from optscale.data.pools import pool_path, read_pool


@pytest.fixture(scope="module")
def committed_answers():
    """Per question of the committed MATH-500 and GSM8K pools, its stored answers."""
    cfg = load_config("cpu")
    return [list(row) for ds in ("math500", "gsm8k") for row in read_pool(pool_path(cfg, ds)).answers()]


def test_extract_boxed_nested_and_last():
    assert extract_boxed(r"so \boxed{\frac{1}{2}} and finally \boxed{\dfrac{3}{4}}") == r"\dfrac{3}{4}"
    assert extract_boxed(r"\boxed{\left( 3, \frac{\pi}{2} \right)}") == r"\left( 3, \frac{\pi}{2} \right)"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"unclosed \boxed{3") is None
    assert extract_boxed("nothing") is None


def test_extract_answer_fallbacks():
    assert extract_answer("Thus she makes 18 dollars.\n#### 18") == "18"
    assert extract_answer("work... #### 1,234") == "1234"
    assert extract_answer("The answer is 42.") == "42"
    assert extract_answer("we get 3 then 7 apples") == "7"
    assert extract_answer("no numbers here") is None
    assert extract_answer("") is None
    assert extract_answer(r"#### 5 but \boxed{6}") == "6"  # boxed wins


@pytest.mark.parametrize(
    "gold,pred",
    [
        (r"\frac{14}{3}", "14/3"),
        (r"\dfrac{1}{2}", "0.5"),
        (r"\frac{1}{2}", r"\tfrac12"),
        ("(1,2]", "(1, 2]"),
        (r"90^\circ", "90"),
        (r"5\text{ cm}", "5"),
        (r"\text{(C)}", "C"),
        ("10", "10.0"),
        (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"),
        ("x^2+2x+1", "(x+1)^2"),
    ],
)
def test_equivalences(gold, pred):
    assert is_equivalent(gold, pred)


@pytest.mark.parametrize("gold,pred", [("3", "4"), (r"\frac{1}{2}", "0.51"), ("(1,2]", "[1,2]"), ("5", None), ("5", "")])
def test_non_equivalences(gold, pred):
    assert not is_equivalent(gold, pred)


@pytest.mark.parametrize("name", ["math500", "gsm8k", "aime24", "aime25", "amc23"])
def test_real_gold_answers_grade_themselves(name, data_dir):
    """Every gold answer, boxed as a model would write it, is graded correct; a wrong number is not."""
    probs = load_benchmark(name, data_dir)[:40]
    for p in probs:
        ans, ok = grade(p.answer, f"Some reasoning.\n\nSo the answer is $\\boxed{{{p.answer}}}$.")
        assert ok, (name, p.id, p.answer, ans)
    wrong = [grade(p.answer, r"\boxed{123456789}")[1] for p in probs]
    assert not any(wrong)


def test_math500_solution_boxed_matches_gold(data_dir):
    probs = load_benchmark("math500", data_dir)[:60]
    ok = [is_equivalent(p.answer, extract_boxed(p.meta.get("solution", "")) or p.answer) for p in probs]
    assert all(ok)


def test_answer_classes_group_equivalents():
    assert answer_classes(["1/2", "0.5", "2", None, r"\frac{1}{2}", "2.0"]) == [0, 0, 2, -1, 0, 2]


def test_split_steps():
    text = "Step one.\n\nStep two.\n\n\nStep three."
    spans = split_steps(text)
    assert [text[a:b] for a, b in spans] == ["Step one.", "Step two.", "Step three."]
    merged = split_steps(text, max_steps=2)
    assert len(merged) == 2 and text[merged[1][0]:merged[1][1]].endswith("three.")
    assert split_steps("") == [(0, 0)]


# -- issue 16: a truncated sample must state its answer ------------------------------------------
@pytest.mark.parametrize("text,stated", [
    ("we get 3 then 7 apples", None),  # only a last number: no answer when truncated
    (r"so it is \boxed{7} and then we", "7"),
    ("Thus 7.\n#### 7", "7"),
    ("So the answer is 7.\nLet me check", "7"),
])
def test_truncated_sample_needs_a_stated_answer(text, stated):
    assert grade("7", text, finish_reason="length") == (stated, stated is not None)
    assert grade("7", text, finish_reason="stop") == ("7", True)  # finished: last number kept
    assert grade("7", text) == ("7", True)


# -- issue 17 item 1: deterministic, parse once, compare once per pair of distinct forms ---------
TOWER = "9^{9^{9}}"  # math-verify tries to evaluate it exactly: never finishes


def test_each_distinct_string_is_parsed_once_and_forms_compared_once():
    g = Grader()
    answers = ["1/2", r"\frac{1}{2}", "0.5", r"\dfrac12", "1/2", "x+1", "1+x", "x+1", "2", "2"]
    assert g.classes(answers) == [0, 0, 0, 0, 0, 5, 5, 5, 8, 8]
    # the distinct signatures: "1/2" and "\frac{1}{2}" share "rational:1/2" (issue 29)
    assert g.stats.parses == 6
    # "0.5", "\dfrac12" parse to the form of "1/2", "2" vs 1/2 are exact rationals, x+1 and 1+x
    # are far from 1/2 and 2 at a probe point: the only verify call is 1+x vs x+1
    assert g.stats.compares == 1
    assert [g.equivalent("1/2", a) for a in answers] == [True] * 5 + [False] * 5
    assert g.stats.compares == 1  # (1/2, x+1) and (1/2, 1+x) are decided by the probe
    assert g.stats.parses == 6


def test_shortcuts_agree_with_math_verify(committed_answers, data_dir):
    """The grader decides some pairs without verify (a shared string, two exact rationals, two
    constants far apart); on real answers and MATH-500 gold answers each decision is verify's."""
    g = Grader()
    golds = [p.answer for p in load_benchmark("math500", data_dir)[:120]]
    extra = [("1,000", "1000"), ("(3)", "3"), (r"\frac{4}{2}", "2"), ("0.5", r"\frac12"), (r"\$18", "18"),
             ("-3", "3"), (r"\frac{1}{3}", "0.333333"), (r"9\%", "9"), (r"9\%", "0.09"), (r"\pi", "3.14159"),
             (r"\sqrt{2}", "1.4142"), ("2+3i", "2-3i"), (r"e", r"\exp(1)")]
    pairs = extra + [(a, b) for row in committed_answers[:40] for a in row[:5] for b in row[:5] if a and b and a != b]
    pairs += [(a, b) for i, a in enumerate(golds) for b in golds[i + 1:i + 4]]
    kinds = {"string": 0, "exact": 0, "far": 0}
    for a, b in pairs:
        fa, fb = g.form(a), g.form(b)
        if not fa.parsed or not fb.parsed:
            continue
        before = g.stats.compares
        decided = g._compare(fa, fb)
        if g.stats.compares > before:
            continue  # verify itself decided
        kinds["string" if fa.strings & fb.strings else "exact" if fa.exact is not None and fb.exact is not None
              else "far"] += 1
        assert decided == _verify(fa.parsed, fb.parsed), (a, b)
    assert kinds["string"] >= 1 and kinds["exact"] > 100 and kinds["far"] > 30, kinds


def test_unresolved_comparison_is_recorded_not_silent(caplog):
    g = Grader(cpu_budget_s=0.3)
    with g.record() as st:
        assert not g.equivalent("3", TOWER)
        assert g.classes(["3", TOWER, TOWER, "4", "3.0"]) == [0, 1, 1, 3, 0]
    assert st.compare_timeouts == {("3", TOWER)} and st.timeouts == 1
    assert st.as_dict()["unresolved_examples"] == [f"3 vs {TOWER}"]
    assert "used more than 0.3 s of CPU" in caplog.text and TOWER in caplog.text
    with g.record() as again:  # a cached unresolved pair is still counted for the new record
        g.equivalent("3", TOWER)
    assert again.compare_timeouts == {("3", TOWER)} and again.compares == 0


def _grade_cold(answers, gold, budget):
    """Correctness + classes with every cache cleared (sympy's, math-verify's, the grader's)."""
    import math_verify.parser
    from sympy.core.cache import clear_cache

    clear_cache()
    math_verify.parser.parse_latex_cached.cache_clear()
    math_verify.parser.parse_expr_cached.cache_clear()
    g = Grader(cpu_budget_s=budget)
    correct = [g.equivalent(gold, a) for a in answers]
    return correct, g.classes(answers), sorted(g.stats.compare_timeouts), sorted(g.stats.parse_timeouts)


def test_answer_classes_do_not_depend_on_cpu_load(committed_answers):
    """The answers of a committed MATH-500 question plus a 0.16 s comparison and a tower. Under 2
    busy processes the 0.16 s comparison takes ~0.6 s of wall time (a wall-clock budget of 0.5 s
    would call it unresolved) but the same CPU time; the tower exceeds any budget."""
    answers = ["5", "150000!", TOWER, r"\frac{1}{2}", "0.5", "5.0", "150000!"] + committed_answers[0]
    Grader().equivalent("1", "x")  # load the parsers first: the first parse is slow
    idle = _grade_cold(answers, "5", budget=0.5)
    assert idle[0][:7] == [True, False, False, False, False, True, False]
    assert idle[1][:7] == [0, 1, 2, 3, 3, 0, 1]
    assert idle[2] == [("5", TOWER)] and idle[3] == []
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.2)
        loaded = _grade_cold(answers, "5", budget=0.5)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert loaded == idle


# -- issue 29: signatures and kind rules scale class building with the distinct forms ------------
def _math_verify_parse(answer):
    """math-verify's parse of one answer exactly as the grader calls it (``$..$`` unless the string
    has a ``$`` or a ``\\boxed``), without the grader's caches or shortcuts."""
    from math_verify import parse

    text = answer if "$" in answer or "\\boxed" in answer else f"${answer}$"
    return parse(text, parsing_timeout=None) or parse(answer, parsing_timeout=None)


def _reference_classes(answers):
    """Every answer against every class representative through math-verify (no signatures, no
    shortcuts): what :func:`answer_classes` must reproduce."""
    from math_verify import verify

    parsed = {a: _math_verify_parse(a) for a in set(answers)}
    reps, labels = [], []
    for i, a in enumerate(answers):
        for j, r in reps:
            if r == a or (parsed[r] and parsed[a] and verify(parsed[r], parsed[a], timeout_seconds=None)):
                labels.append(j)
                break
        else:
            reps.append((i, a))
            labels.append(i)
    return labels


def _sympy_part(answer):
    from sympy import srepr

    return tuple(srepr(x) for x in _math_verify_parse(answer) if not isinstance(x, str))


# strings whose spacing or wrapper math-verify reads differently (a signature must keep them apart)
SIGNATURE_TRAPS = [
    ("11, \\! 111, \\! 100", "11,\\! 111,\\! 100"),  # thousands separators vs a tuple
    ("1, 000", "1,000"),
    ("\\boxed{\\$36}", "$\\$36$"),
    ("0.5", "0.50"),  # math-verify reads 0.5 as 1/2, 0.50 as a float
    ("\\pi r", "\\pir"),
    ("5 cm", "5cm"),
    ("(1,2]", "[1,2]"),
    ("3 \\sqrt{5}", "3\\sqrt{5}"),
]


@pytest.mark.parametrize("a,b", SIGNATURE_TRAPS)
def test_signature_keeps_apart_what_math_verify_reads_differently(a, b):
    from optscale.data.grading import answer_signature

    if _sympy_part(a) != _sympy_part(b):
        assert answer_signature(a) != answer_signature(b), (a, b)


def test_signature_merges_rewritings_without_sympy():
    from optscale.data.grading import answer_signature

    half = ["1/2", "\\frac{1}{2}", "\\dfrac{1}{2}", "\\tfrac{1}{2}", "$\\frac{1}{2}$", "\\boxed{1/2}", "\\frac{2}{4}",
            " 1/2 "]
    assert {answer_signature(x) for x in half} == {"rational:1/2"}
    assert answer_signature("-\\frac{5}{13}") == answer_signature("\\frac{-5}{13}") == "rational:-5/13"
    assert len({answer_signature(x) for x in ["(3, 4]", "\\left(3,4\\right]", "$(3,4]$", "\\boxed{\\left( 3, 4 \\right]}"]}) == 1
    assert answer_signature("x = 5") == answer_signature("x=5")
    g = Grader()
    g.classes(half + ["(3, 4]", "\\left(3,4\\right]", "$(3,4]$"])
    assert g.stats.parses == 2  # one parse per signature


def test_equal_signatures_mean_equal_parses(committed_answers, data_dir):
    """On every committed answer and on MATH-500 gold answers in the ways a model writes them,
    strings with one signature get one math-verify parse (so sharing it changes nothing)."""
    from collections import defaultdict

    from optscale.data.grading import answer_signature

    golds = [p.answer for p in load_benchmark("math500", data_dir)]
    strings = {str(a).strip() for row in committed_answers for a in row if a is not None}
    for gold in golds[::2]:
        strings |= {gold, f"${gold}$", f"\\boxed{{{gold}}}", gold.replace(" ", ""), gold.replace("\\frac", "\\dfrac"),
                    gold.replace("(", "\\left(").replace(")", "\\right)"), re.sub(r"\s*([,+=])\s*", r"\1 ", gold)}
    strings |= {x for pair in SIGNATURE_TRAPS for x in pair}
    groups = defaultdict(set)
    for s in strings:
        groups[answer_signature(s)].add(s)
    shared = [g for g in groups.values() if len(g) > 1]
    assert len(shared) > 150  # the signature does merge rewritings
    for g in shared:
        parts = {s: _sympy_part(s) for s in g}
        assert len(set(parts.values())) == 1, parts


# kinds that verify's rules tell apart: a number, intervals, a matrix, a tuple, an assignment,
# expressions, a bare symbol (every pair is unequal, and none needs a math-verify call)
APART_BY_KIND = ["5", "(3, 4]", "[0, 1) \\cup (2, 3]", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "1, 2", "x = 7",
                 "2x + 1", "x^2 + 1", "\\text{east}", "-4 + 7i"]


def test_kinds_tell_answers_apart_without_math_verify():
    from math_verify import verify

    g = Grader()
    assert g.classes(APART_BY_KIND) == list(range(len(APART_BY_KIND)))
    assert g.stats.compares == 0
    parsed = [_math_verify_parse(a) for a in APART_BY_KIND]
    for i, a in enumerate(parsed):  # math-verify agrees: no two of them are equal, either way round
        for j, b in enumerate(parsed):
            if i != j:
                assert not verify(a, b, timeout_seconds=None), (APART_BY_KIND[i], APART_BY_KIND[j])


# answers math-verify merges across kinds and spellings (the rules must not split them)
MERGED_ACROSS_KINDS = ["5", "x = 5", "5.0", "\\frac{10}{2}", "e", "\\exp(1)", "x+1", "1+x", "\\frac{1}{2}", "0.5",
                       "(1, 2)", "\\left(1,2\\right)", "1,2", "\\{1, 2\\}", "x = \\frac12", "2k+2", "2(k+1)",
                       "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
                       "(-\\infty, 3)", "(-\\infty,3)", "[2, \\infty)", "\\text{(C)}", "C", "90^\\circ", "90",
                       # one value as a float and as a rational, in each kind (different parses)
                       "[0.50, 1]", "[\\frac{1}{2}, 1]", "(0,1) \\cup (2, 2.50)", "(0,1)\\cup(2,\\frac52)",
                       "\\begin{pmatrix} 0.50 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} \\frac12 \\\\ 2 \\end{pmatrix}",
                       "0.50x", "\\frac{x}{2}", "0.50, 2", "\\frac12, 2", "x = 0.50", "y = \\frac{1}{2}"]


def test_classes_equal_math_verify_reference(data_dir):
    """Classes and correctness equal the reference (every answer vs every class representative
    through math-verify) on MATH-500 golds in several spellings plus wrong answers, and on answers
    math-verify merges across kinds; the grader calls verify far less often."""
    rng = np.random.default_rng(0)
    golds = [p.answer for p in load_benchmark("math500", data_dir)]
    picks = [golds[int(i)] for i in rng.choice(len(golds), size=14, replace=False)]
    answers = []
    for gold in picks:
        answers += [gold, f"${gold}$", f"\\boxed{{{gold}}}", gold.replace("\\frac", "\\dfrac"), gold.replace(" ", "")]
    answers = [answers[int(i)] for i in rng.permutation(len(answers))] + MERGED_ACROSS_KINDS + APART_BY_KIND
    g = Grader()
    assert g.classes(answers) == _reference_classes(answers)
    merged = g.classes(MERGED_ACROSS_KINDS)
    assert merged == _reference_classes(MERGED_ACROSS_KINDS)
    assert len(set(merged)) < len(MERGED_ACROSS_KINDS) - 8  # real merges across kinds happened
    from math_verify import verify

    for gold in picks[:6]:
        pg = _math_verify_parse(gold)
        assert [g.equivalent(gold, a) for a in answers] == \
            [a == gold or bool(pg and _math_verify_parse(a) and verify(pg, _math_verify_parse(a), timeout_seconds=None))
             for a in answers]
