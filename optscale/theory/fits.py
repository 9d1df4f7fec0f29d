"""Per-question score distributions on [0, 1]: batched fits, goodness of fit, and a family registry.

The OptScale model treats one question's sample scores as i.i.d. draws from a truncated normal
on [0, 1] with location ``mu`` and scale ``sigma`` (the parameters of the *untruncated* normal).
This module fits it to many questions at once:

- ``scores`` is ``(Q, k)`` (Q questions, k scores each) or ``(k,)`` for one question (then every
  result field is a scalar-shaped array). ``mask`` (same shape, bool) marks the scores to use, so
  questions may have different counts.
- **MLE** (``prior=None``) maximizes the truncated-normal log-likelihood. **MAP** adds a Gaussian
  log-prior on ``(mu, sigma)``::

      log p(mu, sigma) = -prior_strength * [ (mu - mu0)^2 / (2 tau_mu^2) + (sigma - sigma0)^2 / (2 tau_sigma^2) ]

  with ``prior = (mu0, sigma0)`` or ``(mu0, sigma0, tau_mu, tau_sigma)`` (each a scalar or a
  (Q,) array; default ``tau_mu = tau_sigma = 0.1``). With ``sigma`` near 0.1, strength 1 weighs
  about as much as one extra score on ``mu``.
- **No divergence.** The reference fit is unconstrained and drifts to ``mu = 30..139`` when the
  scores pile up near 1 (the likelihood then prefers an exponential-like density, reached only as
  ``mu -> inf``). Here ``mu`` and ``sigma`` are box-bounded (``mu_bounds``, ``sigma_bounds``;
  defaults ``(-1, 2)`` and ``(1e-3, 2)`` as in :class:`optscale.config.FitConfig`) and optimized
  on the scale ``(mu, log sigma)`` with L-BFGS-B. A fit that ends on a bound is still
  ``converged`` (its projected gradient is zero) and is flagged ``at_bound``.
- **Batched.** The truncated normal is an exponential family: the log-likelihood of a question
  depends on its scores only through ``(n, sum x, sum x^2)``. The fit reduces every question to
  these statistics and runs one L-BFGS-B over all questions' parameters with an analytic
  gradient (the objective is a sum of independent per-question terms), so thousands of questions
  cost about as much as a handful of scipy fits.

Degenerate input (tested):

- NaN in a used score (mask True or no mask) or a score outside [0, 1] -> :class:`FitError`
  naming the question and position. Pass ``mask=~np.isnan(scores)`` to skip NaNs.
- A question with 0 usable scores -> :class:`FitError` for MLE; under MAP its estimate is the
  prior mode (``n = 0``, ``degenerate = True``).
- One score, or all-identical scores: the MLE has ``sigma -> 0``; the fit returns ``sigma`` at its
  lower bound and ``mu`` at the score (clipped to ``mu_bounds``), ``degenerate = True``. The CDF
  is then a near-step at the score, so ``N*`` is 1 or ``max_N`` (unreachable), never NaN.

Other families (:data:`FITS`, same interface): ``beta``, ``logit-normal`` and ``kde`` (a Gaussian
kernel estimate renormalized to [0, 1]). Beta and logit-normal clip scores to
``[CLIP_EPS, 1 - CLIP_EPS]`` because their densities vanish or blow up at 0 and 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy import optimize, special, stats

from .registry import Registry

__all__ = [
    "FitError",
    "FitResult",
    "FitFamily",
    "FITS",
    "CLIP_EPS",
    "truncnorm_cdf",
    "truncnorm_ppf",
    "truncnorm_logpdf",
    "truncnorm_moments",
    "truncnorm_from_moments",
    "truncnorm_loglik_stats",
    "fit_truncnorm",
    "fit_family",
    "ks_statistic",
    "goodness_of_fit",
    "ppf_by_bisection",
    "load_reference_fits",
    "peek_study",
    "compare_families",
]

MU_BOUNDS = (-1.0, 2.0)
SIGMA_BOUNDS = (1e-3, 2.0)
CLIP_EPS = 1e-4
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


class FitError(ValueError):
    """Scores that cannot be fit (NaN, outside [0, 1], no usable score)."""


# ---------------------------------------------------------------------------------------------
# Truncated normal on [0, 1]: distribution functions
# ---------------------------------------------------------------------------------------------
def _ab(mu, sigma):
    mu = np.asarray(mu, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    if np.isnan(mu).any() or np.isnan(sigma).any() or (sigma <= 0).any() or np.isinf(sigma).any():
        raise FitError("truncnorm: mu must be a number and sigma a finite positive number")
    return (0.0 - mu) / sigma, (1.0 - mu) / sigma, mu, sigma


def truncnorm_cdf(x, mu, sigma):
    """CDF of the normal(mu, sigma) truncated to [0, 1], at ``x``. All arguments broadcast;
    0 below 0 and 1 above 1. Computed as ``exp(log mass(a, z) - log mass(a, b))`` with
    ``scipy.special.log_ndtr`` (stable far in the tails, e.g. the reference's mu = 139; ~10x
    faster than ``scipy.stats.truncnorm.cdf``, equal to it to ~1e-15 in the tests)."""
    a, b, mu, sigma = _ab(mu, sigma)
    x = np.asarray(x, dtype=float)
    if np.isnan(x).any():
        raise FitError("truncnorm_cdf: x contains NaN")
    z = (np.clip(x, 0.0, 1.0) - mu) / sigma
    a, z, b = np.broadcast_arrays(a, z, b)
    inside = z > a
    with np.errstate(divide="ignore", invalid="ignore"):
        F = np.exp(_log_mass(a, np.where(inside, z, b)) - _log_mass(a, b))
    return np.clip(np.where(inside, F, 0.0), 0.0, 1.0)


def truncnorm_ppf(q, mu, sigma):
    """Quantile function of the normal(mu, sigma) truncated to [0, 1]; ``q`` in [0, 1]; broadcasts.

    Inverse transform ``mu + sigma * ndtri(Phi(a) + q Z)`` (mirrored when both ends lie in the
    upper tail); entries where that loses precision (mass below 1e-200 or a result outside
    [0, 1]) fall back to ``scipy.stats.truncnorm.ppf``."""
    a, b, mu, sigma = _ab(mu, sigma)
    q = np.asarray(q, dtype=float)
    q, a, b, mu, sigma = np.broadcast_arrays(q, a, b, mu, sigma)
    upper = a > 0
    lo = special.ndtr(np.where(upper, -b, a))
    hi = special.ndtr(np.where(upper, -a, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(upper, -special.ndtri(hi - q * (hi - lo)), special.ndtri(lo + q * (hi - lo)))
        x = mu + sigma * z
    bad = ~np.isfinite(x) | (x < -1e-12) | (x > 1 + 1e-12) | (hi - lo < 1e-200)
    if bad.any():
        x = x.copy()
        x[bad] = stats.truncnorm.ppf(q[bad], a[bad], b[bad], loc=mu[bad], scale=sigma[bad])
    return np.clip(x, 0.0, 1.0)


def truncnorm_logpdf(x, mu, sigma):
    """Log density on [0, 1] (``-inf`` outside); broadcasts."""
    a, b, mu, sigma = _ab(mu, sigma)
    return stats.truncnorm.logpdf(np.asarray(x, dtype=float), a, b, loc=mu, scale=sigma)


def truncnorm_moments(mu, sigma):
    """``(mean, std)`` of the normal(mu, sigma) truncated to [0, 1]; broadcasts."""
    a, b, mu, sigma = _ab(mu, sigma)
    a, b, mu, sigma = np.broadcast_arrays(a, b, mu, sigma)
    ra, rb, _ = _mills(a, b)
    m1 = ra - rb  # E[z]
    var_z = 1.0 + a * ra - np.where(np.isinf(b), 0.0, b * rb) - m1**2
    var_z = np.where(np.isinf(a), 1.0 - np.where(np.isinf(b), 0.0, b * rb) - m1**2, var_z)
    mean = mu + sigma * m1
    std = sigma * np.sqrt(np.clip(var_z, 0.0, None))
    return mean, std


def _log_mass(a, b):
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails."""
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    upper = a > 0  # both in the upper tail: use the mirrored form Phi(-a) - Phi(-b)
    hi = np.where(upper, -a, b)
    lo = np.where(upper, -b, a)
    lhi, llo = special.log_ndtr(hi), special.log_ndtr(lo)
    return lhi + np.log(-np.expm1(llo - lhi))


