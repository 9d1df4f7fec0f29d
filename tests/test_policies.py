"""Each policy on hand-made question streams where the right stop and answer are known."""

import math

import numpy as np
import pytest

from optscale.data.grading import answer_classes
from optscale.policies import POLICIES, PolicyError, QuestionContext, Sample, group_confidences, make_policy, vote


def stream(classes, scores=None, correct=None, tokens=None, gc=None, window=4):
    n = len(classes)
    scores = scores if scores is not None else [0.5] * n
    correct = correct if correct is not None else [False] * n
    tokens = tokens if tokens is not None else [10] * n
    return [Sample(i, float(scores[i]), int(classes[i]), float(tokens[i]), bool(correct[i]),
                   np.asarray(gc[i]) if gc is not None else np.empty(0), window) for i in range(n)]


def run(policy, samples, max_N=None, prior=None):
    policy.reset(QuestionContext(max_N=max_N or len(samples), prior=prior))
    spent = 0.0
    for s in samples:
        stop = policy.observe(s)
        spent += policy.charge(s)
        if stop:
            break
    return len(policy.seen), policy.select(), spent


def test_registry_lists_every_policy():
    for name in ["bon", "majority", "weighted-vote", "optscale-0", "optscale-t", "optscale-seq", "esc", "asc",
                 "dsc", "consol", "optpo", "ias", "deepconf", "oracle"]:
        assert name in POLICIES
    with pytest.raises(KeyError, match="Did you mean"):
        POLICIES.get("optscale0")
    with pytest.raises(TypeError, match="unknown parameter"):
        make_policy("esc", windw=3)


def test_bon_fixed_n_selects_highest_score_among_first_n():
    s = stream([0, 1, 2, 3], scores=[0.2, 0.9, 0.5, 0.99])
    n, pos, tok = run(make_policy("bon", N=3), s)
    assert (n, pos, tok) == (3, 1, 30.0)


def test_bon_skips_samples_without_answer():
    n, pos, _ = run(make_policy("bon"), stream([-1, 1], scores=[0.9, 0.1]))
    assert pos == 1


def test_majority_votes_on_math_verify_classes_not_strings():
    labels = answer_classes(["\\frac{1}{2}", "7", "0.5", "7.0", "1/2"])
    assert labels[0] == labels[2] == labels[4]
    n, pos, _ = run(make_policy("majority"), stream(labels))
    assert n == 5 and labels[pos] == labels[0]


def test_weighted_vote_prefers_score_mass():
    s = stream([0, 0, 1], scores=[0.1, 0.1, 0.9])
    assert run(make_policy("weighted-vote"), s)[1] == 2
    assert run(make_policy("majority"), s)[1] == 0


def test_vote_tie_goes_to_first_seen():
    pos, labels, totals = vote([3, 5, 5, 3, -1])
    assert pos == 0 and labels == [3, 5] and totals == [2.0, 2.0]
    assert vote([-1, -1])[0] is None


def test_esc_stops_after_first_unanimous_window():
    assert run(make_policy("esc", window=2), stream([1, 1, 2, 2]))[0] == 2
    assert run(make_policy("esc", window=2), stream([1, 2, 3, 3, 4, 4]))[0] == 4
    # a window of "no answer" never counts as agreement
    assert run(make_policy("esc", window=2), stream([-1, -1, 5, 6]))[0] == 4


def test_asc_beta_rule_stops_at_known_count():
    # unanimous votes: P(p1 > p2) = 1 - 0.5^(v+1) >= 0.95  <=>  v >= 4
    assert run(make_policy("asc", threshold=0.95), stream([7] * 10))[0] == 4
    # alternating answers never reach confidence
    assert run(make_policy("asc", threshold=0.95), stream([1, 2] * 5))[0] == 10


def test_consol_sprt_boundary():
    # each leader vote adds log(0.7/0.5); boundary log((1-0.2)/0.05)
    need = math.ceil(math.log(0.8 / 0.05) / math.log(1.4))
    assert run(make_policy("consol", p1=0.7, alpha=0.05, beta=0.2), stream([4] * 20))[0] == need


def test_optpo_counts_other_answers_against_leader():
    n_unanimous = run(make_policy("optpo", threshold=0.95), stream([1] * 12))[0]
    n_mixed = run(make_policy("optpo", threshold=0.95), stream([1, 2, 3] + [1] * 12))[0]
    assert n_unanimous == 4  # Beta(1+v, 1) tail >= .95 at v = 4
    assert n_mixed > n_unanimous + 2


def test_oracle_stops_at_first_correct():
    n, pos, tok = run(make_policy("oracle"), stream([1, 2, 3, 4], correct=[0, 0, 1, 1], tokens=[1, 2, 3, 4]))
    assert (n, pos, tok) == (3, 2, 6.0)
    assert run(make_policy("oracle"), stream([1, 2], correct=[0, 0]))[0] == 2


def test_optscale0_easy_question_stops_at_peek_hard_runs_to_max():
    easy = stream(list(range(10)), scores=[0.95, 0.97, 0.93] + [0.9] * 7)
    assert run(make_policy("optscale-0", target=0.5, delta=0.1, k=3), easy)[0] == 3
    hard = stream(list(range(10)), scores=[0.10, 0.12, 0.08] + [0.1] * 7)
    n, pos, _ = run(make_policy("optscale-0", target=0.9, delta=0.1, k=3), hard)
    assert n == 10


