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
  on the scale ``(mu, log sigma)``. A fit that ends on a bound is still
  ``converged`` (its projected gradient is zero) and is flagged ``at_bound``.
- **Batched and fast.** The truncated normal is an exponential family: the log-likelihood of a
  question depends on its scores only through ``(n, sum x, sum x^2)``. The fit reduces every
  question to these statistics and runs a batched projected Newton with the analytic Hessian
  over all questions at once (:func:`_newton_truncnorm`; steps in ``(mu, log sigma)`` or, along
  the near-exponential valleys of scores piled at 0 or 1, in the natural parameters). The MLE
  depends on ``(mean, std)`` only, so it starts from a bicubic interpolation of a table of
  bounded MLEs over them (:func:`_mle_cells`; built once per box on first use, ~0.5 s CPU under
  load, 10 MB), from which one Newton step reaches the tolerance for most questions: 2.0
  objective evaluations per fit on the benchmark's simulated rows, 1.85 on real scores (the
  bilinear start before: 2.7). ``info["evaluations"]`` of a result counts them.
- **Prefixes.** :func:`fit_truncnorm_prefixes` fits every prefix 1..N of each row (what
  ``optscale-seq`` asks for; :func:`optscale.evaluation.replay.warm_fit_cache` uses it) from
  running sufficient statistics, O(R N) instead of the O(R N^2) of one masked row per prefix.
  ``benchmarks/bench_fits.py`` (80,000 prefix fits, simulated scores; a 2-core AMD EPYC under
  load, 2026-12-02, three runs): MLE 1.2-1.5 x 10^6 fits/s on the prefix path, 1.1-1.7x the
  previous commit's prefix path in the same run (0.9-1.1 x 10^6), 1.4-1.6x the per-row batched
  :func:`fit_truncnorm` (8.9-9.5 x 10^5); MAP 2.4-2.9 x 10^5, 1.4-1.5x the previous commit's;
  log-likelihood (MAP: objective) within 1e-9 of a per-question scipy L-BFGS-B on 200 checked
  rows, never worse by > 1e-6. Most of the gain: the start above, and the Newton loop's
  gathers by index (not boolean masks) and column-wise updates of the (Q, 2) parameters.