def _mills(a, b):
    """``(phi(a)/Z, phi(b)/Z, log Z)`` with ``Z = Phi(b) - Phi(a)``, computed in log space."""
    logz = _log_mass(a, b)
    ra = np.exp(-0.5 * a**2 - _LOG_SQRT_2PI - logz)
    rb = np.exp(-0.5 * b**2 - _LOG_SQRT_2PI - logz)
    return ra, rb, logz


def truncnorm_loglik_stats(mu, sigma, n, mean, ss):
    """Truncated-normal log-likelihood from sufficient statistics: ``n`` scores with sample
    ``mean`` and ``ss = sum (x - mean)^2`` (centred, for float precision). All broadcast, e.g.
    (Q,). Equals ``truncnorm_logpdf(x, mu, sigma).sum()``."""
    nll, _, _ = _tn_nll_grad(np.asarray(mu, float), np.log(np.asarray(sigma, float)),
                             np.asarray(n, float), np.asarray(mean, float), np.asarray(ss, float))
    return -nll


def _tn_nll_grad(mu, log_sigma, n, mean, ss):
    """Negative log-likelihood per question and its gradient in ``(mu, log sigma)``."""
    sigma = np.exp(log_sigma)
    a, b = -mu / sigma, (1.0 - mu) / sigma
    ra, rb, logz = _mills(a, b)
    quad = ss + n * (mean - mu) ** 2  # sum (x - mu)^2
    nll = quad / (2.0 * sigma**2) + n * (log_sigma + _LOG_SQRT_2PI + logz)
    g_mu = -n * (mean - mu) / sigma**2 + n * (ra - rb) / sigma
    g_ls = -quad / sigma**2 + n + n * (a * ra - b * rb)
    return nll, g_mu, g_ls


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """Fitted parameters of Q questions (arrays of shape (Q,); shape () for a single question).

    ``params`` maps parameter names to arrays (``mu``/``sigma`` for truncnorm, also available as
    attributes), ``loglik`` is the data log-likelihood at the estimate (prior excluded; for MAP
    ``logpost`` adds the log-prior), ``converged`` is per question (optimizer finished and the
    projected gradient of that question is ~0), ``n`` the number of scores used,
    ``degenerate`` marks questions with < 2 distinct scores (see the module docstring) and
    ``at_bound`` those whose estimate sits on a parameter bound."""

    family: str
    params: dict[str, np.ndarray]
    loglik: np.ndarray
    converged: np.ndarray
    n: np.ndarray
    n_params: int
    degenerate: np.ndarray
    at_bound: np.ndarray
    logpost: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> np.ndarray:
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} of family {self.__dict__.get('family')!r} has no {name!r}")

    @property
    def aic(self) -> np.ndarray:
        """``2 p - 2 loglik`` per question (NaN for the nonparametric ``kde``)."""
        return 2.0 * self.n_params - 2.0 * self.loglik

    def _fam(self) -> "FitFamily":
        return FITS.get(self.family)()

    def cdf(self, x):
        """CDF at ``x``; ``x`` broadcasts against the parameters (use ``x[..., None]`` tricks or
        shape (Q, m) with parameters (Q,) via :meth:`cdf_rows`)."""
        return self._fam().cdf(x, **self.params)

    def ppf(self, q):
        return self._fam().ppf(q, **self.params)

    def cdf_rows(self, x):
        """CDF for a (Q, m) array ``x``: row i uses question i's parameters."""
        return self._fam().cdf_rows(x, **self.params)

    def logpdf_rows(self, x):
        """Log density for a (Q, m) array ``x``: row i uses question i's parameters."""
        return self._fam().logpdf_rows(x, **self.params)


