"""How far this project's OptScale agrees with the reference's decision procedure, on the committed pools.

An independent re-implementation of the reference OptScale decision procedure (Albertwyk/OptScale,
``BoN_OptScale/pred_bon_optscale_*.ipynb`` with ``utils.py``; written from its description, no
code taken), replayed on the committed 1.5B pools next to ``optscale-0`` run through the project's
public API (``read_pool``, ``pool_arrays``, ``replay_orders``, ``make_policy``, ``replay``):

1. **Fit** (reference MLE): ``scipy.optimize.minimize(method="L-BFGS-B")`` with its
   finite-difference gradient on the truncated-normal negative log-likelihood of the first ``k``
   scores, from (mean, population std), ``mu`` unbounded, ``sigma >= 1e-6`` (the objective is
   infinite where the normaliser ``Phi(b) - Phi(a)`` underflows to 0).
2. **N rule**: for ``N = 1..max_N`` the density of the best of ``N`` scores,
   ``N f(x) F(x)^(N-1)``, on 1000 grid points of [0, 1], summed into a CDF, normalised by its
   last value; stop at the first ``N`` whose ``delta``-quantile (first grid point with CDF >=
   delta) reaches ``s*``; ``max_N`` if none; then ``N = max(N, k)``.
3. **Selection**: the highest score among the first ``N`` samples; a sample whose text is empty
   is skipped. **Tokens**: the completion tokens of all ``N`` samples.

The project's ``optscale-0`` fits a box-bounded MLE (``mu`` in [-1, 2], ``sigma`` in [1e-3, 2],
batched projected Newton), takes the exact ``N* = min N with F(s*)^N <= delta``
(``optscale.theory.bounds.required_samples``) and selects the best-scored sample *with an
answer*. Printed per pool: agreement of N over the first ``--pairs`` (order, question) pairs
(order-major; order 0 is the pool's own order) for every (s*, delta) of the project's tuning grid
at each ``k`` of ``--ks`` (s* = quantiles 0.5-0.98 of the pool's scores, delta in {0.05, 0.1,
0.2, 0.4}), every miss in a category, and the accuracy / tokens of the two procedures and of the
two selection rules (BoN@n and OptScale at equal N). docs/deviations_from_reference.md reports
the numbers.

    OMP_NUM_THREADS=1 python scripts/reference_agreement.py [--profile cpu-1.5b] [--pairs 5000] [--ks 3]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
from scipy import optimize, special, stats

from optscale.config import load_config
from optscale.data.grading import extract_boxed
from optscale.data.pools import pool_path, read_pool, replay_orders
from optscale.evaluation.replay import bon_curve, pool_arrays, replay
from optscale.policies import make_policy
from optscale.theory.bounds import n_star
from optscale.theory.fits import fit_truncnorm

GRID = np.linspace(0.0, 1.0, 1000)  # the reference's score grid
LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
PROJECT_MU_BOUNDS = (-1.0, 2.0)  # optscale.config.FitConfig defaults (the policies use them)
PROJECT_SIGMA_MIN = 1e-3
REFERENCE_TARGETS = (0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99)  # its fixed s* panel
REFERENCE_PERCENTILES = (0.01, 0.02, 0.035, 0.05, 0.075, 0.1)  # its delta panel
POOLS = (("gsm8k", "self-certainty"), ("math500", "combined"), ("math500", "self-certainty"))


# ---------------------------------------------------------------------------------------------
# The reference procedure, re-implemented
# ---------------------------------------------------------------------------------------------
def reference_nll(params: np.ndarray, x: np.ndarray) -> float:
    """Truncated-normal negative log-likelihood on [0, 1] as the reference evaluates it: the
    normaliser as a difference of normal CDFs (so it underflows to 0 far in a tail, where the
    objective is infinite), the density as log phi(z) - log sigma."""
    mu, sigma = float(params[0]), float(params[1])
    if sigma <= 0:
        return math.inf
    z_norm = special.ndtr((1.0 - mu) / sigma) - special.ndtr((0.0 - mu) / sigma)
    if z_norm <= 0:
        return math.inf
    z = (x - mu) / sigma
    return -(float(np.sum(-z * z / 2.0 - LOG_SQRT_2PI - math.log(sigma))) - x.size * math.log(z_norm))


def reference_fit(x: np.ndarray) -> tuple[float, float]:
    """(mu, sigma): L-BFGS-B from (mean, std), mu free, sigma >= 1e-6, numeric gradient."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf in the finite differences
        res = optimize.minimize(reference_nll, [float(np.mean(x)), float(np.std(x))], args=(x,),
                                bounds=[(None, None), (1e-6, None)], method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def reference_quantiles(mu: np.ndarray, sigma: np.ndarray, deltas: np.ndarray, max_N: int) -> np.ndarray:
    """(fits, max_N, deltas) grid scores: for each fit and N the first grid point where the
    normalised numeric CDF of the best of N reaches delta (the last grid point if none). Where the
    arithmetic breaks down (NaN CDF) no grid point qualifies and the first one (0) is returned,
    as a sorted search over NaNs does."""
    mu, sigma = mu[:, None], sigma[:, None]
    a, b = (0.0 - mu) / sigma, (1.0 - mu) / sigma
    with np.errstate(all="ignore"):
        z_norm = stats.norm.cdf(b) - stats.norm.cdf(a)
        pdf1 = stats.norm.pdf(GRID[None, :], mu, sigma) / z_norm
        cdf1 = (stats.norm.cdf((GRID[None, :] - mu) / sigma) - stats.norm.cdf(a)) / z_norm
        out = np.empty((mu.shape[0], max_N, deltas.size))
        dx = GRID[1] - GRID[0]
        for n in range(1, max_N + 1):
            pdf = pdf1 if n == 1 else n * pdf1 * np.power(cdf1, n - 1)
            cdf = np.cumsum(pdf, axis=1) * dx
            cdf = cdf / cdf[:, -1:]
            # the sorted-search position of delta: cdf is non-decreasing, NaNs only at its end
            pos = (cdf[:, :, None] < deltas[None, None, :]).sum(axis=1)
            out[:, n - 1, :] = np.where(pos >= GRID.size, GRID[-1], GRID[np.minimum(pos, GRID.size - 1)])
    return out


def reference_n(quantiles: np.ndarray, target: float, k: int) -> np.ndarray:
    """First N whose grid quantile reaches the target (max_N if none), at least k. ``quantiles``
    (fits, max_N) for one delta."""
    hit = quantiles >= target
    n = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, quantiles.shape[1])
    return np.maximum(n, k)