- **MAP has two starts.** With a wide prior and a tight cluster of scores the MAP objective has
  two optima, a narrow one at the data and a wide one near the prior (issue 29: a fit from the
  data moments alone settled on the worse one in 69 of 2,000 MATH-500 fits at k = 3; 47 of 2,000
  on the committed 1.5B pool's ``combined`` score, cross-fitted population prior). MAP runs
  from the data moments and from a start on the prior's side (:func:`_fit_truncnorm_stats`) and
  keeps the lower objective per question.

Degenerate input (tested):

- NaN in a used score (mask True or no mask) or a score outside [0, 1] -> :class:`FitError`
  naming the question and position. Pass ``mask=~np.isnan(scores)`` to skip NaNs.
- A question with 0 usable scores -> :class:`FitError` for MLE; under MAP its estimate is the
  prior mode (``n = 0``, ``degenerate = True``).
- One score, or all-identical scores: the MLE has ``sigma -> 0``; the fit returns ``sigma`` at its
  lower bound and ``mu`` at the score (clipped to ``mu_bounds``), ``degenerate = True``. The CDF
  is then a near-step at the score, so ``N*`` is 1 or ``max_N`` (unreachable), never NaN.

Other families (:data:`FITS`, same interface, implemented in :mod:`optscale.theory.families`):
``beta``, ``logit-normal`` and ``kde`` (a Gaussian kernel estimate renormalized to [0, 1]). Beta and logit-normal clip scores to
``[CLIP_EPS, 1 - CLIP_EPS]`` because their densities vanish or blow up at 0 and 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..registry import Registry
from .truncnorm import FitError, _tn_nll_derivs

__all__ = [
    "FitResult",
    "FitFamily",
    "FITS",
    "CLIP_EPS",
    "truncnorm_from_moments",
    "fit_truncnorm",
    "fit_truncnorm_prefixes",
    "ks_statistic",
    "goodness_of_fit",
]

MU_BOUNDS = (-1.0, 2.0)
SIGMA_BOUNDS = (1e-3, 2.0)
CLIP_EPS = 1e-4


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


def _eta_path(th, step, t):
    """Points ``t`` along the straight line from ``th = (mu, log sigma)`` in the natural parameters
    ``(mu / sigma^2, -1 / (2 sigma^2))`` whose tangent at ``t = 0`` is ``step`` (in ``th``)."""
    mu, ls = th[:, 0], th[:, 1]
    s0, s1 = step[:, 0], step[:, 1]
    den = 1.0 - 2.0 * t * s1
    return np.stack([(mu + t * (s0 - 2.0 * mu * s1)) / den, ls - 0.5 * np.log(den)], axis=1)


_TRUST = np.array([0.5, np.log(8.0)])  # the largest step in (mu, log sigma) of one eta step


def _eta_path_limit(th, step, lo, hi):
    """The largest ``t`` in [0, 1] for which :func:`_eta_path` stays in the box ``[lo, hi]``
    ((Q, 2) or (2,); exact: each bound is a line in the natural parameters)."""
    mu, sig2 = th[:, 0], np.exp(2.0 * th[:, 1])
    s0, s1 = step[:, 0], step[:, 1]
    t = np.ones_like(mu)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = np.broadcast_to(lo, th.shape), np.broadcast_to(hi, th.shape)
        ts = np.where(s1 > 0, (1.0 - sig2 * np.exp(-2.0 * hi[:, 1])) / (2.0 * s1),
                      np.where(s1 < 0, (1.0 - sig2 * np.exp(-2.0 * lo[:, 1])) / (2.0 * s1), np.inf))
        dh, dl = s0 + 2.0 * s1 * (hi[:, 0] - mu), s0 + 2.0 * s1 * (lo[:, 0] - mu)
        th_ = np.where(dh > 0, (hi[:, 0] - mu) / dh, np.inf)
        tl = np.where(dl < 0, (lo[:, 0] - mu) / dl, np.inf)
    return np.clip(np.minimum(np.minimum(t, ts), np.minimum(th_, tl)), 0.0, 1.0)


def _snap_to_box(theta, lo, hi):
    """``theta`` (m, 2) with the entries within 1e-12 of a bound of ``[lo, hi]`` set onto it (in
    place; the entries are already inside the box, e.g. clipped or cut at its edge)."""
    for k in range(2):  # column by column (numpy loops over an inner axis of 2 slowly)
        col = theta[:, k]
        near = col < lo[k] + 1e-12
        if near.any():
            np.copyto(col, lo[k], where=near)
        near = col > hi[k] - 1e-12
        if near.any():
            np.copyto(col, hi[k], where=near)
    return theta


def _newton_truncnorm(theta, n, mean, ss, prior, lam, lo, hi, maxiter: int = 100, gtol: float = 1e-8,
                      rival=None, rival_theta=None, rival_radius: float = 1e-4):
    """Batched projected Newton for the truncated-normal MLE / MAP of Q questions, ``theta =
    (mu, log sigma)`` (Q, 2) within the box ``[lo, hi]``, stepping in the natural parameters
    ``eta = (mu / sigma^2, -1 / (2 sigma^2))``: one evaluation per iteration and question, after
    the first only for the questions still moving.

    The negative log-likelihood is convex in ``eta`` (an exponential family) and the box is a
    convex polygon there, so Newton in ``eta`` has no curved valleys (those of ``(mu, log sigma)``
    run along near-exponential fits of scores piled at 0 or 1 and took hundreds of steps); near
    the data, where ``eta`` is nearly flat in one direction, the step in ``theta`` is the better
    one. Each question starts in ``theta`` and switches after a step that had to be cut back (MLE
    only; MAP steps in ``theta``). The
    step comes from the analytic derivatives in ``theta``
    (:func:`~optscale.theory.truncnorm._tn_nll_derivs`): with ``g`` and ``H`` there, the Hessian
    in ``eta`` mapped back is ``H + [[0, 2 g_mu], [2 g_mu, 2 g_ls]]``, and the update follows the
    straight line in ``eta`` (:func:`_eta_path`). A variable on a bound whose gradient pushes
    outward is held (a bound is a line in ``eta``: moving along it changes the other variable
    only); a non-positive-definite Hessian (the MAP prior term is not convex) is shifted
    (Levenberg); the step is cut at the box's edge and an Armijo backtracking search keeps every
    step a descent step. A question stops when its projected gradient is below ``gtol max(1, n)``,
    when its Newton decrement vanishes or when no step descends any more; with ``rival`` (Q,),
    the objective another start of the same question reached, also when it is above the rival by
    more than max(1, 10 x its predicted remaining gain) (it cannot win), and with ``rival_theta``
    (Q, 2), where the rival stopped, also when it is within ``rival_radius`` of that point in both
    coordinates while still above the rival's objective (it is converging to the rival's optimum,
    which the caller keeps). Returns ``theta, f, nll, pg (projected gradient), iterations,
    evaluations`` (the count of (question, point) evaluations of the objective and its derivatives)."""
    theta = np.array(theta, dtype=float)
    for k in range(2):
        np.clip(theta[:, k], lo[k], hi[k], out=theta[:, k])
    theta = _snap_to_box(theta, lo, hi)
    q = theta.shape[0]
    pm = ps = tm2 = ts2 = None
    if prior is not None:
        pm, ps, tm, ts = prior
        tm2, ts2 = tm * tm, ts * ts

    evaluations = [0]

    def evaluate(th, idx):
        """Objective, data term and derivatives at ``th`` of the questions ``idx`` (None: all)."""
        mu, ls = th[:, 0], th[:, 1]
        evaluations[0] += mu.size
        if idx is None:
            nll, gm, gl, hmm, hms, hss = _tn_nll_derivs(mu, ls, n, mean, ss)
        else:
            nll, gm, gl, hmm, hms, hss = _tn_nll_derivs(mu, ls, n.take(idx), mean.take(idx), ss.take(idx))
        f = nll
        if prior is not None and lam > 0:
            pm_, ps_, tm2_, ts2_ = (pm, ps, tm2, ts2) if idx is None else (v.take(idx) for v in (pm, ps, tm2, ts2))
            sig = np.exp(ls)
            dmu, dsg = mu - pm_, sig - ps_
            f = nll + lam * (dmu * dmu / (2.0 * tm2_) + dsg * dsg / (2.0 * ts2_))
            gm = gm + lam * dmu / tm2_
            gl = gl + lam * dsg * sig / ts2_
            hmm = hmm + lam / tm2_
            hss = hss + lam * sig * (2.0 * sig - ps_) / ts2_
        return f, nll, gm, gl, hmm, hms, hss

    f, nll, g0, g1, h00, h01, h11 = evaluate(theta, None)
    act = np.flatnonzero(np.isfinite(f))
    in_eta = np.zeros(q, dtype=bool)  # per question: the next step is taken in eta
    # (MLE only: the MAP prior holds mu and sigma away from the valleys, and there the steps in
    # theta alone take fewer iterations: measured on benchmarks/bench_fits.py's rows)
    use_eta = prior is None or lam == 0
    gtol_q = gtol * np.maximum(1.0, n)
    it = 0
    for it in range(1, maxiter + 1):
        # a question whose gradient is within tolerance has converged (its projected gradient is
        # smaller still): dropped before the Newton step is formed
        a0, a1 = g0.take(act), g1.take(act)
        keep = np.flatnonzero(~(np.maximum(np.abs(a0), np.abs(a1)) <= gtol_q.take(act)))
        if keep.size < act.size:
            act, a0, a1 = act.take(keep), a0.take(keep), a1.take(keep)
        if act.size == 0:
            break
        th = theta.take(act, axis=0)
        fa = f.take(act)
        e = in_eta.take(act)
        # the Hessian in theta, or the one in eta mapped back to theta (all free variables first;
        # the few questions on a bound are redone below)
        k00, k01, k11 = h00.take(act), h01.take(act), h11.take(act)
        if e.any():
            k01 = k01 + np.where(e, 2.0 * a0, 0.0)
            k11 = k11 + np.where(e, 2.0 * a1, 0.0)
        p0, p1 = a0, a1
        on_bound = np.flatnonzero((th[:, 0] <= lo[0]) | (th[:, 0] >= hi[0]) | (th[:, 1] <= lo[1]) | (th[:, 1] >= hi[1]))
        if on_bound.size:
            # (p0, p1, k00, k01, k11 are this iteration's own arrays, gathered above: updated in place)
            tb, b0, b1 = th[on_bound], a0[on_bound], a1[on_bound]
            fix0 = ((tb[:, 0] <= lo[0]) & (b0 > 0)) | ((tb[:, 0] >= hi[0]) & (b0 < 0))
            fix1 = ((tb[:, 1] <= lo[1]) & (b1 > 0)) | ((tb[:, 1] >= hi[1]) & (b1 < 0))
            p0[on_bound] = np.where(fix0, 0.0, b0)
            p1[on_bound] = np.where(fix1, 0.0, b1)
            k00[on_bound] = np.where(fix0, 1.0, k00[on_bound])
            k11[on_bound] = np.where(fix1, 1.0, k11[on_bound])
            k01[on_bound] = np.where(fix0 | fix1, 0.0, k01[on_bound])
        tr, det = k00 + k11, k00 * k11 - k01 * k01
        lam_min = 0.5 * tr - np.sqrt(np.maximum(0.25 * tr * tr - det, 0.0))
        scale = np.maximum(np.maximum(np.abs(k00), np.abs(k11)), np.abs(k01)) + 1e-300
        shift = np.where(lam_min < 1e-8 * scale, 1e-6 * scale - lam_min, 0.0)
        k00, k11 = k00 + shift, k11 + shift
        det = k00 * k11 - k01 * k01
        s0 = -(k11 * p0 - k01 * p1) / det
        s1 = -(k00 * p1 - k01 * p0) / det
        if on_bound.size:
            tb = th[on_bound]
            c0 = np.where(p0[on_bound] == 0.0, 0.0, s0[on_bound])
            c1 = np.where(p1[on_bound] == 0.0, 0.0, s1[on_bound])
            # a variable on a bound whose gradient points inside but whose Newton step points
            # outside: hold it and take the 1-d Newton step of the other (or of itself when the
            # other is held)
            out0 = ((tb[:, 0] <= lo[0]) & (c0 < 0)) | ((tb[:, 0] >= hi[0]) & (c0 > 0))
            out1 = ((tb[:, 1] <= lo[1]) & (c1 < 0)) | ((tb[:, 1] >= hi[1]) & (c1 > 0))
            only1 = out0 & (p1[on_bound] != 0.0)  # move log sigma alone
            only0 = ~only1 & (out1 | out0)  # move mu alone (its gradient points inside)
            c1 = np.where(only1, -p1[on_bound] / k11[on_bound], np.where(only0, 0.0, c1))
            c0 = np.where(only0, -p0[on_bound] / k00[on_bound], np.where(only1, 0.0, c0))
            s0[on_bound], s1[on_bound] = c0, c1
        dec = -(s0 * p0 + s1 * p1)  # Newton decrement: the predicted gain, times 2
        moving = (np.maximum(np.abs(p0), np.abs(p1)) > gtol_q.take(act)) & (dec > 1e-24 * np.maximum(1.0, np.abs(fa)))
        if rival is not None:
            fr = rival.take(act)
            moving &= fa - fr <= np.maximum(1.0, 5.0 * dec)
            if rival_theta is not None:
                rt = rival_theta.take(act, axis=0)
                near = np.maximum(np.abs(th[:, 0] - rt[:, 0]), np.abs(th[:, 1] - rt[:, 1])) < rival_radius
                moving &= ~(near & (fa > fr))
        if not moving.all():
            keep = np.flatnonzero(moving)
            act, th, fa, p0, p1, s0, s1, dec, e = (v.take(keep, axis=0) for v in (act, th, fa, p0, p1, s0, s1, dec, e))
        step = np.stack([s0, s1], axis=1)
        # cut at the box's edge; an eta step also at a trust region (_TRUST)
        with np.errstate(divide="ignore", invalid="ignore"):
            r0 = (np.where(s0 > 0, hi[0], lo[0]) - th[:, 0]) / s0
            r1 = (np.where(s1 > 0, hi[1], lo[1]) - th[:, 1]) / s1
        r0 = np.where(s0 == 0.0, 1.0, r0)  # (a held variable, or one not moving, bounds nothing)
        r1 = np.where(s1 == 0.0, 1.0, r1)
        t = np.clip(np.minimum(r0, r1), 0.0, 1.0)
        if e.any():
            t[e] = _eta_path_limit(th[e], step[e], np.maximum(lo, th[e] - _TRUST), np.minimum(hi, th[e] + _TRUST))
        t_first = t.copy()
        # Armijo, allowing for rounding of f so that a converging step is not refused; a step whose
        # predicted gain is within rounding of f is taken when it shrinks the gradient instead
        slack = 4e-16 * np.maximum(1.0, np.abs(fa))
        tiny = dec < 1e-11 * np.maximum(1.0, np.abs(fa))
        pending = None  # all
        for _ in range(40):
            if pending is None:
                tp, thp, stp, ep, ids = t, th, step, e, act
                fp, dp, sl, ti, q0, q1 = fa, dec, slack, tiny, s0, s1
            else:
                tp, thp, stp, ep, ids, fp, dp, sl, ti, q0, q1 = (
                    v.take(pending, axis=0) for v in (t, th, step, e, act, fa, dec, slack, tiny, s0, s1))
            cand = np.empty_like(thp)  # thp + tp step, column by column
            np.multiply(tp, q0, out=cand[:, 0])
            cand[:, 0] += thp[:, 0]
            np.multiply(tp, q1, out=cand[:, 1])
            cand[:, 1] += thp[:, 1]
            if ep.any():
                cand[ep] = _eta_path(thp[ep], stp[ep], tp[ep])
            # on the bound exactly when within rounding of it (the eta path rounds)
            cand = _snap_to_box(cand, lo, hi)
            out = evaluate(cand, ids)
            ok = np.isfinite(out[0]) & ((out[0] <= fp - 1e-4 * tp * dp + sl)
                                        | (ti & (np.abs(out[2] * q0) + np.abs(out[3] * q1) < dp)))
            if ok.all():
                good = ids
                theta[good] = cand
                for arr, val in zip((f, nll, g0, g1, h00, h01, h11), out):
                    arr[good] = val
                idx = np.empty(0, dtype=np.intp)
            else:
                okv = np.flatnonzero(ok)
                good = ids.take(okv)
                theta[good] = cand.take(okv, axis=0)
                for arr, val in zip((f, nll, g0, g1, h00, h01, h11), out):
                    arr[good] = val.take(okv)
                bad_ = np.flatnonzero(~ok)
                idx = bad_ if pending is None else pending.take(bad_)
            t[idx] *= 0.5
            pending = idx
            if pending.size == 0:
                break
        # A step that had to be cut back says the local model of its coordinates is poor: the
        # next step of that question uses the other ones (theta near the data, eta along the
        # near-exponential valleys). A question whose search failed in both stops (no descent
        # left at float precision; judged by its gradient below).
        cut = t < t_first
        in_eta[act] = (e ^ cut) if use_eta else False
        if pending.size:
            failed = np.zeros(act.size, dtype=bool)
            failed[pending] = True
            stop = failed & e
            if stop.any():
                act = act[~stop]
    fix0 = ((theta[:, 0] <= lo[0]) & (g0 > 0)) | ((theta[:, 0] >= hi[0]) & (g0 < 0))
    fix1 = ((theta[:, 1] <= lo[1]) & (g1 > 0)) | ((theta[:, 1] >= hi[1]) & (g1 < 0))
    pg = np.stack([np.where(fix0, 0.0, g0), np.where(fix1, 0.0, g1)], axis=1)
    return theta, f, nll, pg, it, evaluations[0]


# The MLE depends on the scores only through their mean and (population) standard deviation, so
# its starting point comes from a table of bounded MLEs over (mean, std), built once per box.
# Coordinates: p = logit(mean) on [-_TABLE_LOGIT, _TABLE_LOGIT] and c in [0, 1], the position of
# log(std / d) (d = distance of the mean to the nearer end of [0, 1]) between log(_TABLE_T_MIN)
# and its largest possible value log(sqrt(mean (1 - mean)) / d). Scores whose std is below
# _TABLE_T_MIN d lie > 10 std from both ends: their MLE is within ~1e-20 of the moments, the
# start used there (and outside the logit range).
_TABLE_LOGIT, _TABLE_NP = 16.0, 321
_TABLE_T_MIN, _TABLE_NC = 0.1, 121
_MLE_TABLES: dict[tuple, Any] = {}  # (bounds) -> (mu, log sigma) tables; ("cells", bounds) -> cell corners


def _table_coords(mean, log_sd):
    """(p, c, inside) of the MLE table for arrays ``mean`` and ``log(sd)`` (``-inf`` for sd = 0;
    see above)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lm, l1 = np.log(mean), np.log1p(-mean)
        ld = np.minimum(lm, l1)  # log of the distance to the nearer end
        p = lm - l1
        c = (log_sd - ld - np.log(_TABLE_T_MIN)) / (0.5 * (lm + l1) - ld - np.log(_TABLE_T_MIN))
    inside = (np.abs(p) <= _TABLE_LOGIT) & (c >= 0) & np.isfinite(c)
    return p, np.minimum(c, 1.0), inside


def _mle_table(mu_bounds, sigma_bounds) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, log sigma)`` of the bounded MLE on the (p, c) grid, each (_TABLE_NP, _TABLE_NC),
    built by continuation in c (each column starts from the previous one's solution)."""
    key = (float(mu_bounds[0]), float(mu_bounds[1]), float(sigma_bounds[0]), float(sigma_bounds[1]))
    if key not in _MLE_TABLES:
        lo = np.array([key[0], np.log(key[2])])
        hi = np.array([key[1], np.log(key[3])])
        p = np.linspace(-_TABLE_LOGIT, _TABLE_LOGIT, _TABLE_NP)
        mean = 1.0 / (1.0 + np.exp(-p))
        d = np.minimum(mean, 1.0 - mean)
        lt_max = 0.5 * (np.log(mean) + np.log1p(-mean)) - np.log(d)
        ones = np.ones_like(mean)
        mu_t = np.empty((_TABLE_NP, _TABLE_NC))
        ls_t = np.empty((_TABLE_NP, _TABLE_NC))
        theta = None
        for j, c in enumerate(np.linspace(0.0, 1.0, _TABLE_NC)):
            sd = d * np.exp(np.log(_TABLE_T_MIN) + c * (lt_max - np.log(_TABLE_T_MIN)))
            if theta is None:
                theta = np.stack([mean, np.log(np.maximum(sd, key[2]))], axis=1)
            theta, *_ = _newton_truncnorm(theta, ones, mean, sd * sd, None, 0.0, lo, hi, maxiter=500)
            mu_t[:, j], ls_t[:, j] = theta[:, 0], theta[:, 1]
        _MLE_TABLES[key] = (mu_t, ls_t)
    return _MLE_TABLES[key]


# Hermite form of a cubic on [0, 1]: the coefficients of 1, t, t^2, t^3 from (f(0), f(1), f'(0), f'(1))
_HERMITE = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [-3.0, 3.0, -2.0, -1.0], [2.0, -2.0, 1.0, 1.0]])