# ---------------------------------------------------------------------------------------------
# Input checking
# ---------------------------------------------------------------------------------------------
def _prepare_nonempty(scores, mask) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
    """:func:`_prepare` plus the per-question count of usable scores ``(q,)``; a question with
    none is an error (families without a prior cannot fit it)."""
    x, m, single = _prepare(scores, mask)
    n = m.sum(axis=1).astype(float)
    if (n == 0).any():
        raise FitError(f"question {int(np.argwhere(n == 0)[0][0])} has no usable score")
    return x, m, single, n


def _prepare(scores, mask) -> tuple[np.ndarray, np.ndarray, bool]:
    x = np.asarray(scores, dtype=float)
    single = x.ndim == 1
    if x.ndim not in (1, 2):
        raise FitError(f"scores must be (k,) or (questions, k), got shape {x.shape}")
    x2 = x[None, :] if single else x
    if mask is None:
        m = np.ones_like(x2, dtype=bool)
    else:
        m = np.asarray(mask, dtype=bool)
        m = m[None, :] if single else m
        if m.shape != x2.shape:
            raise FitError(f"mask shape {m.shape} does not match scores shape {x2.shape}")
    nan = np.isnan(x2) & m
    if nan.any():
        q, j = (int(v) for v in np.argwhere(nan)[0])
        raise FitError(f"scores[question {q}, position {j}] is NaN; pass mask=~np.isnan(scores) to skip NaNs")
    bad = m & ((x2 < 0) | (x2 > 1))
    if bad.any():
        q, j = (int(v) for v in np.argwhere(bad)[0])
        raise FitError(f"scores[question {q}, position {j}] = {x2[q, j]!r} is outside [0, 1]")
    return np.where(m, x2, 0.0), m, single


def _squeeze(single: bool, *arrs):
    return tuple(a[0] if single and a is not None and np.ndim(a) else a for a in arrs)


