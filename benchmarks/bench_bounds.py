"""Vectorized bound solver vs the reference-style loop (loop N = 1..max_N per question).

Prints, from one run: both timings on the same 10^5 random (mu, sigma, s*, delta) tuples, the
speed ratio (goal >= 1000x), and whether every N and reachability flag is identical.

    nice -n 19 python benchmarks/bench_bounds.py [--tuples 100000] [--max-N 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from optscale.bounds import required_samples, required_samples_loop
from optscale.fits import truncnorm_cdf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuples", type=int, default=100_000)
    ap.add_argument("--max-N", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5, help="best-of repeats for the vectorized solver")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    n = a.tuples
    mu, sigma = rng.uniform(-0.5, 1.5, n), np.exp(rng.uniform(np.log(0.005), np.log(1.0), n))
    s_star, delta = rng.uniform(0, 1, n), rng.uniform(0.005, 0.5, n)
    t0 = time.perf_counter()
    F = truncnorm_cdf(s_star, mu, sigma)
    t_cdf = time.perf_counter() - t0

    t_vec = np.inf
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        N, ok = required_samples(F, delta, max_N=a.max_N)
        t_vec = min(t_vec, time.perf_counter() - t0)
    t0 = time.perf_counter()
    N_loop, ok_loop = required_samples_loop(F, delta, max_N=a.max_N)
    t_loop = time.perf_counter() - t0

    same = bool(np.array_equal(N, N_loop) and np.array_equal(ok, ok_loop))
    print(f"tuples={n} max_N={a.max_N} seed={a.seed}  (F(s*) for all tuples via scipy truncnorm: {t_cdf:.3f}s)")
    print(f"vectorized required_samples: {t_vec * 1e3:.2f} ms (best of {a.repeat})")
    print(f"reference-style loop:        {t_loop * 1e3:.1f} ms")
    print(f"speed ratio loop/vectorized: {t_loop / t_vec:.0f}x   identical N and flags: {same}")
    print(f"N* distribution: median {np.median(N):.0f}, unreachable {np.mean(~ok):.1%}, N*=1 {np.mean(N == 1):.1%}")
    if not same:
        raise SystemExit("MISMATCH between vectorized and loop solver")


if __name__ == "__main__":
    main()