def _mle_cells(mu_bounds, sigma_bounds) -> np.ndarray:
    """The MLE table as a piecewise bicubic: per cell of the (p, c) grid, the coefficients of
    ``u^i v^j`` (``u, v`` in [0, 1] across the cell) of ``mu`` and of ``log sigma``, (cells, 2, 16).

    Each half ``p <= 0`` / ``p >= 0`` is an interpolating cubic spline (``scipy.interpolate.
    RectBivariateSpline``, s = 0) of the table, written per cell in Hermite form from its values
    and derivatives at the cell's corners. The halves are separate because ``c`` is measured from
    the nearer end of [0, 1], so the table has a kink along ``p = 0``; one spline across it rings.
    On the simulated rows of ``benchmarks/bench_fits.py`` the start is 3e-7 off at the median and
    1.3e-6 at the 75th percentile (bilinear: 9e-4 and 2.3e-3; the larger of the ``mu`` error over
    ``sigma`` and the ``log sigma`` error, questions off the bounds), so one Newton step reaches
    the tolerance for most questions (2.0 evaluations per fit instead of 2.7). Cells crossed by
    the kink where the MLE meets a bound of the box stay less accurate (the 90th percentile,
    2e-4); their questions take more steps. A single spline over both halves: 2.1 evaluations.
    Built once per box: ~0.03 s on top of the table; (cells, 2, 16) floats, 10 MB."""
    from scipy.interpolate import RectBivariateSpline

    key = ("cells",) + tuple(float(b) for b in (*mu_bounds, *sigma_bounds))
    if key not in _MLE_TABLES:
        mu_t, ls_t = _mle_table(mu_bounds, sigma_bounds)
        p = np.linspace(-_TABLE_LOGIT, _TABLE_LOGIT, _TABLE_NP)
        c = np.linspace(0.0, 1.0, _TABLE_NC)
        hp, hc = p[1] - p[0], c[1] - c[0]
        half = (_TABLE_NP - 1) // 2  # p[half] = 0
        coef = np.empty((_TABLE_NP - 1, _TABLE_NC - 1, 2, 4, 4))
        for rows in (slice(0, half + 1), slice(half, _TABLE_NP)):
            for k, table in enumerate((mu_t, ls_t)):
                spl = RectBivariateSpline(p[rows], c, table[rows], kx=3, ky=3, s=0)
                f = table[rows]  # (the spline interpolates it)
                fu = spl(p[rows], c, dx=1) * hp
                fv = spl(p[rows], c, dy=1) * hc
                fuv = spl(p[rows], c, dx=1, dy=1) * hp * hc
                # per cell: [[f00, f01, fv00, fv01], [f10, f11, fv10, fv11], [fu00, ...], [fu10, ...]]
                blk = np.empty(f[:-1, :-1].shape + (4, 4))
                for a, (vals, dvals) in enumerate(((f, fv), (fu, fuv))):
                    blk[..., 2 * a, 0], blk[..., 2 * a, 1] = vals[:-1, :-1], vals[:-1, 1:]
                    blk[..., 2 * a + 1, 0], blk[..., 2 * a + 1, 1] = vals[1:, :-1], vals[1:, 1:]
                    blk[..., 2 * a, 2], blk[..., 2 * a, 3] = dvals[:-1, :-1], dvals[:-1, 1:]
                    blk[..., 2 * a + 1, 2], blk[..., 2 * a + 1, 3] = dvals[1:, :-1], dvals[1:, 1:]
                cells = slice(rows.start, rows.stop - 1)
                coef[cells, :, k] = _HERMITE @ blk @ _HERMITE.T
        _MLE_TABLES[key] = coef.reshape((_TABLE_NP - 1) * (_TABLE_NC - 1), 2, 16)
    return _MLE_TABLES[key]