def _degenerate(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    big = np.where(m, x, -np.inf).max(axis=1)
    small = np.where(m, x, np.inf).min(axis=1)
    return ~(big > small)  # also True for n == 0


def _parse_prior(prior, q: int):
    if prior is None:
        return None
    if isinstance(prior, dict):
        vals = [prior["mu"], prior["sigma"], prior.get("tau_mu", 0.1), prior.get("tau_sigma", 0.1)]
    else:
        vals = list(prior) + [0.1, 0.1][len(prior) - 2:] if len(prior) in (2, 3, 4) else None
        if vals is None:
            raise FitError("prior must be (mu0, sigma0) or (mu0, sigma0, tau_mu, tau_sigma)")
        if len(prior) == 3:
            vals = list(prior) + [0.1]
    out = [np.broadcast_to(np.asarray(v, dtype=float), (q,)).copy() for v in vals[:4]]
    for name, v in zip(("mu0", "sigma0", "tau_mu", "tau_sigma"), out):
        if not np.isfinite(v).all():
            raise FitError(f"prior {name} has NaN/inf at question {int(np.argwhere(~np.isfinite(v))[0][0])}")
    if (out[2] <= 0).any() or (out[3] <= 0).any():
        raise FitError("prior scales tau_mu, tau_sigma must be > 0")
    return out


# ---------------------------------------------------------------------------------------------
# Truncated normal: batched MLE / MAP
# ---------------------------------------------------------------------------------------------
def _newton_box(fg: Callable, theta: np.ndarray, lo: np.ndarray, hi: np.ndarray, fd_step: Callable,
                maxiter: int = 200, tol: float = 1e-10):
    """Batched projected Newton for Q independent 2-parameter problems with box bounds.

    ``fg(theta, idx) -> (f (m,), g (m, 2))`` evaluates the questions ``idx`` at ``theta`` (m, 2);
    ``fd_step(theta) -> (m, 2)`` gives the finite-difference steps for the Hessian (central
    differences of the analytic gradient). Variables on a bound whose gradient pushes outward are
    held fixed; the Hessian is shifted to be positive definite (Levenberg) and a per-question
    Armijo backtracking line search keeps every step a descent step. Returns
    ``theta, f, g, converged (Q,), iterations``."""
    theta = np.clip(theta, lo, hi)
    q = theta.shape[0]
    f, g = fg(theta, np.arange(q))
    conv = np.zeros(q, dtype=bool)
    stalled = np.zeros(q, dtype=bool)
    eye = np.eye(2)
    it = 0
    for it in range(1, maxiter + 1):
        fixed = ((theta <= lo) & (g > 0)) | ((theta >= hi) & (g < 0))
        pg = np.where(fixed, 0.0, g)
        conv |= np.abs(pg).max(axis=1) <= tol * np.maximum(1.0, np.abs(f))
        act = np.flatnonzero(~conv & ~stalled)
        if act.size == 0:
            break
        th, ga, fa, fx, pga = theta[act], g[act], f[act], fixed[act], pg[act]
        h = fd_step(th)
        H = np.empty((act.size, 2, 2))
        for j in range(2):
            e = np.zeros_like(th)
            e[:, j] = h[:, j]
            H[:, :, j] = (fg(th + e, act)[1] - fg(th - e, act)[1]) / (2.0 * h[:, j : j + 1])
        H = 0.5 * (H + H.transpose(0, 2, 1))
        H = np.where(fx[:, :, None] | fx[:, None, :], 0.0, H) + np.where(fx, 1.0, 0.0)[:, :, None] * eye
        tr, det = H[:, 0, 0] + H[:, 1, 1], H[:, 0, 0] * H[:, 1, 1] - H[:, 0, 1] ** 2
        lam_min = 0.5 * tr - np.sqrt(np.maximum(0.25 * tr**2 - det, 0.0))
        scale = np.abs(H).max(axis=(1, 2)) + 1e-300
        shift = np.where(lam_min < 1e-8 * scale, 1e-6 * scale - lam_min, 0.0)
        p = -np.linalg.solve(H + shift[:, None, None] * eye, pga[:, :, None])[:, :, 0]
        p = np.where(fx, 0.0, p)
        # Newton decrement below float resolution of f: nothing left to gain.
        tiny = -(p * pga).sum(axis=1) <= 1e-14 * np.maximum(1.0, np.abs(fa))
        conv[act[tiny]] = True
        t = np.ones(act.size)
        done = np.zeros(act.size, dtype=bool)
        for _ in range(40):
            idx = np.flatnonzero(~done)
            cand = np.clip(th[idx] + t[idx, None] * p[idx], lo, hi)
            fc, gc = fg(cand, act[idx])
            slope = (pga[idx] * (cand - th[idx])).sum(axis=1)
            ok = np.isfinite(fc) & (fc <= fa[idx] + 1e-4 * slope)
            good = idx[ok]
            theta[act[good]], f[act[good]], g[act[good]] = cand[ok], fc[ok], gc[ok]
            done[good] = True
            t[idx[~ok]] *= 0.5
            if done.all():
                break
        stalled[act[~done]] = True  # no descent left at float precision: judged by its gradient below
    fixed = ((theta <= lo) & (g > 0)) | ((theta >= hi) & (g < 0))
    pg = np.where(fixed, 0.0, g)
    return theta, f, g, pg, it


def _fit_truncnorm_stats(n, mean, ss, prior=None, prior_strength=1.0, mu_bounds=MU_BOUNDS,
                         sigma_bounds=SIGMA_BOUNDS, mu_init=None, sigma_init=None):
    """Batched MLE / MAP on sufficient statistics, all (Q,). Returns mu, sigma, nll, logprior,
    converged, at_bound, info."""
    q = n.shape[0]
    lo = np.array([mu_bounds[0], np.log(sigma_bounds[0])])
    hi = np.array([mu_bounds[1], np.log(sigma_bounds[1])])
    var = np.where(n > 0, ss / np.maximum(n, 1), 0.01)
    mu0 = np.where(n > 0, mean, 0.5) if mu_init is None else np.asarray(mu_init, float)
    sd0 = np.sqrt(np.clip(var, 0, None)) if sigma_init is None else np.asarray(sigma_init, float)
    ls0 = np.log(np.maximum(sd0, sigma_bounds[0]))
    lam = float(prior_strength)
    if prior is not None:
        pm, ps, tm, ts = prior
        mu0 = np.where(n == 0, pm, mu0)
        ls0 = np.where(n == 0, np.log(np.clip(ps, *sigma_bounds)), ls0)

    def fg(theta, idx):
        mu, ls = theta[:, 0], theta[:, 1]
        nll, gm, gl = _tn_nll_grad(mu, ls, n[idx], mean[idx], ss[idx])
        if prior is not None:
            sig = np.exp(ls)
            nll = nll + lam * ((mu - pm[idx]) ** 2 / (2 * tm[idx] ** 2) + (sig - ps[idx]) ** 2 / (2 * ts[idx] ** 2))
            gm = gm + lam * (mu - pm[idx]) / tm[idx] ** 2
            gl = gl + lam * (sig - ps[idx]) / ts[idx] ** 2 * sig
        return nll, np.stack([gm, gl], axis=1)

    def fd_step(theta):
        return np.stack([1e-4 * np.exp(theta[:, 1]), np.full(theta.shape[0], 1e-4)], axis=1)

    theta, f, g, pg, iters = _newton_box(fg, np.stack([mu0, ls0], axis=1), lo, hi, fd_step)
    mu, ls = theta[:, 0], theta[:, 1]
    sig = np.exp(ls)
    nll = _tn_nll_grad(mu, ls, n, mean, ss)[0]
    logprior = nll - f  # = -(penalty); zero for MLE
    ok = np.isfinite(f) & (np.abs(pg).max(axis=1) <= 1e-6 * np.maximum(1.0, n))
    at_bound = ((theta <= lo) | (theta >= hi)).any(axis=1)
    return mu, sig, nll, logprior, ok, at_bound, {"iterations": iters}


def fit_truncnorm(scores, prior=None, prior_strength: float = 1.0, mask=None,
                  mu_bounds: tuple[float, float] = MU_BOUNDS,
                  sigma_bounds: tuple[float, float] = SIGMA_BOUNDS) -> FitResult:
    """Fit a truncated normal on [0, 1] to each question's scores (MLE, or MAP with ``prior``).

    ``scores``: (Q, k) or (k,) in [0, 1]; ``mask``: same shape, True = use. ``prior``: None (MLE)
    or ``(mu0, sigma0[, tau_mu[, tau_sigma]])`` with scalars or (Q,) arrays (MAP, see module
    docstring); ``prior_strength`` multiplies the prior's precision. Returns a :class:`FitResult`
    with ``mu``, ``sigma``, ``loglik``, ``converged`` etc. of shape (Q,) (shape () for (k,))."""
    x, m, single = _prepare(scores, mask)
    q = x.shape[0]
    n = m.sum(axis=1).astype(float)
    pr = _parse_prior(prior, q)
    if pr is None and (n == 0).any():
        raise FitError(f"question {int(np.argwhere(n == 0)[0][0])} has no usable score (MLE needs >= 1; "
                       "pass a prior for a MAP fit)")
    if prior_strength < 0 or not np.isfinite(prior_strength):
        raise FitError(f"prior_strength must be finite and >= 0, got {prior_strength}")
    mean = (x * m).sum(axis=1) / np.maximum(n, 1)
    ss = (((x - mean[:, None]) * m) ** 2).sum(axis=1)
    mu, sig, nll, logprior, ok, at_bound, info = _fit_truncnorm_stats(
        n, mean, ss, pr, prior_strength, tuple(mu_bounds), tuple(sigma_bounds))
    deg = _degenerate(x, m)
    out = _squeeze(single, mu, sig, -nll, ok, n, deg, at_bound, -nll + logprior)
    return FitResult("truncnorm", {"mu": out[0], "sigma": out[1]}, out[2], out[3], out[4], 2, out[5], out[6],
                     logpost=out[7] if pr is not None else None,
                     info={"optimizer": "batched projected Newton", "iterations": info["iterations"],
                           "mu_bounds": tuple(mu_bounds), "sigma_bounds": tuple(sigma_bounds),
                           "prior_strength": float(prior_strength) if pr is not None else 0.0})


def truncnorm_from_moments(mean, std, mu_bounds=MU_BOUNDS, sigma_bounds=SIGMA_BOUNDS):
    """``(mu, sigma)`` of the truncated normal on [0, 1] with the given ``mean`` and ``std``.

    Moment matching in an exponential family is maximum likelihood given those moments, so this
    runs the batched fit on the statistics ``(n=1, mean, ss=std^2)``. ``std`` is the population
    (ddof=0) standard deviation. Broadcasts ``mean``/``std`` (any shape, values must satisfy
    ``0 <= mean <= 1`` and ``std >= 0``); moments no truncated normal within the bounds can
    produce (e.g. std above that of a uniform, or ~0) give the bounded best match."""
    mean, std = np.broadcast_arrays(np.asarray(mean, float), np.asarray(std, float))
    if np.isnan(mean).any() or np.isnan(std).any():
        raise FitError("truncnorm_from_moments: mean/std contain NaN")
    if ((mean < 0) | (mean > 1)).any() or (std < 0).any():
        raise FitError("truncnorm_from_moments: need 0 <= mean <= 1 and std >= 0")
    shape = mean.shape
    mf, sf = mean.ravel(), std.ravel()
    n = np.ones_like(mf)
    mu, sig, *_ = _fit_truncnorm_stats(n, mf, sf**2, None, 1.0, tuple(mu_bounds), tuple(sigma_bounds),
                                       mu_init=mf, sigma_init=np.maximum(sf, sigma_bounds[0]))
    return mu.reshape(shape), sig.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Goodness of fit
# ---------------------------------------------------------------------------------------------
def ks_statistic(scores, cdf_rows: Callable[[np.ndarray], np.ndarray], mask=None) -> np.ndarray:
    """Kolmogorov-Smirnov statistic per question: ``sup |F_n - F|``.

    ``scores``: (Q, k); ``cdf_rows``: maps a (Q, k) array to the fitted CDF row by row (e.g.
    ``result.cdf_rows``). Masked scores are ignored. Returns (Q,) (NaN where n = 0)."""
    x, m, single = _prepare(scores, mask)
    n = m.sum(axis=1)
    xs = np.sort(np.where(m, x, np.inf), axis=1)  # used scores first
    valid = np.isfinite(xs)
    F = np.asarray(cdf_rows(np.where(valid, xs, 0.5)), dtype=float)
    if F.ndim == 1:
        F = F[None, :]
    i = np.arange(1, x.shape[1] + 1)[None, :]
    nn = np.maximum(n, 1)[:, None]
    d = np.maximum(i / nn - F, F - (i - 1) / nn)
    D = np.where(valid, d, -np.inf).max(axis=1)
    D = np.where(n > 0, D, np.nan)
    return D[0] if single else D


def goodness_of_fit(result: FitResult, scores, mask=None) -> dict[str, np.ndarray]:
    """Per-question ``{"ks", "loglik", "aic", "n"}`` of a fit on ``scores`` (Q, k)."""
    ks = ks_statistic(scores, result.cdf_rows if np.ndim(result.loglik) else
                      (lambda z: result.cdf(z)), mask)
    return {"ks": ks, "loglik": result.loglik, "aic": result.aic, "n": result.n}


# ---------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------
class FitFamily:
    """Interface of a score-distribution family: batched ``fit`` plus vectorized distribution
    functions taking parameters as keyword arrays that broadcast against ``x``/``q``."""

    name: str = ""
    param_names: tuple[str, ...] = ()
    n_params: float = 0

    def fit(self, scores, mask=None, **kw) -> FitResult:  # pragma: no cover - interface
        raise NotImplementedError

    def cdf(self, x, **params):  # pragma: no cover - interface
        raise NotImplementedError

    def ppf(self, q, **params):  # pragma: no cover - interface
        raise NotImplementedError

    def logpdf(self, x, **params):  # pragma: no cover - interface
        raise NotImplementedError

    def cdf_rows(self, x, **params):
        """CDF of a (Q, m) array ``x``, row i under question i's parameters (each (Q,))."""
        return self.cdf(x, **{k: np.asarray(v)[..., None] for k, v in params.items()})

    def logpdf_rows(self, x, **params):
        """Log density of a (Q, m) array ``x``, row i under question i's parameters."""
        return self.logpdf(x, **{k: np.asarray(v)[..., None] for k, v in params.items()})


FITS: Registry[FitFamily] = Registry("fit family")


@FITS.register("truncnorm")
class TruncNormFamily(FitFamily):
    name, param_names, n_params = "truncnorm", ("mu", "sigma"), 2

    def fit(self, scores, mask=None, **kw):
        return fit_truncnorm(scores, mask=mask, **kw)

    def cdf(self, x, mu, sigma):
        return truncnorm_cdf(x, mu, sigma)

    def ppf(self, q, mu, sigma):
        return truncnorm_ppf(q, mu, sigma)

    def logpdf(self, x, mu, sigma):
        return truncnorm_logpdf(x, mu, sigma)


def _clip01(x):
    return np.clip(x, CLIP_EPS, 1.0 - CLIP_EPS)


@FITS.register("beta")
class BetaFamily(FitFamily):
    """Beta(a, b), batched MLE (projected Newton) on ``(log a, log b)`` within ``[1e-2, 1e3]`` (scores clipped to
    ``[CLIP_EPS, 1 - CLIP_EPS]``; sufficient statistics ``sum log x``, ``sum log(1 - x)``)."""

    name, param_names, n_params = "beta", ("a", "b"), 2
    bounds = (1e-2, 1e3)

    def fit(self, scores, mask=None, **kw):
        x, m, single, n = _prepare_nonempty(scores, mask)
        xc = _clip01(x)
        sl = (np.log(xc) * m).sum(1)
        sl1 = (np.log1p(-xc) * m).sum(1)
        q = x.shape[0]
        mean = np.clip(s := (xc * m).sum(1) / n, 0.01, 0.99)
        var = np.clip((xc**2 * m).sum(1) / n - s**2, 1e-4, None)
        common = np.clip(mean * (1 - mean) / var - 1, 0.1, 100)  # method of moments start
        th0 = np.log(np.clip(np.concatenate([mean * common, (1 - mean) * common]), *self.bounds))

        def fg(th, idx):
            a, b = np.exp(th[:, 0]), np.exp(th[:, 1])
            nll = -((a - 1) * sl[idx] + (b - 1) * sl1[idx] - n[idx] * special.betaln(a, b))
            dab = special.digamma(a + b)
            ga = -(sl[idx] - n[idx] * (special.digamma(a) - dab)) * a
            gb = -(sl1[idx] - n[idx] * (special.digamma(b) - dab)) * b
            return nll, np.stack([ga, gb], axis=1)

        lo, hi = np.log(np.array([self.bounds[0]] * 2)), np.log(np.array([self.bounds[1]] * 2))
        th, f, g, pg, iters = _newton_box(fg, th0.reshape(2, q).T.copy(), lo, hi,
                                          lambda t: np.full_like(t, 1e-5))
        a, b = np.exp(th[:, 0]), np.exp(th[:, 1])
        ll = -f
        at_b = ((th <= lo) | (th >= hi)).any(axis=1)
        ok = np.isfinite(f) & (np.abs(pg).max(axis=1) <= 1e-6 * np.maximum(1.0, n))
        out = _squeeze(single, a, b, ll, ok, n, _degenerate(x, m), at_b)
        return FitResult("beta", {"a": out[0], "b": out[1]}, out[2], out[3], out[4], 2, out[5], out[6],
                         info={"optimizer": "batched projected Newton", "iterations": iters})

    def cdf(self, x, a, b):
        return stats.beta.cdf(x, a, b)

    def ppf(self, q, a, b):
        return stats.beta.ppf(q, a, b)

    def logpdf(self, x, a, b):
        return stats.beta.logpdf(_clip01(np.asarray(x, float)), a, b)


@FITS.register("logit-normal")
class LogitNormalFamily(FitFamily):
    """logit(x) ~ normal(m, s); closed-form MLE (mean and ddof=0 std of ``logit(clip(x))``),
    ``s`` floored at 1e-3. Log-likelihood includes the Jacobian ``-log(x (1 - x))``."""

    name, param_names, n_params = "logit-normal", ("m", "s"), 2

    def fit(self, scores, mask=None, **kw):
        x, m, single, n = _prepare_nonempty(scores, mask)
        xc = _clip01(x)
        y = special.logit(xc)
        mm = (y * m).sum(1) / n
        s = np.sqrt(np.clip((y**2 * m).sum(1) / n - mm**2, 0, None))
        deg = _degenerate(x, m)
        s = np.maximum(s, 1e-3)
        ll = (np.where(m, self.logpdf(xc, mm[:, None], s[:, None]), 0.0)).sum(1)
        ok = np.ones_like(n, dtype=bool)
        out = _squeeze(single, mm, s, ll, ok, n, deg, s <= 1e-3)
        return FitResult("logit-normal", {"m": out[0], "s": out[1]}, out[2], out[3], out[4], 2, out[5], out[6])

    def cdf(self, x, m, s):
        x = np.asarray(x, float)
        with np.errstate(divide="ignore"):
            return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, special.ndtr((special.logit(np.clip(x, 0, 1)) - m) / s)))

    def ppf(self, q, m, s):
        return special.expit(m + s * special.ndtri(np.asarray(q, float)))

    def logpdf(self, x, m, s):
        xc = _clip01(np.asarray(x, float))
        y = special.logit(xc)
        return stats.norm.logpdf(y, m, s) - np.log(xc) - np.log1p(-xc)


