import pytest

from optscale.data import load_benchmark
from optscale.grading import answer_classes, extract_answer, extract_boxed, grade, is_equivalent, split_steps


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