def reference_select(scores: np.ndarray, empty: np.ndarray) -> int:
    """Index of the highest score, skipping samples with empty text (their score set to 0 and
    the maximum taken again, unless every score is then 0)."""
    s = scores.astype(float).copy()
    i = int(np.argmax(s))
    while empty[i]:
        s[i] = 0.0
        if s.max() == 0:
            break
        i = int(np.argmax(s))
    return i


def _searchsorted_check(mu, sigma, deltas, max_N, quantiles, rows: int = 40) -> None:
    """The vectorised quantile equals a row-by-row ``np.searchsorted`` (as the reference does)."""
    for r in range(min(rows, mu.size)):
        a, b = (0.0 - mu[r]) / sigma[r], (1.0 - mu[r]) / sigma[r]
        with np.errstate(all="ignore"):
            z_norm = stats.norm.cdf(b) - stats.norm.cdf(a)
            pdf1 = stats.norm.pdf(GRID, mu[r], sigma[r]) / z_norm
            cdf1 = (stats.norm.cdf((GRID - mu[r]) / sigma[r]) - stats.norm.cdf(a)) / z_norm
            for n in range(1, max_N + 1):
                pdf = pdf1 if n == 1 else n * pdf1 * np.power(cdf1, n - 1)
                cdf = np.cumsum(pdf) * (GRID[1] - GRID[0])
                cdf = cdf / cdf[-1]
                for j, d in enumerate(deltas):
                    i = np.searchsorted(cdf, d)
                    want = GRID[-1] if i >= GRID.size else GRID[i]
                    if want != quantiles[r, n - 1, j]:
                        raise SystemExit(f"vectorised grid quantile differs from searchsorted at fit {r}, N={n}")


