"""The fit studies of notebooks 01 and 02, pure functions of arrays (tested): quantiles of any CDF
by bisection, the authors' printed reference fits, MLE vs MAP from the first k scores, and a
goodness-of-fit comparison of the families.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .families import fit_family
from .fits import MU_BOUNDS, SIGMA_BOUNDS, fit_truncnorm, goodness_of_fit

__all__ = ["ppf_by_bisection", "load_reference_fits", "peek_study", "compare_families"]


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

    from ..data.benchmarks import DataError, resolve_data_dir

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