@FITS.register("kde")
class KDEFamily(FitFamily):
    """Gaussian kernel estimate restricted to [0, 1] and renormalized; bandwidth by Silverman's
    rule ``0.9 min(sd, IQR/1.34) n^(-1/5)`` floored at 0.01. Parameters are the (Q, k) ``points``,
    ``weights`` (mask) and (Q,) ``h``; ``n_params`` is NaN (no AIC), its in-sample log-likelihood
    and KS are optimistic: compare it to the others on held-out scores."""

    name, param_names, n_params = "kde", ("points", "weights", "h"), float("nan")

    def fit(self, scores, mask=None, **kw):
        x, m, single, n = _prepare_nonempty(scores, mask)
        xm = np.where(m, x, np.nan)
        sd = np.nanstd(xm, axis=1)
        iqr = np.nanpercentile(xm, 75, axis=1) - np.nanpercentile(xm, 25, axis=1)
        spread = np.where(iqr > 0, np.minimum(sd, iqr / 1.34), sd)
        h = np.maximum(0.9 * spread * n ** -0.2, 0.01)
        w = m.astype(float)
        ll = np.where(m, self.logpdf(x, x[:, None, :], w[:, None, :], h[:, None]), 0.0).sum(1)
        ok = np.ones_like(n, dtype=bool)
        out = _squeeze(single, x, w, h, ll, ok, n, _degenerate(x, m), h <= 0.01)
        return FitResult("kde", {"points": out[0], "weights": out[1], "h": out[2]}, out[3], out[4], out[5],
                         float("nan"), out[6], out[7])

    @staticmethod
    def _mix(fn, x, points, weights, h):
        # Batch shape B: points/weights (*B, k), h (*B); x broadcasts against B. Returns B-shaped.
        p, w = np.asarray(points, float), np.asarray(weights, float)
        hb = np.asarray(h, float)[..., None]
        return (w * fn((np.asarray(x, float)[..., None] - p) / hb)).sum(-1) / w.sum(-1)

    def cdf(self, x, points, weights, h):
        z0 = self._mix(special.ndtr, 0.0, points, weights, h)
        z1 = self._mix(special.ndtr, 1.0, points, weights, h)
        g = self._mix(special.ndtr, np.clip(np.asarray(x, float), 0.0, 1.0), points, weights, h)
        return np.clip((g - z0) / (z1 - z0), 0.0, 1.0)

    def cdf_rows(self, x, points, weights, h):
        return self.cdf(x, np.asarray(points)[..., None, :], np.asarray(weights)[..., None, :],
                        np.asarray(h)[..., None])

    def logpdf_rows(self, x, points, weights, h):
        return self.logpdf(x, np.asarray(points)[..., None, :], np.asarray(weights)[..., None, :],
                           np.asarray(h)[..., None])

    def ppf(self, q, points, weights, h):
        q = np.asarray(q, float)
        shape = np.broadcast_shapes(q.shape, np.shape(h))
        lo, hi = np.zeros(shape), np.ones(shape)
        for _ in range(50):  # bisection on the monotone CDF, vectorized (precision 1e-15)
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid, points, weights, h) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def logpdf(self, x, points, weights, h):
        x = np.asarray(x, float)
        hb = np.asarray(h, float)
        dens = self._mix(lambda z: stats.norm.pdf(z), x, points, weights, h) / hb
        z0 = self._mix(special.ndtr, 0.0, points, weights, h)
        z1 = self._mix(special.ndtr, 1.0, points, weights, h)
        with np.errstate(divide="ignore"):
            return np.where((x >= 0) & (x <= 1), np.log(dens) - np.log(z1 - z0), -np.inf)


