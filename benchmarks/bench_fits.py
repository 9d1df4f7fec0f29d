"""Batched truncated-normal fit vs one scipy L-BFGS-B fit per question.

Prints, from one run on the same simulated questions: both timings, the speed ratio (goal >= 50x)
and the worst relative log-likelihood gap (goal: batched >= per-question - 1e-6 relative).

    nice -n 19 python benchmarks/bench_fits.py [--questions 1000] [--k 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import optimize, stats

from optscale.theory.fits import MU_BOUNDS, SIGMA_BOUNDS, fit_truncnorm


def scipy_fit(x: np.ndarray) -> tuple[np.ndarray, float]:
    """The per-question reference: L-BFGS-B on scipy's truncnorm log-likelihood, same bounds."""

    def nll(p):
        return -stats.truncnorm.logpdf(x, -p[0] / p[1], (1 - p[0]) / p[1], loc=p[0], scale=p[1]).sum()

    x0 = [np.clip(x.mean(), *MU_BOUNDS), np.clip(x.std(), *SIGMA_BOUNDS)]
    o = optimize.minimize(nll, x0, method="L-BFGS-B", bounds=[MU_BOUNDS, SIGMA_BOUNDS])
    return o.x, -o.fun


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=1000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    q = a.questions
    mu = rng.uniform(0.1, 1.1, q)
    sigma = np.exp(rng.uniform(np.log(0.01), np.log(0.4), q))
    x = stats.truncnorm.rvs(-mu[:, None] / sigma[:, None], (1 - mu[:, None]) / sigma[:, None], loc=mu[:, None],
                            scale=sigma[:, None], size=(q, a.k), random_state=rng)

    t0 = time.perf_counter()
    r = fit_truncnorm(x)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = [scipy_fit(x[i]) for i in range(q)]
    t_loop = time.perf_counter() - t0
    ll_ref = np.array([v for _, v in ref])
    rel = (r.loglik - ll_ref) / np.abs(ll_ref)
    print(f"questions={q} k={a.k} seed={a.seed}")
    print(f"batched fit_truncnorm:          {t_batch:.3f} s ({r.info['iterations']} Newton iterations, "
          f"{r.converged.mean():.1%} converged)")
    print(f"per-question scipy L-BFGS-B:    {t_loop:.2f} s")
    print(f"speed ratio scipy/batched: {t_loop / t_batch:.0f}x")
    print(f"relative loglik (batched - scipy)/|scipy|: min {rel.min():.2e}, max {rel.max():.2e}; "
          f"batched worse by > 1e-6 on {(rel < -1e-6).sum()} questions, better by > 1e-6 on {(rel > 1e-6).sum()}")


if __name__ == "__main__":
    main()