def _mle_start(mean, sd, mu_bounds, sigma_bounds):
    """Starting ``(mu, log sigma)`` for the MLE: the table's bicubic interpolation
    (:func:`_mle_cells`) where the scores are near an end of [0, 1], the moments elsewhere."""
    mu0 = mean.copy()
    with np.errstate(divide="ignore"):
        log_sd = np.log(sd)
    ls0 = np.maximum(log_sd, np.log(sigma_bounds[0]))
    p, c, inside = _table_coords(mean, log_sd)
    idx = np.flatnonzero(inside)
    if idx.size:
        cells = _mle_cells(mu_bounds, sigma_bounds)
        u = (p[idx] + _TABLE_LOGIT) * ((_TABLE_NP - 1) / (2 * _TABLE_LOGIT))
        v = c[idx] * (_TABLE_NC - 1)
        i = np.minimum(u.astype(int), _TABLE_NP - 2)
        j = np.minimum(v.astype(int), _TABLE_NC - 2)
        fu, fv = u - i, v - j
        # the monomials u^a v^b (index 4 a + b), built row-wise (each row contiguous: cheap), then
        # one contraction with the cells' coefficients
        w = np.empty((16, idx.size))
        w[0], w[1], w[4] = 1.0, fv, fu
        np.multiply(fv, fv, out=w[2])
        np.multiply(w[2], fv, out=w[3])
        np.multiply(fu, fu, out=w[8])
        np.multiply(w[8], fu, out=w[12])
        for a in (4, 8, 12):
            np.multiply(w[a], w[1:4], out=w[a + 1:a + 4])
        start = np.einsum("mkl,ml->km", cells.take(i * (_TABLE_NC - 1) + j, axis=0), w.T.copy())
        mu0[idx], ls0[idx] = start[0], start[1]
    return mu0, ls0