def fit_family(name: str, scores, mask=None, **kw) -> FitResult:
    """Fit the registered family ``name`` (see :data:`FITS`) to ``scores`` (Q, k) or (k,)."""
    return FITS.get(name)().fit(scores, mask=mask, **kw)


# ---------------------------------------------------------------------------------------------
# Studies used by notebooks 01 / 02 (pure functions of arrays; tested)
# ---------------------------------------------------------------------------------------------
def ppf_by_bisection(cdf: Callable[[np.ndarray], np.ndarray], q, iters: int = 50) -> np.ndarray:
    """Quantiles on [0, 1] of any vectorized, monotone ``cdf`` (e.g. a mixture) by bisection;
    ``q`` of the CDF's batch shape. Precision ``2**-iters``."""
    q = np.asarray(q, dtype=float)
    lo, hi = np.zeros(q.shape), np.ones(q.shape)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def load_reference_fits(data_dir=None, peek: int = 3):
    """The authors' printed per-question fits, all datasets: one DataFrame with a ``dataset``
    column plus ``predictor_*``, ``mle_*``, ``map_*`` (from the first ``peek`` scores) and
    ``full_mle_*`` (all 64 scores; unclipped, mu up to 139)."""
    import pandas as pd

    from .data import DataError, resolve_data_dir

    d = resolve_data_dir(data_dir) / "reference" / "fits"
    files = sorted(d.glob(f"*_peek{peek}.csv"))
    if not files:
        raise DataError(f"{d}: no *_peek{peek}.csv reference fits")
    frames = []
    for f in files:
        df = pd.read_csv(f)
        need = {"full_mle_mu", "full_mle_sigma", "mle_mu", "mle_sigma", "map_mu", "map_sigma"}
        if not need <= set(df.columns):
            raise DataError(f"{f}: missing column(s) {sorted(need - set(df.columns))}")
        frames.append(df.assign(dataset=f.name.split("_peek")[0], peek=peek))
    return pd.concat(frames, ignore_index=True)


