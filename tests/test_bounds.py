import numpy as np
import pytest

from optscale.theory.bounds import (BoundError, confidence_at, n_star, reachable_level, required_samples,
                                    required_samples_loop, target_absolute, target_from_percentile, target_reachable)
from optscale.theory.truncnorm import truncnorm_cdf, truncnorm_ppf


def _random_tuples(n, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-0.5, 1.5, n)
    sigma = np.exp(rng.uniform(np.log(0.005), np.log(1.0), n))
    s_star = rng.uniform(0, 1, n)
    delta = rng.choice([0.01, 0.05, 0.1, 0.2, 0.5], n) * rng.uniform(0.5, 1.5, n)
    return mu, sigma, s_star, np.clip(delta, 1e-4, 0.9)


def test_closed_form_equals_brute_force_loop_on_1e5_tuples():
    mu, sigma, s_star, delta = _random_tuples(100_000)
    F = truncnorm_cdf(s_star, mu, sigma)
    N, ok = required_samples(F, delta, max_N=64)
    N_loop, ok_loop = required_samples_loop(F, delta, max_N=64)
    assert np.array_equal(N, N_loop)
    assert np.array_equal(ok, ok_loop)
    # the sample is not trivial: many distinct answers, some unreachable, some N = 1
    assert len(np.unique(N)) > 40 and (~ok).sum() > 1000 and (N == 1).sum() > 1000


def test_exact_at_integer_boundaries():
    # F = delta**(1/n) puts log(delta)/log(F) on an integer, where log rounding could be off by one.
    delta = np.array([0.01, 0.05, 0.1, 0.2, 0.3])[:, None]
    n = np.arange(1, 65)[None, :]
    F = delta ** (1.0 / n)
    F = np.stack([np.nextafter(F, 0), F, np.nextafter(F, 1)])
    N, ok = required_samples(F, delta, max_N=64, n_min=1)
    N_loop, ok_loop = required_samples_loop(F, delta, max_N=64, n_min=1)
    assert np.array_equal(N, N_loop) and np.array_equal(ok, ok_loop)


def test_minimality_and_confidence():
    F = np.linspace(0.01, 0.99, 99)
    for delta in (0.01, 0.1, 0.3):
        N, ok = required_samples(F, delta, max_N=10_000)
        assert ok.all()
        assert (confidence_at(F, N) >= 1 - delta).all()
        assert (confidence_at(F, N - 1)[N > 1] < 1 - delta).all()
        # matches the textbook closed form away from integer boundaries
        assert np.array_equal(N, np.ceil(np.log(delta) / np.log(F)).astype(int))
        assert (1 - F ** (N - 1.0) < 1 - delta)[N > 1].all() and (1 - F**N >= 1 - delta - 1e-15).all()


def test_edge_cases_F_zero_and_one():
    N, ok = required_samples([0.0, 1.0, 0.5], 0.1, max_N=16, n_min=2)
    assert N.tolist() == [2, 16, 4] and ok.tolist() == [True, False, True]
    N, ok = required_samples([0.0, 1.0], 0.1, max_N=8, n_min=1)
    assert N.tolist() == [1, 8] and ok.tolist() == [True, False]


def test_cap_and_floor():
    N, ok = required_samples(0.99, 0.01, max_N=64)  # needs 459
    assert int(N) == 64 and not bool(ok)
    N, ok = required_samples(0.1, 0.5, max_N=64, n_min=4)  # needs 1
    assert int(N) == 4 and bool(ok)


def test_broadcasting_over_questions_and_grids():
    F = np.array([0.2, 0.5, 0.9])[:, None]
    deltas = np.array([0.01, 0.1, 0.2])
    N, ok = required_samples(F, deltas, max_N=64)
    assert N.shape == (3, 3) and N.dtype == np.int64 and ok.shape == (3, 3)
    assert (np.diff(N, axis=0) >= 0).all() and (np.diff(N, axis=1) <= 0).all()  # monotone
    assert N[1, 1] == 4  # 0.5^4 = 0.0625 <= 0.1 < 0.125


@pytest.mark.parametrize("F,delta", [(np.nan, 0.1), (-0.1, 0.1), (1.2, 0.1), (0.5, 0.0), (0.5, 1.0),
                                     (0.5, np.nan)])
def test_bad_inputs_raise(F, delta):
    with pytest.raises(BoundError):
        required_samples(F, delta)


def test_bad_inputs_name_the_entry():
    with pytest.raises(BoundError, match=r"NaN at index \(1,\)"):
        required_samples([0.5, np.nan], 0.1)
    with pytest.raises(BoundError, match="n_min"):
        required_samples(0.5, 0.1, max_N=4, n_min=5)


def test_reachable_level_and_target_inverse():
    mu, sigma = np.array([0.3, 0.6, 0.9]), np.array([0.1, 0.2, 0.05])
    for N in (1, 4, 16):
        s = target_reachable(lambda q: truncnorm_ppf(q, mu, sigma), N, 0.1)
        # exact up to the ppf/cdf round trip (~1e-12): a hair lower target is reached with N
        Nn, ok = required_samples(truncnorm_cdf(s - 1e-9, mu, sigma), 0.1, max_N=64)
        assert ok.all() and (Nn <= N).all()
        # a slightly higher target needs more than N
        Nn2, _ = required_samples(truncnorm_cdf(s + 1e-3, mu, sigma), 0.1, max_N=64)
        assert (Nn2 > N).all()
    assert np.isclose(reachable_level(2, 0.25), 0.5)


def test_target_from_percentile_and_absolute():
    mu, sigma = np.array([0.4, 0.7]), np.array([0.1, 0.2])
    s = target_from_percentile(0.1, lambda q: truncnorm_ppf(q, mu, sigma))
    assert np.allclose(truncnorm_cdf(s, mu, sigma), 0.9)
    assert target_absolute(0.8, (3,)).tolist() == [0.8] * 3
    with pytest.raises(BoundError):
        target_absolute(1.5)
    with pytest.raises(BoundError):
        target_from_percentile(0.0, lambda q: q)


def test_n_star_end_to_end():
    N, ok = n_star(0.5, 0.1, 0.5, 0.1)  # F(s*) = 0.5 -> 4 samples
    assert int(N) == 4 and bool(ok)
    N, ok = n_star(np.array([0.5, 0.5]), np.array([0.1, 0.1]), np.array([0.0, 1.0]), 0.1, max_N=32)
    assert N.tolist() == [1, 32] and ok.tolist() == [True, False]


@pytest.mark.parametrize("args,message", [
    ((0.5, 0.1, 1.5, 0.1), "s* = 1.5 at the value is outside [0, 1]"),
    ((0.5, 0.1, np.array([0.5, -0.2]), 0.1), r"s* = -0.2 at index (1,) is outside [0, 1]"),
    ((0.5, 0.0, 0.8, 0.1), "sigma = 0.0 at the value must be finite and > 0"),
    ((float("nan"), 0.1, 0.8, 0.1), "mu = nan at the value must be finite"),
])
def test_n_star_rejects_targets_outside_the_score_range(args, message):
    """Issue 17 item 4: s* outside [0, 1] used to return (64, unreachable)."""
    with pytest.raises(BoundError) as e:
        n_star(*args)
    assert str(e.value) == message