def _fit_truncnorm_stats(n, mean, ss, prior=None, prior_strength=1.0, mu_bounds=MU_BOUNDS,
                         sigma_bounds=SIGMA_BOUNDS, mu_init=None, sigma_init=None):
    """Batched MLE / MAP on sufficient statistics, all (Q,). Returns mu, sigma, nll, logprior,
    converged, at_bound, info.

    The MLE starts from the table of :func:`_mle_start` (or ``mu_init`` / ``sigma_init``); its
    objective is convex in the natural parameters and the box is a convex polygon there, so any
    start reaches the one optimum. The MAP objective is not: with a wide prior and a tight cluster of
    scores it has two optima, a narrow one at the data and a wide one near the prior. MAP
    therefore runs from the data moments *and* from a start on the prior's side (halfway from the
    data mean to the prior mean, as wide as the prior's sigma or the gap between the means; the
    prior mode when the means agree) and keeps, per question, the lower objective (ties: the
    moments' start). Against a brute-force grid over the box, on 5,057 test questions (real pool
    prefixes, simulated and degenerate scores) and three priors, that pair of starts misses the
    global optimum on 1 question; the data moments with the prior mode itself miss it on 102."""
    q = n.shape[0]
    lo = np.array([mu_bounds[0], np.log(sigma_bounds[0])])
    hi = np.array([mu_bounds[1], np.log(sigma_bounds[1])])
    var = np.where(n > 0, ss / np.maximum(n, 1), 0.01)
    if mu_init is None and sigma_init is None and (prior is None or float(prior_strength) == 0.0):
        mu0, ls0 = _mle_start(np.where(n > 0, mean, 0.5), np.sqrt(np.clip(var, 0, None)), mu_bounds, sigma_bounds)
    else:
        mu0 = np.where(n > 0, mean, 0.5) if mu_init is None else np.asarray(mu_init, float)
        sd0 = np.sqrt(np.clip(var, 0, None)) if sigma_init is None else np.asarray(sigma_init, float)
        ls0 = np.log(np.maximum(sd0, sigma_bounds[0]))
    lam = float(prior_strength)
    starts = 1
    if prior is not None:
        pm, ps, tm, ts = prior
        ls_prior = np.log(np.clip(ps, *sigma_bounds))
        mu0 = np.where(n == 0, pm, mu0)
        ls0 = np.where(n == 0, ls_prior, ls0)
        if lam > 0:
            starts = 2
    theta, f, nll, pg, iters, evals = _newton_truncnorm(np.stack([mu0, ls0], axis=1), n, mean, ss, prior, lam, lo, hi)
    if starts == 2:
        # the prior-side start: halfway from the data mean to the prior mean, as wide as the
        # prior or the gap (the prior mode itself when the two means agree; without scores)
        mu_b = np.where(n > 0, 0.5 * (mean + pm), pm)
        ls_b = np.where(n > 0, np.log(np.clip(np.maximum(ps, np.abs(mean - pm)), *sigma_bounds)), ls_prior)
        tb, fb, nb, pgb, it_b, ev_b = _newton_truncnorm(np.stack([mu_b, ls_b], axis=1), n, mean, ss, prior, lam, lo, hi,
                                                  rival=f, rival_theta=theta)
        better = fb < f
        theta[better], f[better], nll[better], pg[better] = tb[better], fb[better], nb[better], pgb[better]
        iters = max(iters, it_b)
        evals += ev_b
    mu, sig = theta[:, 0], np.exp(theta[:, 1])
    logprior = nll - f  # = -(penalty); zero for MLE
    # (column by column: numpy loops over an inner axis of 2 slowly)
    ok = np.isfinite(f) & (np.maximum(np.abs(pg[:, 0]), np.abs(pg[:, 1])) <= 1e-6 * np.maximum(1.0, n))
    at_bound = (theta[:, 0] <= lo[0]) | (theta[:, 0] >= hi[0]) | (theta[:, 1] <= lo[1]) | (theta[:, 1] >= hi[1])
    info = {"iterations": iters, "starts": starts, "evaluations": evals}
    if starts == 2:
        info["from_prior"] = int(better.sum())
    return mu, sig, nll, logprior, ok, at_bound, info


