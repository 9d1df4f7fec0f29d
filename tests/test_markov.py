"""MarkovScale closed forms against seeded simulation and hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest

from optscale.systems import markov as mk


def test_recursion_matches_closed_form():
    p1, a, b = 0.3, 0.8, 0.4
    p = p1
    for t in range(1, 12):
        assert mk.accuracy_after(p1, a, b, t) == pytest.approx(p, abs=1e-12)
        p = a * p + b * (1 - p)


def test_limit_and_hand_values():
    assert mk.limit_accuracy(0.8, 0.4) == pytest.approx(0.4 / 0.6)
    # p2 = b + (a-b) p1 = 0.4 + 0.4*0.3 = 0.52
    assert mk.accuracy_after(0.3, 0.8, 0.4, 2) == pytest.approx(0.52)
    assert mk.accuracy_after(0.3, 0.8, 0.4, 200) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        mk.limit_accuracy(1.0, 0.0)
    assert mk.accuracy_after(0.3, 1.0, 0.0, 5) == pytest.approx(0.3)  # frozen chain


@pytest.mark.parametrize("p1,a,b", [(0.3, 0.8, 0.4), (0.7, 0.6, 0.1), (0.2, 0.3, 0.9), (0.5, 0.95, 0.05)])
def test_closed_form_matches_simulation(p1, a, b):
    rng = np.random.default_rng(0)
    n = 40_000
    chains = mk.simulate_chains(p1, a, b, rounds=6, n_chains=n, rng=rng)
    emp = chains.mean(axis=0)
    theory = mk.accuracy_curve(p1, a, b, 6)
    se = np.sqrt(theory * (1 - theory) / n)
    assert np.all(np.abs(emp - theory) < 5 * se + 1e-9), (emp, theory)


def test_estimator_recovers_parameters_and_ci_covers():
    rng = np.random.default_rng(1)
    p1, a, b = 0.4, 0.85, 0.25
    chains = mk.simulate_chains(p1, a, b, rounds=5, n_chains=3000, rng=rng)
    fit = mk.estimate_chain(chains)
    assert fit.a_ci[0] <= a <= fit.a_ci[1]
    assert fit.b_ci[0] <= b <= fit.b_ci[1]
    assert fit.p1_ci[0] <= p1 <= fit.p1_ci[1]
    assert abs(fit.a - a) < 0.03 and abs(fit.b - b) < 0.03
    boot = mk.bootstrap_chain(chains[:300], np.random.default_rng(2), reps=200)
    assert boot["a"][0] < boot["a"][1]


def test_ci_coverage_near_nominal():
    # Over many small replicate experiments the 95% interval of b must cover the truth ~95%.
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(300):
        fit = mk.estimate_chain(mk.simulate_chains(0.5, 0.7, 0.3, 4, 40, rng))
        hits += fit.b_ci[0] <= 0.3 <= fit.b_ci[1]
    assert hits / 300 >= 0.92


def test_count_transitions_by_hand():
    chains = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    n = mk.count_transitions(chains)
    assert n == {"cc": 2, "ci": 1, "ic": 1, "ii": 2, "first_correct": 1, "n_chains": 3}
    fit = mk.estimate_chain(chains)
    assert fit.a == pytest.approx(2 / 3) and fit.b == pytest.approx(1 / 3) and fit.p1 == pytest.approx(1 / 3)


def test_helps_condition_and_neutral_line():
    p1, a = 0.4, 0.8
    bn = mk.neutral_b(p1, a)  # (1-a) p1 / (1-p1) = 0.2*0.4/0.6
    assert bn == pytest.approx(0.2 * 0.4 / 0.6)
    assert mk.limit_accuracy(a, bn) == pytest.approx(p1)
    assert np.allclose(mk.accuracy_curve(p1, a, bn, 8), p1)
    assert mk.revision_helps(p1, a, bn + 0.05) and not mk.revision_helps(p1, a, bn - 0.05)
    assert not mk.revision_helps(0.5, 0.9, 0.1)  # exactly neutral: limit 0.5 = p1
    # helps <=> limit > p1, on a grid
    for aa in np.linspace(0, 0.99, 12):
        for bb in np.linspace(0.01, 1, 12):
            assert mk.revision_helps(p1, aa, bb) == (mk.limit_accuracy(aa, bb) > p1 + 1e-15) or math.isclose(
                mk.limit_accuracy(aa, bb), p1)


@pytest.mark.parametrize("p1,a,b", [(0.3, 0.8, 0.4), (0.2, 0.1, 0.9), (0.9, 0.5, 0.2), (0.6, 0.2, 0.7)])
def test_bounds_contain_every_round(p1, a, b):
    bd = mk.accuracy_bounds(p1, a, b)
    curve = mk.accuracy_curve(p1, a, b, 60)
    assert np.all(curve >= bd["lower"] - 1e-12) and np.all(curve <= bd["upper"] + 1e-12)
    assert curve.max() == pytest.approx(bd["upper"], abs=1e-6) or bd["upper"] == pytest.approx(bd["limit"])
    assert bd["neutral"] == p1


def test_rounds_to_converge_and_pay():
    p1, a, b = 0.3, 0.8, 0.4
    t = mk.rounds_to_converge(p1, a, b, eps=0.01)
    curve = mk.accuracy_curve(p1, a, b, t + 2)
    ps = mk.limit_accuracy(a, b)
    assert abs(curve[t - 1] - ps) <= 0.01 and abs(curve[t - 2] - ps) > 0.01
    # free rounds: take many; expensive rounds: stop at 1; gain p2-p1 = 0.22, p3-p2 = 0.088
    assert mk.rounds_that_pay(p1, a, b, cost_per_round=0.0, max_rounds=10) == 10
    assert mk.rounds_that_pay(p1, a, b, cost_per_round=0.5) == 1
    assert mk.rounds_that_pay(p1, a, b, cost_per_round=0.1) == 2
    # revision that hurts: never pays
    assert mk.rounds_that_pay(0.8, 0.6, 0.1, cost_per_round=0.0) == 1


def test_chains_matrix_and_errors():
    df = pd.DataFrame({"question_id": ["q1"] * 3 + ["q2"] * 3, "chain": [0] * 6, "round": [1, 2, 3] * 2,
                       "correct": [True, False, True, False, False, True]})
    m = mk.chains_matrix(df)
    assert m.shape == (2, 3) and m.astype(bool).tolist() == [[True, False, True], [False, False, True]]
    with pytest.raises(ValueError, match="missing rounds"):
        mk.chains_matrix(df.iloc[:-1])
    with pytest.raises(ValueError, match="probability"):
        mk.accuracy_after(1.2, 0.5, 0.5, 1)
    with pytest.raises(ValueError, match="placeholders"):
        mk.revision_prompt("no slots", "q", "p")


def test_fit_with_unvisited_state_is_nan_not_error():
    fit = mk.estimate_chain(np.array([[True, True], [True, False]]))
    assert math.isnan(fit.b) and fit.b_ci == (0.0, 1.0)
    d = fit.to_dict()
    assert d["helps"] is None and math.isnan(d["limit"])


class UnboxedSampler:
    """Every sample ends in "2 + 3 = 5" without stating it as the answer; finish_reason fixed
    ("length": cut off at the token cap)."""

    def __init__(self, finish_reason):
        self.finish_reason = finish_reason

    def generate(self, requests):
        from optscale.sampling import Completion

        return [[Completion(text="We add: 2 + 3 = 5", n_tokens=8, finish_reason=self.finish_reason, seed=r.seed + i)
                 for i in range(r.n)] for r in requests]


def test_revision_chains_grade_truncated_samples_as_stating_no_answer():
    from optscale.data.benchmarks import Problem

    probs = [Problem("ds", "q0", "What is 2 + 3?", "5", 0)]
    for finish, answer in (("stop", "5"), ("length", None)):
        df = mk.generate_revision_chains(UnboxedSampler(finish), probs, rounds=2, max_new_tokens=8, seed=0,
                                         solve_template="{question}", revise_template="{question}\n{previous}",
                                         chains_per_question=2)
        assert len(df) == 4 and (df["finish_reason"] == finish).all()
        assert df["answer"].tolist() == [answer] * 4, finish
        assert df["correct"].tolist() == [answer is not None] * 4, finish