# ---------------------------------------------------------------------------------------------
# One pool
# ---------------------------------------------------------------------------------------------
def run_pool(cfg, dataset: str, scorer: str, pairs: int, ks: list[int], seed: int) -> dict:
    t0 = time.process_time()
    pool = read_pool(pool_path(cfg, dataset))
    data = pool_arrays(pool, scorer, max_N=pool.n_per_question, cache_dir=None, verbose=False)
    Q, max_N = data.n_questions, data.n
    n_orders = math.ceil(pairs / Q)
    orders = replay_orders(Q, max_N, n_orders, seed)
    flat = [(o, q) for o in range(n_orders) for q in range(Q)][:pairs]
    oi, qi = np.array([p[0] for p in flat]), np.array([p[1] for p in flat])
    text = pool.matrix("text", max_N)
    pool_ids = pool.df.sort_values(["question_index", "sample_index"])["question_id"].astype(str)
    if list(map(str, data.question_ids)) != list(dict.fromkeys(pool_ids)):
        raise SystemExit(f"{dataset}: pool_arrays dropped or reordered questions; the text matrix would not line up")
    empty = np.vectorize(lambda t: t is None or t == "")(text)
    answered = data.classes >= 0
    correct = data.correct & answered
    grid = make_policy("optscale-0").tuning_grid(data)
    deltas = np.array(grid["delta"], dtype=float)
    out = {"dataset": dataset, "scorer": scorer, "questions": Q, "orders": n_orders, "pairs": len(flat),
           "empty_texts": int(empty.sum()), "no_answer": int((~answered).sum()), "targets": [float(t) for t in grid["target"]],
           "deltas": [float(d) for d in deltas], "ks": {}}

    # selection rule alone: BoN@N (answered-only, the project) vs the reference (non-empty text)
    bon = bon_curve(data, orders[:, :, :max_N])
    ref_bon = np.zeros((max_N, n_orders, Q), dtype=bool)
    for o in range(n_orders):
        for q in range(Q):
            idx = orders[o, q, :max_N]
            for n in range(1, max_N + 1):
                ref_bon[n - 1, o, q] = correct[q, idx[reference_select(data.scores[q, idx[:n]], empty[q, idx[:n]])]]
    boxed = np.vectorize(lambda t: t is not None and extract_boxed(str(t)) is not None)(text)
    out["answered_not_boxed"] = int((answered & ~boxed).sum())  # the reference's extraction finds no answer
    out["samples"] = int(answered.size)
    out["reference_panel_ranks"] = [float(np.mean(data.scores <= t)) for t in REFERENCE_TARGETS]
    out["bon_at_max"] = (float(bon["correct"][-1].mean()), float(ref_bon[-1].mean()))
    out["bon_mean_over_N"] = (float(bon["correct"].mean()), float(ref_bon.mean()))

    caches = [dict() for _ in range(Q)]
    for k in ks:
        # reference fits of the first k scores, one per distinct set of first-k samples
        first = orders[oi, qi, :k]
        keyed = {}  # the reference sums the scores in sample order: key by the ordered first k
        for p, (q, idx) in enumerate(zip(qi, first)):
            keyed.setdefault((int(q), tuple(int(i) for i in idx)), []).append(p)
        keys = list(keyed)
        peek = np.array([data.scores[q, list(s)] for q, s in keys])
        ref = np.array([reference_fit(x) for x in peek])
        proj = fit_truncnorm(peek)  # the project's MLE (what optscale-0 fits; checked below)
        quant = reference_quantiles(ref[:, 0], ref[:, 1], deltas, max_N)
        quant_proj = reference_quantiles(np.asarray(proj.mu, float), np.asarray(proj.sigma, float), deltas, max_N)
        _searchsorted_check(ref[:, 0], ref[:, 1], deltas, max_N, quant)
        row_of = np.empty(len(flat), dtype=int)
        for r, key in enumerate(keys):
            row_of[keyed[key]] = r
        with np.errstate(all="ignore"):  # the grid's arithmetic breaks down where the normaliser is 0
            broken = ~(stats.norm.cdf((1 - ref[:, 0]) / ref[:, 1]) - stats.norm.cdf(-ref[:, 0] / ref[:, 1]) > 0)
        mu_out = (ref[:, 0] < PROJECT_MU_BOUNDS[0]) | (ref[:, 0] > PROJECT_MU_BOUNDS[1])
        sigma_low = ref[:, 1] < PROJECT_SIGMA_MIN
        # the two fits' objectives (the reference's own NLL): which optimizer stopped higher
        obj_ref = np.array([reference_nll(p, x) for p, x in zip(ref, peek)])
        obj_proj = np.array([reference_nll(np.array([m, sg]), x) for m, sg, x in
                             zip(np.asarray(proj.mu, float), np.asarray(proj.sigma, float), peek)])
        proj_at_mu_bound = np.isin(np.asarray(proj.mu, float), PROJECT_MU_BOUNDS)
        res = {"fits": len(keys), "max_ref_mu": float(ref[:, 0].max()), "ref_mu_above_2": float(np.mean(ref[:, 0] > 2)),
               "ref_sigma_below_1e-3": float(sigma_low.mean()), "settings": [], "misses": {}}
        agree_all, n_all, inconsistent = 0, 0, 0
        misses: dict[str, int] = {}
        acc = {"project": [], "reference": [], "project_N_reference_selection": []}
        toks = {"project": [], "reference": []}
        for target in grid["target"]:
            for j, delta in enumerate(deltas):
                pol = make_policy("optscale-0", target=float(target), delta=float(delta), k=k)
                r = replay(pol, data, orders, max_N=max_N, caches=caches)
                n_proj = r.n[oi, qi]
                n_ref = reference_n(quant[row_of, :, j], float(target), k)
                # exact rule on the reference fit, grid rule on the project fit
                n_exact_ref, _ = n_star(ref[row_of, 0], ref[row_of, 1], float(target), float(delta), max_N, k)
                n_exact_proj, _ = n_star(np.asarray(proj.mu)[row_of], np.asarray(proj.sigma)[row_of], float(target),
                                         float(delta), max_N, k)
                inconsistent += int((n_exact_proj != n_proj).sum())  # replay vs n_star on fit_truncnorm
                n_grid_proj = reference_n(quant_proj[row_of, :, j], float(target), k)
                same = n_ref == n_proj
                agree_all += int(same.sum())
                n_all += same.size
                for p in np.flatnonzero(~same):
                    row = row_of[p]
                    if n_exact_ref[p] == n_proj[p]:  # the fits give the same exact N: the grid differs
                        cat = ("grid: normaliser underflow (NaN CDF -> max_N)" if broken[row] else
                               "grid: 1000-point discretisation")
                    elif n_ref[p] == n_exact_ref[p]:  # the grid is exact on its fit: the fits differ
                        cat = ("fit: reference mu outside the project's [-1, 2] (bounded fit)" if mu_out[row] else
                               "fit: reference sigma below the project's 1e-3" if sigma_low[row] else
                               "fit: reference L-BFGS-B stopped at a higher objective" +
                               (" (project mu on its bound)" if proj_at_mu_bound[row] else "")
                               if obj_ref[row] > obj_proj[row] + 1e-7 else
                               "fit: project fit at a higher objective" if obj_proj[row] > obj_ref[row] + 1e-7 else
                               "fit: same objective, other parameters")
                    else:
                        cat = "fit and grid both"
                    if cat.startswith("grid") and n_grid_proj[p] != n_ref[p] and not broken[row]:
                        cat += " (fits differ too)"
                    misses[cat] = misses.get(cat, 0) + 1
                # outcomes: project (its N, answered-only) vs reference (its N, non-empty text)
                sel_ref = np.array([orders[o, q, reference_select(data.scores[q, orders[o, q, :n]], empty[q, orders[o, q, :n]])]
                                    for o, q, n in zip(oi, qi, n_ref)])
                sel_mix = np.array([orders[o, q, reference_select(data.scores[q, orders[o, q, :n]], empty[q, orders[o, q, :n]])]
                                    for o, q, n in zip(oi, qi, n_proj)])
                acc["project"].append(float(r.correct[oi, qi].mean()))
                acc["reference"].append(float(correct[qi, sel_ref].mean()))
                acc["project_N_reference_selection"].append(float(correct[qi, sel_mix].mean()))
                ref_tok = np.array([data.tokens[q, orders[o, q, :n]].sum() for o, q, n in zip(oi, qi, n_ref)])
                toks["project"].append(float(r.tokens[oi, qi].mean()))
                toks["reference"].append(float(ref_tok.mean()))
                res["settings"].append({"target": float(target), "delta": float(delta), "agree": float(same.mean()),
                                        "mean_n_project": float(n_proj.mean()), "mean_n_reference": float(n_ref.mean())})
        if k == 3:  # optscale-0 at its defaults (s* = 0.8, delta = 0.1, k = 3)
            d = make_policy("optscale-0").params
            r = replay(make_policy("optscale-0"), data, orders, max_N=max_N, caches=caches)
            j = int(np.argmin(np.abs(deltas - d["delta"])))
            q_def = quant[row_of, :, j] if deltas[j] == d["delta"] else \
                reference_quantiles(ref[:, 0], ref[:, 1], np.array([d["delta"]]), max_N)[row_of, :, 0]
            per_order = r.correct.mean(axis=1)  # accuracy of each replay order (order 0: the file's)
            res["defaults"] = {"target": d["target"], "delta": d["delta"],
                               "agree": float((reference_n(q_def, d["target"], 3) == r.n[oi, qi]).mean()),
                               "mean_n": float(r.n[oi, qi].mean()), "accuracy_order0": float(per_order[0]),
                               "accuracy_orders_mean": float(per_order.mean()),
                               "accuracy_orders_range": (float(per_order.min()), float(per_order.max()))}
        res["agreement"] = agree_all / n_all
        res["replay_vs_n_star_mismatches"] = inconsistent
        res["decisions"] = n_all
        res["misses"] = dict(sorted(misses.items(), key=lambda kv: -kv[1]))
        res["accuracy"] = {k2: float(np.mean(v)) for k2, v in acc.items()}
        res["tokens"] = {k2: float(np.mean(v)) for k2, v in toks.items()}
        out["ks"][k] = res
    out["cpu_s"] = time.process_time() - t0
    return out