def _check_prior_strength(prior_strength) -> float:
    if prior_strength < 0 or not np.isfinite(prior_strength):
        raise FitError(f"prior_strength must be finite and >= 0, got {prior_strength}")
    return float(prior_strength)


def _truncnorm_result(single, mu, sig, loglik, ok, n, deg, at_bound, logprior, pr, info, prior_strength,
                      mu_bounds, sigma_bounds, optimizer: str) -> FitResult:
    """The :class:`FitResult` of :func:`fit_truncnorm` / :func:`fit_truncnorm_prefixes`."""
    out = _squeeze(single, mu, sig, loglik, ok, n, deg, at_bound, loglik + logprior)
    return FitResult("truncnorm", {"mu": out[0], "sigma": out[1]}, out[2], out[3], out[4], 2, out[5], out[6],
                     logpost=out[7] if pr is not None else None,
                     info={"optimizer": optimizer, "iterations": info["iterations"],
                           "evaluations": info["evaluations"],
                           "map_from_prior": info.get("from_prior", 0),
                           "mu_bounds": tuple(mu_bounds), "sigma_bounds": tuple(sigma_bounds),
                           "prior_strength": float(prior_strength) if pr is not None else 0.0})


def fit_truncnorm(scores, prior=None, prior_strength: float = 1.0, mask=None,
                  mu_bounds: tuple[float, float] = MU_BOUNDS,
                  sigma_bounds: tuple[float, float] = SIGMA_BOUNDS) -> FitResult:
    """Fit a truncated normal on [0, 1] to each question's scores (MLE, or MAP with ``prior``).

    ``scores``: (Q, k) or (k,) in [0, 1]; ``mask``: same shape, True = use. ``prior``: None (MLE)
    or ``(mu0, sigma0[, tau_mu[, tau_sigma]])`` with scalars or (Q,) arrays (MAP, see module
    docstring); ``prior_strength`` multiplies the prior's precision. Returns a :class:`FitResult`
    with ``mu``, ``sigma``, ``loglik``, ``converged`` etc. of shape (Q,) (shape () for (k,)); its
    ``info["evaluations"]`` counts the (question, point) evaluations of the objective (both MAP
    starts), e.g. ~2.0 per question for the MLE on ``benchmarks/bench_fits.py``'s rows."""
    x, m, single = _prepare(scores, mask)
    q = x.shape[0]
    n = m.sum(axis=1).astype(float)
    pr = _parse_prior(prior, q)
    if pr is None and (n == 0).any():
        raise FitError(f"question {int(np.argwhere(n == 0)[0][0])} has no usable score (MLE needs >= 1; "
                       "pass a prior for a MAP fit)")
    _check_prior_strength(prior_strength)
    mean = (x * m).sum(axis=1) / np.maximum(n, 1)
    ss = (((x - mean[:, None]) * m) ** 2).sum(axis=1)
    mu, sig, nll, logprior, ok, at_bound, info = _fit_truncnorm_stats(
        n, mean, ss, pr, prior_strength, tuple(mu_bounds), tuple(sigma_bounds))
    deg = _degenerate(x, m)
    return _truncnorm_result(single, mu, sig, -nll, ok, n, deg, at_bound, logprior, pr, info, prior_strength,
                             mu_bounds, sigma_bounds, "batched projected Newton (analytic Hessian; MLE table "
                             "start; MAP from the data moments and the prior's side)")


