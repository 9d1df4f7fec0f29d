"""The OptScale bound: how many i.i.d. samples reach a target score with confidence ``1 - delta``.

For one question, sample scores are i.i.d. with CDF ``F`` on [0, 1]. The best of ``N`` samples
reaches a target score ``s*`` unless all ``N`` fall below it::

    P(max of N >= s*) = 1 - F(s*)^N                      (confidence_at)

so the smallest ``N`` with confidence at least ``1 - delta`` is::

    N* = ceil(log(delta) / log(F(s*)))                    (required_samples)

clipped to ``[n_min, max_N]``. Every function here is a pure numpy function that broadcasts over
any shapes (questions x parameter grids), with no Python loop over questions.

Exact semantics of :func:`required_samples` (tested against a brute-force loop over N):

- The acceptance test is ``N * log(F) <= log(delta)`` (that is ``F^N <= delta``, i.e. confidence
  ``1 - F^N >= 1 - delta``), in float64 with ``log`` taken once per entry. It is the test the
  brute-force loop ``for N in 1..max_N`` makes (:func:`required_samples_loop`). The closed
  form gives a candidate, which is then corrected by one step either way, so floating-point
  rounding of ``log(delta) / log(F)`` can never make the two differ. (The log form is used
  rather than ``1 - F**N`` because ``pow`` may round differently between numpy's array and
  scalar code paths, and because it keeps precision for ``F`` near 1.)
- ``F(s*) == 0``: the first sample already reaches ``s*``; ``N = n_min``, reachable.
- ``F(s*) == 1``: ``s*`` can never be reached; ``N = max_N`` and ``reachable = False``.
- Needed ``N`` above ``max_N``: ``N = max_N`` and ``reachable = False``.
- NaN or values outside [0, 1] for ``F(s*)``, ``delta`` outside (0, 1), or ``n_min`` > ``max_N``
  raise :class:`BoundError` naming the first bad entry (never a silent NaN ``N``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .truncnorm import truncnorm_cdf

__all__ = [
    "BoundError",
    "confidence_at",
    "required_samples",
    "required_samples_loop",
    "reachable_level",
    "target_reachable",
    "target_from_percentile",
    "target_absolute",
    "n_star",
]


class BoundError(ValueError):
    """Inputs to the bound that have no meaning (NaN, probabilities outside [0, 1], ...)."""


def _first_bad(mask: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(mask)[0]) if mask.ndim else ()
    return f"index {idx}" if idx else "the value"


def _check_prob(name: str, x: np.ndarray, lo_open: bool = False, hi_open: bool = False) -> None:
    nan = np.isnan(x)
    if nan.any():
        raise BoundError(f"{name} is NaN at {_first_bad(nan)}")
    bad = (x <= 0 if lo_open else x < 0) | (x >= 1 if hi_open else x > 1)
    if bad.any():
        lo, hi = "(" if lo_open else "[", ")" if hi_open else "]"
        raise BoundError(f"{name} = {float(x[bad].flat[0])!r} at {_first_bad(bad)} is outside {lo}0, 1{hi}")


def confidence_at(F_s, N):
    """Confidence that the best of ``N`` i.i.d. samples reaches ``s*``: ``1 - F_s**N``.

    ``F_s``: CDF at the target, any shape; ``N``: sample counts, broadcastable. Returns float
    array of the broadcast shape (computed as ``-expm1(N log F)`` for precision near F = 1)."""
    F = np.asarray(F_s, dtype=float)
    _check_prob("F(s*)", F)
    with np.errstate(divide="ignore"):
        return -np.expm1(np.asarray(N, dtype=float) * np.log(F))


def _met(log_F: np.ndarray, N: np.ndarray, log_delta: np.ndarray) -> np.ndarray:
    # The one acceptance test, shared with the brute-force loop: F^N <= delta in the log domain.
    with np.errstate(invalid="ignore"):  # 0 * -inf where F = 0 and N - 1 = 0 (masked by callers)
        return N * log_F <= log_delta


def required_samples(F_s, delta, max_N: int = 64, n_min: int = 1):
    """Smallest ``N`` in ``[n_min, max_N]`` with ``1 - F_s**N >= 1 - delta``.

    Parameters
    ----------
    F_s : array_like, any shape
        CDF of the question's score distribution at the target score, in [0, 1].
    delta : array_like, broadcastable with ``F_s``
        Allowed failure probability, in (0, 1).
    max_N, n_min : int
        Sample budget cap and floor (``1 <= n_min <= max_N``).

    Returns
    -------
    N : int64 ndarray of the broadcast shape
    reachable : bool ndarray of the same shape; False where even ``max_N`` samples do not reach
        confidence ``1 - delta`` (then ``N == max_N``), including ``F_s == 1``.
    """
    if int(n_min) != n_min or int(max_N) != max_N or not 1 <= n_min <= max_N:
        raise BoundError(f"need integers 1 <= n_min <= max_N, got n_min={n_min}, max_N={max_N}")
    F = np.asarray(F_s, dtype=float)
    d = np.asarray(delta, dtype=float)
    _check_prob("F(s*)", F)
    _check_prob("delta", d, lo_open=True, hi_open=True)
    F, d = np.broadcast_arrays(F, d)
    cap = float(max_N + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lf, ld = np.log(F), np.log(d)
        ratio = ld / lf  # F == 0 -> 0; F == 1 -> inf
    ratio = np.where(F >= 1.0, cap, ratio)
    n = np.clip(np.ceil(ratio), 1.0, cap)
    # One correction step each way against the exact float test (log rounding at integers).
    down = (n > 1) & _met(lf, n - 1, ld)
    n = np.where(down, n - 1, n)
    up = (n <= max_N) & ~_met(lf, n, ld)
    n = np.where(up, n + 1, n)
    reachable = n <= max_N
    N = np.clip(n, n_min, max_N).astype(np.int64)
    return N, reachable


def required_samples_loop(F_s, delta, max_N: int = 64, n_min: int = 1):
    """Brute-force solver: for each entry, loop ``N = 1..max_N`` until ``F^N <= delta``.

    A deliberately plain loop with the same exact acceptance test as :func:`required_samples`,
    kept as its oracle (tests, ``benchmarks/bench_bounds.py``). Same inputs and outputs; one
    Python loop iteration per entry and per ``N``. It is *not* the reference's rule: the reference
    (Albertwyk/OptScale, ``find_min_N_for_threshold``) builds the density of the best of ``N`` on
    a 1000-point grid, integrates it numerically and compares its ``delta``-quantile with ``s*``,
    which differs from this exact test near the boundary and where its normaliser underflows
    (``benchmarks/bench_bounds.py`` baseline 3, ``scripts/reference_agreement.py``,
    docs/deviations_from_reference.md)."""
    F = np.asarray(F_s, dtype=float)
    d = np.asarray(delta, dtype=float)
    F, d = np.broadcast_arrays(F, d)
    with np.errstate(divide="ignore"):
        LF, LD = np.log(F), np.log(d)
    N = np.empty(F.shape, dtype=np.int64)
    ok = np.empty(F.shape, dtype=bool)
    for idx in np.ndindex(F.shape):
        lf, ld = float(LF[idx]), float(LD[idx])
        found = max_N
        hit = False
        for n in range(1, max_N + 1):
            if n * lf <= ld:  # confidence 1 - F^n >= 1 - delta
                found, hit = n, True
                break
        N[idx] = max(found, n_min)
        ok[idx] = hit
    return N, ok


def reachable_level(N, delta):
    """The largest ``F(s*)`` that ``N`` samples still beat with confidence ``1 - delta``:
    ``delta ** (1 / N)``. Broadcasts; returns floats in (0, 1)."""
    d = np.asarray(delta, dtype=float)
    _check_prob("delta", d, lo_open=True, hi_open=True)
    N = np.asarray(N, dtype=float)
    if (N < 1).any() or np.isnan(N).any():
        raise BoundError("N must be >= 1")
    return d ** (1.0 / N)


def target_reachable(ppf: Callable[[np.ndarray], np.ndarray], N, delta):
    """The highest target ``s*`` reached by the best of ``N`` samples with confidence ``1 - delta``.

    ``s* = F^{-1}(delta ** (1/N))`` where ``ppf`` is the question's quantile function (e.g.
    ``lambda q: truncnorm_ppf(q, mu, sigma)``, broadcasting over questions)."""
    return ppf(reachable_level(N, delta))


def target_from_percentile(p, ppf: Callable[[np.ndarray], np.ndarray]):
    """Target score as in the paper: ``s* = F^{-1}(1 - p)``, the top-``p`` quantile of ``F``.

    ``p`` in (0, 1), any shape; ``ppf`` is the quantile function of the distribution that
    defines the target (a population / prior fit; note that using the same ``F`` as the bound
    makes ``F(s*) = 1 - p`` for every question)."""
    p = np.asarray(p, dtype=float)
    _check_prob("p", p, lo_open=True, hi_open=True)
    return ppf(1.0 - p)


def target_absolute(s_star, shape=()):
    """An absolute target score in [0, 1], validated and broadcast to ``shape``."""
    s = np.asarray(s_star, dtype=float)
    _check_prob("s*", s)
    return np.broadcast_to(s, np.broadcast_shapes(s.shape, tuple(shape)))


def n_star(mu, sigma, s_star, delta, max_N: int = 64, n_min: int = 1):
    """``required_samples`` for truncated-normal questions: ``F(s*) = truncnorm_cdf(s*, mu, sigma)``.

    All arguments broadcast (e.g. mu, sigma of shape (Q, 1) against deltas of shape (D,)).
    Returns ``(N, reachable)`` as :func:`required_samples`. ``s*`` outside [0, 1] (scores live
    there), ``sigma <= 0`` and NaN or infinite ``mu`` / ``sigma`` raise :class:`BoundError`."""
    _check_prob("s*", np.asarray(s_star, dtype=float))
    for name, x, positive in (("mu", np.asarray(mu, dtype=float), False), ("sigma", np.asarray(sigma, dtype=float), True)):
        bad = ~np.isfinite(x) | ((x <= 0) if positive else False)
        if bad.any():
            need = "finite and > 0" if positive else "finite"
            raise BoundError(f"{name} = {float(x[bad].flat[0])!r} at {_first_bad(bad)} must be {need}")
    return required_samples(truncnorm_cdf(s_star, mu, sigma), delta, max_N=max_N, n_min=n_min)


def mc_coverage(sample: Callable[[np.ndarray, tuple[int, ...], np.random.Generator], np.ndarray], N, s_star,
                trials: int, seed: int, chunk: int = 64) -> np.ndarray:
    """Monte Carlo ``P(max of N_q draws >= s*_q)`` per question.

    ``sample(idx, shape, rng)`` returns scores of shape ``(len(idx),) + shape`` drawn from the
    *true* distributions of questions ``idx``; ``N`` and ``s_star`` are (Q,). Each question gets
    ``trials`` replicates of ``N_q`` draws (questions are processed ``chunk`` at a time).
    Seeded: the same ``seed`` gives the same estimates. Returns (Q,) empirical coverage."""
    N = np.asarray(N, dtype=np.int64)
    s_star = np.asarray(s_star, dtype=float)
    rng = np.random.default_rng(seed)
    out = np.empty(N.shape[0])
    for start in range(0, N.shape[0], chunk):
        idx = np.arange(start, min(start + chunk, N.shape[0]))
        nmax = int(N[idx].max())
        x = sample(idx, (trials, nmax), rng)
        used = np.arange(nmax)[None, None, :] < N[idx][:, None, None]
        hit = ((x >= s_star[idx][:, None, None]) & used).any(axis=2)
        out[idx] = hit.mean(axis=1)
    return out