def test_optscale0_n_star_matches_bound_on_fit():
    from optscale.theory.bounds import n_star
    from optscale.theory.fits import fit_truncnorm

    sc = [0.55, 0.7, 0.62, 0.4, 0.8, 0.5, 0.66, 0.71, 0.3, 0.6, 0.58, 0.49]
    fit = fit_truncnorm(np.array(sc[:4]))
    N, _ = n_star(float(fit.mu), float(fit.sigma), 0.8, 0.2, 12, 4)
    assert run(make_policy("optscale-0", target=0.8, delta=0.2, k=4), stream(list(range(12)), scores=sc))[0] == int(N)


def test_optscale_t_prior_pulls_decision():
    sc = [0.5, 0.52, 0.48] + [0.5] * 9
    s = stream(list(range(12)), scores=sc)
    optimistic = run(make_policy("optscale-t", target=0.7, delta=0.2, k=3, prior_strength=50.0), s, prior=(0.95, 0.2))[0]
    pessimistic = run(make_policy("optscale-t", target=0.7, delta=0.2, k=3, prior_strength=50.0), s, prior=(0.2, 0.05))[0]
    assert optimistic < pessimistic == 12


def test_optscale_seq_stops_no_later_than_peek_decision_on_easy_stream():
    s = stream(list(range(12)), scores=[0.9] * 2 + [0.95] * 10)
    n, pos, _ = run(make_policy("optscale-seq", target=0.6, delta=0.1, k=2, use_prior=False), s)
    assert n == 2


def test_ias_rule_with_identity_calibration():
    # p_hat = 0.5, C = 0.75: N = ceil(log(0.25) / log(0.5)) = 2 ; peek k = 1
    s = stream(list(range(8)), scores=[0.5] * 8)
    assert run(make_policy("ias", C=0.75, k=1), s)[0] == 2
    s = stream(list(range(8)), scores=[0.1] * 8)  # p_hat = 0.1 -> N = 14 > 8
    assert run(make_policy("ias", C=0.75, k=1), s)[0] == 8


def test_dsc_easy_uses_windows_hard_uses_all():
    pol = make_policy("dsc", window=2, mu_threshold=0.5)
    assert run(pol, stream([3] * 8), prior=(0.9, 0.1))[0] == 2
    assert run(pol, stream([3] * 8), prior=(0.1, 0.1))[0] == 8
    # easy but disagreeing first window: next check at 4 with window 3..4
    assert run(pol, stream([1, 2, 5, 5, 6, 7, 8, 9]), prior=(0.9, 0.1))[0] == 4


def test_group_confidences_and_deepconf_truncation():
    g = group_confidences([-1.0, -3.0, -2.0], 2)
    assert np.allclose(g, [2.0, 2.5])
    # warm-up of 2 traces with min conf 5 and 3 -> threshold = quantile(.., 1-eta=0.5) = 4
    gc = [[5.0, 5.0], [3.0, 3.0], [6.0, 1.0], [6.0, 6.0]]
    pol = make_policy("deepconf", n_init=2, eta=0.5, tau=1.0)  # stops only on a unanimous kept vote
    n, pos, spent = run(pol, stream([1, 2, 3, 1], tokens=[10, 10, 10, 10], gc=gc, window=4), max_N=4)
    # third trace drops below 4 at window 1 -> charged 1 + 4 tokens and dropped from the vote
    assert n == 4 and spent == 10 + 10 + 5 + 10
    assert pol.kept == [True, True, False, True]
    assert pos in (0, 3)


# -- issue 17 item 4: hyper-parameters are range-checked at construction -------------------------
@pytest.mark.parametrize("name,params,message", [
    ("asc", {"threshold": 1.5}, "policy 'asc': parameter threshold=1.5 must be a number in (0.5, 1)"),
    ("optscale-0", {"delta": 0}, "policy 'optscale-0': parameter delta=0 must be a number in (0, 1)"),
    ("optscale-0", {"k": 0}, "policy 'optscale-0': parameter k=0 must be an integer >= 1"),
    ("optscale-t", {"target": 1.2}, "policy 'optscale-t': parameter target=1.2 must be a score s* in (0, 1)"),
    ("ias", {"k": 0}, "policy 'ias': parameter k=0 must be an integer >= 1"),
    ("esc", {"window": 2.5}, "policy 'esc': parameter window=2.5 must be an integer >= 1"),
    ("optpo", {"threshold": "0.9"}, "policy 'optpo': parameter threshold='0.9' must be a number in (0.5, 1)"),
    ("bon", {"N": -1}, "policy 'bon': parameter N=-1 must be an integer >= 0 (0 = max_N)"),
])
def test_policy_parameters_out_of_range_fail_at_construction(name, params, message):
    with pytest.raises(PolicyError) as e:
        make_policy(name, **params)
    assert str(e.value) == message


def test_every_grid_value_is_in_range():
    for name in POLICIES.names():
        grid = POLICIES.get(name).grid
        for k, values in grid.items():
            for v in values:
                make_policy(name, **{k: v})
