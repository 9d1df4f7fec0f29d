"""Score-distribution families behind one interface, by name (:data:`FITS`): ``truncnorm`` (the
batched fit of :mod:`optscale.theory.fits`), ``beta``, ``logit-normal`` and ``kde`` (a Gaussian
kernel estimate renormalized to [0, 1]). Beta and logit-normal clip scores to
``[CLIP_EPS, 1 - CLIP_EPS]`` because their densities vanish or blow up at 0 and 1.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from .fits import (CLIP_EPS, FitFamily, FitResult, FITS, _degenerate, _newton_box, _prepare_nonempty, _squeeze,
                   fit_truncnorm)
from .truncnorm import truncnorm_cdf, truncnorm_logpdf, truncnorm_ppf

__all__ = ["TruncNormFamily", "BetaFamily", "LogitNormalFamily", "KDEFamily", "fit_family"]


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