def fit_truncnorm_prefixes(scores, prior=None, prior_strength: float = 1.0, mask=None,
                           mu_bounds: tuple[float, float] = MU_BOUNDS,
                           sigma_bounds: tuple[float, float] = SIGMA_BOUNDS) -> FitResult:
    """Fit a truncated normal to every prefix of each row: field ``[r, j]`` of the result is the fit
    of ``scores[r, :j + 1]`` (what :func:`fit_truncnorm` gives that prefix, within its tolerance).

    ``scores``: (R, N) or (N,) in [0, 1]; ``mask`` (same shape) must be a prefix per row (True,
    then False: e.g. ``~np.isnan(scores)`` of NaN-padded rows); cells past a row's last score get
    ``mu = sigma = loglik = NaN``, ``n = 0`` and ``converged = False``. ``prior``,
    ``prior_strength`` and the bounds as in :func:`fit_truncnorm` (prior arrays are (R,), one
    prior per row). Returns a :class:`FitResult` whose fields are (R, N) ((N,) for (N,) input).

    The sufficient statistics of all prefixes come from one running (Welford) pass over the
    columns, O(R N) instead of the O(R N^2) of masking N rows of length N per row; all prefixes
    are then fitted in one batch by :func:`_fit_truncnorm_stats`, with the starts of
    :func:`fit_truncnorm` (MLE: the table; MAP: the data moments and the prior's side), so each
    prefix reaches the optimum an independent fit reaches. (Starting MAP prefix n from prefix
    n - 1's two solutions was measured on ``benchmarks/bench_fits.py``'s rows: 27% fewer
    evaluations but no faster, the loop over n costing what the Newton steps saved, and a worse
    optimum on 40 of 32,000 prefixes, the data-side branch following a vanished optimum.)"""
    x, m, single = _prepare(scores, mask)
    R, N = x.shape
    L = m.sum(axis=1)
    cols = np.arange(N)
    bad = m != (cols[None, :] < L[:, None])
    if bad.any():
        r, j = (int(v) for v in np.argwhere(bad)[0])
        raise FitError(f"mask of row {r} is not a prefix (True, then False): position {j} is "
                       f"{'used after an unused one' if m[r, j] else 'unused before a used one'}")
    pr = _parse_prior(prior, R)
    lam = _check_prior_strength(prior_strength)
    # running mean and sum of squared deviations of every prefix (Welford)
    mean = np.empty((R, N))
    ss = np.empty((R, N))
    mk = np.zeros(R)
    sk = np.zeros(R)
    for j in range(N):
        d = x[:, j] - mk
        mk = mk + d / (j + 1)
        sk = sk + d * (x[:, j] - mk)
        mean[:, j], ss[:, j] = mk, sk
    np.maximum(ss, 0.0, out=ss)
    valid = cols[None, :] < L[:, None]
    deg = ~(np.maximum.accumulate(x, axis=1) > np.minimum.accumulate(x, axis=1))
    nn = np.broadcast_to((cols + 1.0)[None, :], (R, N))
    if valid.all():  # no padding: fit the (R N,) cells as they lie
        out = _fit_truncnorm_stats(nn.ravel(), mean.ravel(), ss.ravel(),
                                   None if pr is None else [np.repeat(v, N) for v in pr], lam,
                                   tuple(mu_bounds), tuple(sigma_bounds))
        mu, sig, nll, logprior, ok, at_bound = (v.reshape(R, N) for v in out[:6])
    else:
        mu, sig, nll = (np.full((R, N), np.nan) for _ in range(3))
        logprior = np.zeros((R, N))
        ok = np.zeros((R, N), dtype=bool)
        at_bound = np.zeros((R, N), dtype=bool)
        r_idx, j_idx = np.nonzero(valid)
        out = _fit_truncnorm_stats(nn[r_idx, j_idx], mean[r_idx, j_idx], ss[r_idx, j_idx],
                                   None if pr is None else [v[r_idx] for v in pr], lam,
                                   tuple(mu_bounds), tuple(sigma_bounds))
        for arr, val in zip((mu, sig, nll, logprior, ok, at_bound), out[:6]):
            arr[r_idx, j_idx] = val
    info = out[6]
    loglik = -nll
    n_used = np.where(valid, nn, 0.0)
    deg = deg & valid | ~valid
    return _truncnorm_result(single, mu, sig, loglik, ok, n_used, deg, at_bound, logprior, pr, info, prior_strength,
                             mu_bounds, sigma_bounds, "batched projected Newton on running sufficient statistics "
                             "(all prefixes in one batch; MLE table start; MAP from the data moments and the "
                             "prior's side)")


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
# Family interface and registry (the families: optscale.theory.families, imported on first use)
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
FITS.register("truncnorm", "optscale.theory.families:TruncNormFamily")
FITS.register("beta", "optscale.theory.families:BetaFamily")
FITS.register("logit-normal", "optscale.theory.families:LogitNormalFamily")
FITS.register("kde", "optscale.theory.families:KDEFamily")