def report(r: dict) -> None:
    print(f"\n== {r['dataset']} by {r['scorer']}: {r['questions']} questions x {r['orders']} orders, first {r['pairs']} "
          f"(order, question) pairs; {r['empty_texts']} empty texts, {r['no_answer']} samples without an answer; "
          f"s* grid {r['targets']}, delta grid {r['deltas']} ({r['cpu_s']:.0f} s CPU)")
    print(f"   selection rule, BoN@16: answered-only {r['bon_at_max'][0]:.4f} vs non-empty text {r['bon_at_max'][1]:.4f} "
          f"(diff {r['bon_at_max'][0] - r['bon_at_max'][1]:+.4f}); BoN@N mean over N=1..16: "
          f"{r['bon_mean_over_N'][0]:.4f} vs {r['bon_mean_over_N'][1]:.4f} "
          f"({r['bon_mean_over_N'][0] - r['bon_mean_over_N'][1]:+.4f})")
    print(f"   answers not from a \\boxed{{}} (no answer for the reference's extraction): {r['answered_not_boxed']} of "
          f"{r['samples']} samples")
    print(f"   the reference's fixed s* panel {list(REFERENCE_TARGETS)} (with delta {list(REFERENCE_PERCENTILES)}) "
          f"sits at these quantiles of the pool's scores: "
          f"{[round(x, 3) for x in r['reference_panel_ranks']]}")
    for k, res in r["ks"].items():
        print(f"   k={k}: N agrees on {res['agreement']:.2%} of {res['decisions']} decisions "
              f"({len(res['settings'])} (s*, delta) settings x {r['pairs']} pairs); {res['fits']} distinct fits; "
              f"reference mu max {res['max_ref_mu']:.1f}, > 2 in {res['ref_mu_above_2']:.1%} of fits, "
              f"sigma < 1e-3 in {res['ref_sigma_below_1e-3']:.1%}; optscale-0's N = n_star(fit_truncnorm) except "
              f"{res['replay_vs_n_star_mismatches']} decisions")
        for cat, c in res["misses"].items():
            print(f"      miss: {cat}: {c} ({c / res['decisions']:.2%})")
        if "defaults" in res:
            d = res["defaults"]
            print(f"      at optscale-0's defaults (s*={d['target']}, delta={d['delta']}, k=3): {d['agree']:.2%} "
                  f"(mean N {d['mean_n']:.2f}); accuracy in the file's order {d['accuracy_order0']:.4f}, mean over "
                  f"{r['orders']} orders {d['accuracy_orders_mean']:.4f}, range {d['accuracy_orders_range'][0]:.4f}-"
                  f"{d['accuracy_orders_range'][1]:.4f}")
        worst = min(res["settings"], key=lambda s: s["agree"])
        print(f"      lowest setting: s*={worst['target']}, delta={worst['delta']}: {worst['agree']:.2%} "
              f"(mean N project {worst['mean_n_project']:.2f}, reference {worst['mean_n_reference']:.2f})")
        a, t = res["accuracy"], res["tokens"]
        print(f"      accuracy (mean over settings): project {a['project']:.4f}, reference {a['reference']:.4f}, "
              f"project N with the reference's selection {a['project_N_reference_selection']:.4f} "
              f"(selection effect {a['project'] - a['project_N_reference_selection']:+.4f}); "
              f"tokens project {t['project']:.0f}, reference {t['reference']:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu-1.5b")
    ap.add_argument("--pairs", type=int, default=5000, help="(order, question) pairs per pool")
    ap.add_argument("--ks", default="3", help="comma-separated peek sizes k (the reference used 3 and 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the replay orders")
    a = ap.parse_args()
    cfg = load_config(a.profile)
    ks = [int(x) for x in a.ks.split(",")]
    for dataset, scorer in POOLS:
        report(run_pool(cfg, dataset, scorer, a.pairs, ks, a.seed))


if __name__ == "__main__":
    main()