def peek_study(scores, peeks: Sequence[int], prior, prior_strength: float, s_star, delta: float,
               max_N: int, mu_bounds=MU_BOUNDS, sigma_bounds=SIGMA_BOUNDS, mask=None):
    """MLE and MAP from the first k scores vs the fit on all scores, per question.

    ``scores``: (Q, n); ``prior``: as :func:`fit_truncnorm` (e.g. a population fit); ``s_star``:
    (Q,) or scalar target. Returns a long DataFrame (question, k, method, mu, sigma, N, and the
    absolute errors err_mu, err_sigma, err_N against the all-score MLE)."""
    import pandas as pd

    from .bounds import n_star

    x = np.asarray(scores, dtype=float)
    m = np.ones_like(x, dtype=bool) if mask is None else np.asarray(mask, bool)
    kw = dict(mu_bounds=mu_bounds, sigma_bounds=sigma_bounds)
    full = fit_truncnorm(x, mask=m, **kw)
    N_full, _ = n_star(full.mu, full.sigma, s_star, delta, max_N=max_N)
    rows = []
    for k in peeks:
        if k > x.shape[1]:
            continue
        mk = m.copy()
        mk[:, k:] = False
        keep = mk.any(axis=1)
        for method, pr in (("MLE", None), ("MAP", prior)):
            r = fit_truncnorm(x[keep], mask=mk[keep], prior=None if pr is None else
                              tuple(np.asarray(np.broadcast_to(v, (x.shape[0],)))[keep] for v in pr),
                              prior_strength=prior_strength, **kw)
            ss = np.broadcast_to(np.asarray(s_star, float), (x.shape[0],))[keep]
            N, _ = n_star(r.mu, r.sigma, ss, delta, max_N=max_N)
            rows.append(pd.DataFrame({
                "question": np.flatnonzero(keep), "k": k, "method": method, "mu": r.mu, "sigma": r.sigma,
                "N": N, "err_mu": np.abs(r.mu - full.mu[keep]), "err_sigma": np.abs(r.sigma - full.sigma[keep]),
                "err_N": np.abs(N - N_full[keep])}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def compare_families(scores, families: Sequence[str], mask=None, holdout: float = 0.5):
    """Goodness of fit of several families on the same questions.

    ``scores``: (Q, n). In-sample: every family is fit to all (masked) scores -> KS, AIC.
    Held-out: fit to the first ``1 - holdout`` share of each row, mean log density of the rest
    (the fair comparison for ``kde``). Returns a long DataFrame (question, family, ks, aic,
    loglik, heldout_loglik)."""
    import pandas as pd

    x = np.asarray(scores, dtype=float)
    m = ~np.isnan(x) if mask is None else np.asarray(mask, bool) & ~np.isnan(x)
    ok = m.sum(axis=1) >= 2
    x, m = np.where(m, x, 0.0)[ok], m[ok]
    n_fit = max(1, int(round(x.shape[1] * (1 - holdout))))
    m_fit, m_test = m.copy(), m.copy()
    m_fit[:, n_fit:], m_test[:, :n_fit] = False, False
    both = m_fit.any(1) & m_test.any(1)
    rows = []
    for fam in families:
        r = fit_family(fam, x, mask=m)
        g = goodness_of_fit(r, x, mask=m)
        ho = np.full(x.shape[0], np.nan)
        if both.any():
            rh = fit_family(fam, x[both], mask=m_fit[both])
            lp = rh.logpdf_rows(x[both])
            ho[both] = np.where(m_test[both], lp, 0.0).sum(1) / m_test[both].sum(1)
        rows.append(pd.DataFrame({"question": np.flatnonzero(ok), "family": fam, "ks": g["ks"], "aic": g["aic"],
                                  "loglik": r.loglik, "heldout_loglik": ho}))
    return pd.concat(rows, ignore_index=True)
