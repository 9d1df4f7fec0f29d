"""How good must the verifier be? A verifier-quality sweep on SEMI-SYNTHETIC scores (notebook 10).

Every real committed pool keeps its correctness, answers (answer classes), token counts and
token confidences; only the scores are replaced, by i.i.d. draws of a controlled
within-question AUROC, and every policy is replayed on them with notebook 05's cross-fitted
protocol (:func:`optscale.evaluation.runner.evaluate_config`, :func:`~optscale.evaluation.protocol.savings_table`).

Score model (labelled ``scores = "semi-synthetic (binormal)"`` in every table and caption):

- **Binormal latent.** ``z[q, i] = d * correct[q, i] + eps[q, i] + tau * h[q]`` with
  ``eps ~ N(0, 1)`` i.i.d., so within a question a correct sample outscores a wrong one with
  probability ``AUROC = Phi(d / sqrt(2))``, i.e. ``d = sqrt(2) * Phi^-1(AUROC)``
  (:func:`binormal_separation`). Given the question, the scores are i.i.d. across samples, as
  OptScale assumes.
- **Per-question shift** ``h[q]`` (:data:`SHIFT_MODES`): ``"difficulty"``: the standardized
  probit of the question's pass rate ``(k + 1/2) / (n + 1)`` (a PRM scores a hard question's
  samples lower, right or wrong); ``"independent"``: i.i.d. ``N(0, 1)`` per question, unrelated
  to difficulty (so the difference between the two shows how much OptScale's allocation owes to
  scores that track difficulty).
- **Shift scale** ``tau`` (:func:`calibrate_shift_scale`): the smallest ``tau >= 0`` whose
  between-question share of the (rank-probit) score variance equals that of the paper's PRM
  scores on the same benchmark (``tau = 0`` when the correctness term alone already exceeds it).
- **Shape** (:func:`quantile_map`): ``z`` is mapped into (0, 1) by pooled quantile mapping onto
  the paper's PRM scores of the same benchmark (:func:`paper_score_reference`): the synthetic
  pool's marginal score distribution equals the paper's. A monotone map leaves the
  within-question AUROC unchanged. The paper's scores are not released; they are rebuilt as the
  64 quantiles ``(j - 1/2) / 64`` of each question's truncated normal on [0, 1] with the
  authors' ``full_mle_mu`` / ``full_mle_sigma`` (``reference/fits``, MLE on all 64 PRM scores).
  Fits that diverged (``mu >> 1``) are kept: a truncated normal with ``mu`` far above 1 is the
  exponential-like pile-up near 1 the PRM produced, and scipy evaluates its quantiles stably.
  The paper's BoN curves (``reference/bon_curves``) give no per-question correctness, so they
  cannot pin the AUROC; :func:`sweep_calibration` lists them beside the sweep's BoN curve ends
  (BoN@1, BoN@n) for comparison only.

Seeds: the draws of one (pool set, benchmark, seed) are shared by every AUROC level and both
shift modes (common random numbers: only ``d`` and ``tau`` change), so the curves against AUROC
are smooth; same seed, same table.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .curves import within_question_auroc
from .protocol import savings_table
from .replay import PoolArrays
from .runner import evaluate_config

__all__ = [
    "SCORES_LABEL",
    "SHIFT_MODES",
    "DEFAULT_AUROCS",
    "VOTE_POLICIES",
    "SCORE_FREE_POLICIES",
    "OPTSCALE_POLICIES",
    "PAPER_SAVINGS",
    "SWEEP_COLUMNS",
    "binormal_separation",
    "binormal_bon_expected",
    "paper_score_reference",
    "difficulty_shift",
    "calibrate_shift_scale",
    "quantile_map",
    "synthetic_scores",
    "synthetic_pool",
    "sweep_pool",
    "aggregate_sweep",
    "run_verifier_sweep",
    "sweep_sanity",
    "sweep_curves",
    "crossing_auroc",
    "break_even_aurocs",
    "sweep_model_check",
    "sweep_calibration",
    "verifier_sweep_caption",
    "sweep_overlay_caption",
]

SCORES_LABEL = "semi-synthetic (binormal)"
SHIFT_MODES: tuple[str, ...] = ("difficulty", "independent")
DEFAULT_AUROCS: tuple[float, ...] = (0.50, 0.60, 0.70, 0.80, 0.85, 0.90, 0.95, 0.99)
#: the paper's headline: OptScale uses at least 37% fewer tokens than BoN at equal accuracy
PAPER_SAVINGS = 0.37
#: vote-based policies (the "best vote policy" of :func:`break_even_aurocs`)
VOTE_POLICIES: tuple[str, ...] = ("majority", "weighted-vote", "esc", "asc", "dsc", "consol", "optpo", "deepconf")
OPTSCALE_POLICIES: tuple[str, ...] = ("optscale-0", "optscale-t", "optscale-seq")
#: policies that never read a sample's score (with no predictor prior, as here: DSC then votes
#: on every question): replayed once per pool and shared by every AUROC level and seed
SCORE_FREE_POLICIES: tuple[str, ...] = ("majority", "esc", "asc", "dsc", "consol", "optpo", "deepconf", "oracle")
SWEEP_COLUMNS: tuple[str, ...] = (
    "pool_set", "benchmark", "auroc_target", "shift_mode", "policy", "scores", "auroc_measured", "acc_minus_bon",
    "acc_minus_bon_lo", "acc_minus_bon_hi", "tokens_saved", "tokens_saved_lo", "tokens_saved_hi", "non_inferior",
    "bon_acc", "single_acc", "pass_at_n",
)
_REF_QUANTILES = 64  # the paper's pool size per question


# ---------------------------------------------------------------------------------------------
# The score model
# ---------------------------------------------------------------------------------------------
def binormal_separation(auroc: float) -> float:
    """``d`` of the binormal model with within-question AUROC ``auroc``: ``sqrt(2) * Phi^-1(auroc)``."""
    a = float(auroc)
    if not 0.5 <= a < 1.0:
        raise ValueError(f"AUROC target {auroc!r} must be in [0.5, 1)")
    return math.sqrt(2.0) * float(stats.norm.ppf(a))


def binormal_bon_expected(correct: np.ndarray, answered: np.ndarray, auroc: float) -> np.ndarray:
    """(questions,) the expected Best-of-n accuracy of each question under the binormal model at
    within-question ``auroc``: the chance that the best of its correct samples outscores every
    answered wrong one, ``int k phi(x - d) Phi(x - d)^(k-1) Phi(x)^m dx`` (``k`` correct, ``m``
    answered wrong samples; BoN never picks an unanswered sample when another has an answer, and
    the per-question shift cancels). At AUROC 0.5 this is the accuracy among answered samples."""
    c = np.asarray(correct, dtype=bool)
    a = np.asarray(answered, dtype=bool) | c
    k = c.sum(1).astype(float)
    m = (a & ~c).sum(1).astype(float)
    d = binormal_separation(auroc)
    x = np.linspace(-9.0, d + 9.0, 6001)
    lc = stats.norm.logcdf(x - d)
    lw = stats.norm.logcdf(x)
    lpdf = stats.norm.logpdf(x - d)
    with np.errstate(divide="ignore", invalid="ignore"):
        dens = np.exp(np.log(np.maximum(k, 1))[:, None] + lpdf[None, :] + (k[:, None] - 1) * lc[None, :]
                      + m[:, None] * lw[None, :])
    p = np.trapezoid(dens, x, axis=1) if hasattr(np, "trapezoid") else np.trapz(dens, x, axis=1)
    return np.where(k == 0, 0.0, np.where(m == 0, 1.0, np.clip(p, 0.0, 1.0)))


def paper_score_reference(benchmark: str, data_dir: str | Path | None = None) -> np.ndarray:
    """(questions, 64) the paper's PRM scores of ``benchmark`` (a workbook name, e.g. ``"gsm8k"``)
    rebuilt from the released per-question fits: the quantiles ``(j - 1/2) / 64`` of the truncated
    normal on [0, 1] with ``full_mle_mu`` / ``full_mle_sigma`` of ``reference/fits/{DS}_peek20.csv``
    (the full-pool MLE is the same in every peek file)."""
    from .paper import PAPER_DATASETS
    from .paper_tokens import load_paper_fits

    if benchmark not in PAPER_DATASETS:
        raise ValueError(f"no paper reference for benchmark {benchmark!r}; known: {sorted(PAPER_DATASETS)}")
    fits = load_paper_fits(data_dir, PAPER_DATASETS[benchmark], 20)
    mu = fits["full_mle_mu"].to_numpy(float)[:, None]
    sigma = fits["full_mle_sigma"].to_numpy(float)[:, None]
    u = (np.arange(_REF_QUANTILES) + 0.5) / _REF_QUANTILES
    ref = stats.truncnorm.ppf(u[None, :], (0.0 - mu) / sigma, (1.0 - mu) / sigma, loc=mu, scale=sigma)
    bad = ~np.isfinite(ref)
    if bad.any():
        q = int(np.argmax(bad.any(1)))
        raise ValueError(f"reference/fits/{PAPER_DATASETS[benchmark]}_peek20.csv: row {q}: full_mle_mu="
                         f"{mu[q, 0]!r}, full_mle_sigma={sigma[q, 0]!r} give non-finite quantiles")
    return np.clip(ref, 0.0, 1.0)


def _rank_probit(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks of ``x`` (any shape)."""
    flat = np.asarray(x, dtype=float).ravel()
    return stats.norm.ppf(stats.rankdata(flat) / (flat.size + 1)).reshape(np.shape(x))


def between_share(x: np.ndarray) -> float:
    """Between-question share of the variance of the rank-probit scores of (questions, n) ``x``."""
    w = _rank_probit(x)
    total = float(np.var(w))
    return float(np.var(w.mean(1)) / total) if total > 0 else 0.0


def difficulty_shift(correct: np.ndarray) -> np.ndarray:
    """(questions,) standardized probit of each question's pass rate ``(k + 1/2) / (n + 1)``
    (zeros when every question has the same pass rate)."""
    c = np.asarray(correct, dtype=bool)
    p = (c.sum(1) + 0.5) / (c.shape[1] + 1.0)
    h = stats.norm.ppf(p)
    sd = float(h.std())
    return (h - h.mean()) / sd if sd > 0 else np.zeros_like(h)


def calibrate_shift_scale(base: np.ndarray, shift: np.ndarray, target_share: float, upper: float = 50.0) -> float:
    """The smallest ``tau >= 0`` with ``between_share(base + tau * shift[:, None]) = target_share``
    (``base``: (questions, n) the latent without the shift); 0 when ``tau = 0`` already reaches
    it, ``upper`` when even that does not."""
    f = lambda tau: between_share(base + tau * shift[:, None]) - target_share  # noqa: E731
    if f(0.0) >= 0 or not np.any(shift):
        return 0.0
    if f(upper) <= 0:
        return float(upper)
    return float(optimize.brentq(f, 0.0, upper, xtol=1e-4))


def quantile_map(z: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Monotone map of ``z`` (any shape) onto the empirical distribution of ``reference``: the
    pooled rank ``(r - 1/2) / m`` of each value, read off the reference quantile function
    (linear between its distinct sorted values, so no two distinct latents tie); clipped to
    [1e-6, 1 - 1e-6]."""
    ref = np.unique(np.asarray(reference, dtype=float).ravel())
    flat = np.asarray(z, dtype=float).ravel()
    u = (stats.rankdata(flat) - 0.5) / flat.size
    s = np.interp(u, (np.arange(ref.size) + 0.5) / ref.size, ref)
    return np.clip(s, 1e-6, 1 - 1e-6).reshape(np.shape(z))


def _draw_seed(pool_set: str, dataset: str, seed: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32(f"{pool_set}/{dataset}".encode())])


def synthetic_scores(correct: np.ndarray, auroc: float, shift_mode: str, reference: np.ndarray,
                     seed: int | np.random.SeedSequence, target_share: float | None = None) -> tuple[np.ndarray, dict]:
    """(questions, n) semi-synthetic scores in (0, 1) for the (questions, n) bool ``correct``:
    the binormal latent at within-question ``auroc`` with the ``shift_mode`` shift, its scale
    calibrated to ``target_share`` (default: the between-question share of ``reference``), mapped
    onto ``reference`` (:func:`quantile_map`). Returns (scores, info: d, tau, between_share)."""
    if shift_mode not in SHIFT_MODES:
        raise ValueError(f"shift_mode {shift_mode!r}: use one of {SHIFT_MODES}")
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 2:
        raise ValueError(f"correct must be (questions, n), got shape {c.shape}")
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(c.shape)
    g = rng.standard_normal(c.shape[0])  # drawn in both modes, so the streams stay aligned
    shift = difficulty_shift(c) if shift_mode == "difficulty" else g
    d = binormal_separation(auroc)
    share = between_share(reference) if target_share is None else float(target_share)
    base = d * c + eps
    tau = calibrate_shift_scale(base, shift, share)
    z = base + tau * shift[:, None]
    return quantile_map(z, reference), {"d": d, "tau": tau, "between_share": between_share(z),
                                        "between_share_target": share}


def synthetic_pool(data: PoolArrays, auroc: float, shift_mode: str, reference: np.ndarray, seed: int,
                   pool_set: str = "", target_share: float | None = None) -> PoolArrays:
    """``data`` with its scores replaced by :func:`synthetic_scores` (no predictor prior; the
    description and ``meta`` say semi-synthetic). The draws depend on (pool_set, dataset, seed)
    only, not on ``auroc`` or ``shift_mode``."""
    scores, info = synthetic_scores(data.correct, auroc, shift_mode, reference,
                                    _draw_seed(pool_set or str(data.meta.get("pool_name")), data.dataset, seed),
                                    target_share)
    label = f"{SCORES_LABEL}, AUROC {auroc:g}, shift {shift_mode}, seed {seed}"
    meta = {k: v for k, v in data.meta.items() if k != "population_prior"}
    meta.update({"scorer": label, "real_scorer": data.meta.get("scorer"), "synthetic": info, "notes": []})
    desc = data.description.replace(f"scorer {data.meta.get('scorer')}", f"scores {label}")
    return dataclasses.replace(data, scores=scores, prior=None, prior_source="none", description=desc, meta=meta)


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
def _sweep_settings(config: Any) -> dict[str, Any]:
    e = config.evaluation
    return {"aurocs": tuple(getattr(e, "sweep_aurocs", DEFAULT_AUROCS)),
            "seeds": int(getattr(e, "sweep_seeds", 3)),
            "shift_modes": tuple(getattr(e, "sweep_shift_modes", SHIFT_MODES)),
            "pool_sets": tuple(getattr(e, "sweep_pool_sets", ())),
            "questions": int(getattr(e, "sweep_questions", 0)),
            "orders": int(getattr(e, "sweep_orders", 0)) or e.orders,
            "tune_orders": int(getattr(e, "sweep_tune_orders", 0)) or e.tune_orders,
            "jobs": int(getattr(e, "sweep_jobs", 1))}


def _check_levels(aurocs: Sequence[float], seeds: int, shift_modes: Sequence[str]) -> None:
    from ..config import ConfigError

    for a in aurocs:
        if not isinstance(a, (int, float)) or not 0.5 <= float(a) < 1.0:
            raise ConfigError(f"evaluation.sweep_aurocs: {a!r} is not an AUROC in [0.5, 1)")
    if not aurocs:
        raise ConfigError("evaluation.sweep_aurocs: give at least one AUROC level")
    if int(seeds) < 1:
        raise ConfigError(f"evaluation.sweep_seeds={seeds!r}: must be >= 1")
    bad = [m for m in shift_modes if m not in SHIFT_MODES]
    if bad or not shift_modes:
        raise ConfigError(f"evaluation.sweep_shift_modes={list(shift_modes)!r}: use one or more of {list(SHIFT_MODES)}")


def _sweep_config(config: Any, orders: int, tune_orders: int) -> Any:
    return config.replace({"evaluation": {"protocol": "crossfit", "orders": int(orders),
                                          "tune_orders": int(tune_orders)}})


def _savings_rows(ev, names: Sequence[str], config: Any) -> pd.DataFrame:
    e = config.evaluation
    s = savings_table(ev, e.bootstrap_reps, e.ci_level, e.seed, e.margin, e.noninferiority_margin,
                      e.noninferiority_level)
    return s[s["policy"].isin(names)]


def sweep_pool(data: PoolArrays, config: Any, reference: np.ndarray, pool_set: str,
               aurocs: Sequence[float] = DEFAULT_AUROCS, seeds: Iterable[int] = (0, 1, 2),
               shift_modes: Sequence[str] = SHIFT_MODES, policies: Sequence[str] | None = None,
               score_free: dict | None = None, target_share: float | None = None) -> pd.DataFrame:
    """Per-seed sweep rows of one pool: for every (seed, shift mode, AUROC level) the scores of
    ``data`` replaced (:func:`synthetic_pool`) and every policy of ``policies`` (default: the
    configured ones, ``evaluation.policies`` or notebook 05's defaults) evaluated with
    :func:`evaluate_config` (``config`` as given: use a cross-fitted one). The policies in
    :data:`SCORE_FREE_POLICIES` are replayed once (``score_free``: their ReplayResults, computed
    here when None) and joined to each level's evaluation before :func:`savings_table`, which gives
    the same numbers as replaying them at every level (tested). One row per
    (seed, shift_mode, auroc_target, policy)."""
    from .protocol import DEFAULT_POLICIES

    names = [p for p in (policies or config.evaluation.policies or DEFAULT_POLICIES)]
    if "bon" not in names:
        names = ["bon"] + names
    free = [p for p in names if p in SCORE_FREE_POLICIES]
    scored = [p for p in names if p not in SCORE_FREE_POLICIES]
    if free and score_free is None:
        score_free = evaluate_config(data, config, policies=["bon"] + free, verbose=False).results
    correct = data.correct
    single = float(correct.mean())
    answered = data.classes >= 0
    pass_n = float(correct.any(1).mean())
    # at chance BoN@n picks one random answered sample per question: its expected accuracy (the
    # accuracy among answered samples) and the standard error of one seed's BoN@n
    pq = binormal_bon_expected(correct, answered, 0.5)
    single_answered = float(pq.mean())
    pick_se = float(np.sqrt((pq * (1 - pq)).sum()) / len(pq))
    g = data.meta.get("generator", {}) or {}
    rows = []
    for seed in seeds:
        for mode in shift_modes:
            for a in aurocs:
                syn = synthetic_pool(data, float(a), mode, reference, int(seed), pool_set, target_share)
                per_q = within_question_auroc(syn.scores, syn.correct)
                bon_expected = float(binormal_bon_expected(correct, answered, float(a)).mean())
                ev = evaluate_config(syn, config, policies=scored, verbose=False)
                if free:
                    ev = dataclasses.replace(ev, results={**ev.results, **{k: v for k, v in score_free.items() if k in free}})
                s = _savings_rows(ev, names, config)
                info = syn.meta["synthetic"]
                for r in s.itertuples():
                    rows.append({
                        "pool_set": pool_set, "benchmark": data.dataset, "generator": g.get("model", "?"), "n": data.n,
                        "sampling_seed": data.meta.get("seed"), "questions": data.n_questions,
                        "question_set_scorer": data.meta.get("scorer"), "auroc_target": float(a),
                        "shift_mode": mode, "seed": int(seed), "policy": r.policy, "scores": SCORES_LABEL,
                        "auroc_measured": float(np.nanmean(per_q)) if np.isfinite(per_q).any() else float("nan"),
                        "auroc_questions": int(np.isfinite(per_q).sum()),
                        "acc": r.accuracy, "acc_minus_bon": r.acc_diff, "acc_minus_bon_lo": r.acc_diff_lo,
                        "acc_minus_bon_hi": r.acc_diff_hi, "ni_lower": r.ni_lower, "non_inferior": bool(r.non_inferior),
                        "tokens": r.tokens, "bon_tokens": r.bon_tokens, "tokens_saved": r.saved,
                        "tokens_saved_lo": r.saved_lo, "tokens_saved_hi": r.saved_hi, "bon_acc": r.bon_accuracy,
                        "single_acc": single, "single_acc_answered": single_answered, "pass_at_n": pass_n,
                        "bon_expected": bon_expected, "bon_pick_se": pick_se,
                        "binormal_d": info["d"], "shift_scale": info["tau"], "between_share": info["between_share"],
                        "between_share_paper": info["between_share_target"], "protocol": r.protocol,
                        "orders": config.evaluation.orders, "tune_orders": config.evaluation.tune_orders,
                    })
    return pd.DataFrame(rows)


def aggregate_sweep(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per (pool_set, benchmark, shift_mode, auroc_target, policy): means over seeds of
    the per-seed point estimates and of the per-seed cross-fitted CI bounds (``*_lo`` / ``*_hi``:
    the mean of each seed's two-sided bootstrap CI over questions, i.e. the question-sampling
    uncertainty of one pool of this size), the seed-to-seed standard deviation (``*_seed_sd``),
    ``non_inferior_share`` (share of seeds non-inferior) and ``non_inferior`` (more than half of
    the seeds). Columns :data:`SWEEP_COLUMNS` first."""
    if not len(per_seed):
        return pd.DataFrame(columns=list(SWEEP_COLUMNS))
    keys = ["pool_set", "benchmark", "shift_mode", "auroc_target", "policy"]
    first = ["generator", "n", "sampling_seed", "questions", "scores", "protocol", "orders", "tune_orders"]
    means = ["auroc_measured", "acc", "acc_minus_bon", "acc_minus_bon_lo", "acc_minus_bon_hi", "ni_lower",
             "tokens", "bon_tokens", "tokens_saved", "tokens_saved_lo", "tokens_saved_hi", "bon_acc", "single_acc",
             "single_acc_answered", "pass_at_n", "bon_expected", "bon_pick_se", "binormal_d", "shift_scale", "between_share", "between_share_paper"]
    grp = per_seed.groupby(keys, sort=False)
    out = grp[means].mean()
    out = out.join(grp[first].first())
    out["acc_minus_bon_seed_sd"] = grp["acc_minus_bon"].std(ddof=1)
    out["tokens_saved_seed_sd"] = grp["tokens_saved"].std(ddof=1)
    out["bon_acc_seed_sd"] = grp["bon_acc"].std(ddof=1)
    out["non_inferior_share"] = grp["non_inferior"].mean()
    out["non_inferior"] = out["non_inferior_share"] > 0.5
    out["seeds"] = grp["seed"].nunique()
    out["ci"] = ("mean over seeds of each seed's two-sided cross-fitted bootstrap CI over questions; "
                 "seed spread in *_seed_sd")
    out = out.reset_index()
    rest = [c for c in out.columns if c not in SWEEP_COLUMNS]
    return out[list(SWEEP_COLUMNS) + rest]


def _sweep_task(args):
    data, config, reference, pool_set, aurocs, seed, shift_modes, policies, score_free, share = args
    return sweep_pool(data, config, reference, pool_set, aurocs, [seed], shift_modes, policies, score_free, share)


def _pool_for_sweep(config: Any, pool_set: str, dataset: str, cache: Path | None, questions: int):
    """PoolArrays of one committed pool (any one scorer: its scores are replaced; the configured
    primary when the pool has it, else the scorer with the fewest missing scores), first
    ``questions`` questions (0 = all), or (None, note)."""
    from ..data.pools import pool_path, read_pool
    from .replay import pool_arrays

    cps = config.replace({"pools": {"pool_name": pool_set}})
    path = pool_path(cps, dataset)
    if not path.is_file():
        return None, f"{pool_set}/{dataset}: no pool at {path}; skipped"
    pool = read_pool(path, allow_partial_scores=True)
    if not pool.scorers:
        return None, f"{pool_set}/{dataset}: pool has no score column; skipped"
    primary = config.scoring.primary_for(dataset)
    nan = {sc: int(pool.df[f"score__{sc}"].isna().sum()) for sc in pool.scorers}
    scorer = primary if primary in nan and nan[primary] == min(nan.values()) else min(nan, key=nan.get)
    data = pool_arrays(pool, scorer, config.evaluation.max_N, cache, config.evaluation.deepconf_window, verbose=False)
    if questions and data.n_questions > questions:
        data = data.subset(np.arange(questions))
    if data.n_questions < 4:
        return None, f"{pool_set}/{dataset}: {data.n_questions} question(s); skipped"
    return data, None


def run_verifier_sweep(config: Any, run_dir: str | Path | None = None, pool_sets: Sequence[str] | None = None,
                       aurocs: Sequence[float] | None = None, seeds: int | None = None,
                       shift_modes: Sequence[str] | None = None, policies: Sequence[str] | None = None,
                       jobs: int | None = None, verbose: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The sweep over every committed pool of ``pool_sets`` (default ``evaluation.sweep_pool_sets``,
    empty = ``pools.pool_name``) and ``config.data.benchmarks``: AUROC levels ``aurocs`` (default
    ``evaluation.sweep_aurocs``), seeds ``0..seeds-1`` (``evaluation.sweep_seeds``), shift modes
    (``evaluation.sweep_shift_modes``), cross-fitted with ``evaluation.sweep_orders`` /
    ``sweep_tune_orders`` orders (0 = ``orders`` / ``tune_orders``, as notebook 05), on the first
    ``evaluation.sweep_questions`` questions of each pool (0 = all), ``jobs`` worker processes
    (``evaluation.sweep_jobs``; the result does not depend on it). Returns (table =
    :func:`aggregate_sweep`, per-seed rows, notes)."""
    st = _sweep_settings(config)
    aurocs = tuple(st["aurocs"] if aurocs is None else aurocs)
    seeds = st["seeds"] if seeds is None else int(seeds)
    shift_modes = tuple(st["shift_modes"] if shift_modes is None else shift_modes)
    _check_levels(aurocs, seeds, shift_modes)
    sets = list(pool_sets if pool_sets is not None else (st["pool_sets"] or (config.pools.pool_name,)))
    jobs = max(1, int(st["jobs"] if jobs is None else jobs))
    cfg = _sweep_config(config, st["orders"], st["tune_orders"])
    cache = Path(run_dir) / "cache" if run_dir is not None else None
    from .protocol import DEFAULT_POLICIES

    names = list(policies or config.evaluation.policies or DEFAULT_POLICIES)
    notes: list[str] = []
    tasks = []
    for ps in sets:
        for ds in config.data.benchmarks:
            data, note = _pool_for_sweep(cfg, ps, ds, cache, st["questions"])
            if data is None:
                notes.append(note)
                continue
            reference = paper_score_reference(ds, config.data.data_dir)
            share = between_share(reference)
            free = [p for p in names if p in SCORE_FREE_POLICIES]
            score_free = evaluate_config(data, cfg, policies=["bon"] + free, verbose=False).results if free else {}
            if verbose:
                print(f"{ps}/{ds}: {data.n_questions} questions x {data.n}; paper between-question share {share:.3f}")
            for seed in range(seeds):
                tasks.append((data, cfg, reference, ps, aurocs, seed, shift_modes, names, score_free, share))
    if jobs > 1 and len(tasks) > 1:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=jobs)(delayed(_sweep_task)(t) for t in tasks)
    else:
        parts = [_sweep_task(t) for t in tasks]
    per_seed = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    table = aggregate_sweep(per_seed)
    if verbose and len(table):
        bon = table[table["policy"] == "bon"]
        for r in bon.itertuples():
            print(f"  {r.pool_set}/{r.benchmark} {r.shift_mode:11s} AUROC {r.auroc_target:.2f} (measured "
                  f"{r.auroc_measured:.3f}): BoN@{r.n} {r.bon_acc:.3f}, single {r.single_acc:.3f}, pass@{r.n} {r.pass_at_n:.3f}")
    return table, per_seed, notes


# ---------------------------------------------------------------------------------------------
# What the table answers
# ---------------------------------------------------------------------------------------------
def sweep_sanity(table: pd.DataFrame, low: float = 0.5, high: float = 0.99) -> pd.DataFrame:
    """The sanity rows: at AUROC ``low`` BoN@n should be the mean single-sample accuracy (exactly:
    the accuracy among answered samples, since BoN never picks an unanswered sample when another
    has an answer) and at ``high`` close to pass@n. One row per (pool_set, benchmark, shift_mode,
    level) with BoN@n (and its seed spread), single, single among answered, pass@n,
    ``bon_minus_expected`` (BoN minus single-answered at ``low``, minus pass@n at ``high``),
    ``bon_expected`` (the binormal model's BoN@n, :func:`binormal_bon_expected`) and ``sanity_ok``:
    at ``low`` within 3 standard errors of a random pick, at ``high`` no further below pass@n than
    the model's own gap plus 3 standard errors."""
    b = table[(table["policy"] == "bon") & table["auroc_target"].round(6).isin([round(low, 6), round(high, 6)])].copy()
    if not len(b):
        return pd.DataFrame()
    at_low = np.isclose(b["auroc_target"], low)
    b["expected"] = np.where(at_low, "single-sample accuracy (among answered samples)", "pass@n")
    b["bon_minus_expected"] = np.where(at_low, b["bon_acc"] - b["single_acc_answered"], b["bon_acc"] - b["pass_at_n"])
    # one seed's BoN@n at chance is one random answered sample per question; over seeds its SE shrinks
    b["bon_chance_se"] = b["bon_pick_se"] / np.sqrt(b["seeds"])
    b["bon_minus_model"] = b["bon_acc"] - b["bon_expected"]
    b["sanity_ok"] = np.where(at_low, (b["bon_minus_expected"]).abs() <= 3 * b["bon_chance_se"],
                              b["bon_minus_expected"] >= -(b["pass_at_n"] - b["bon_expected"]) - 3 * b["bon_pick_se"])
    cols = ["pool_set", "benchmark", "shift_mode", "auroc_target", "auroc_measured", "n", "questions", "bon_acc",
            "bon_acc_seed_sd", "single_acc", "single_acc_answered", "pass_at_n", "expected", "bon_minus_expected",
            "bon_expected", "bon_minus_model", "bon_chance_se", "sanity_ok", "seeds", "scores"]
    return b[cols].reset_index(drop=True)


def sweep_curves(table: pd.DataFrame, value: str = "tokens_saved") -> pd.DataFrame:
    """Per policy ``value`` (``tokens_saved`` or ``acc_minus_bon``) against the AUROC target: rows
    (pool_set, benchmark, shift_mode, policy), one column per AUROC level
    (:func:`aggregate_sweep`'s ``non_inferior`` says which cells are non-inferior)."""
    return table.pivot_table(index=["pool_set", "benchmark", "shift_mode", "policy"], columns="auroc_target",
                             values=value, sort=False)


def crossing_auroc(auroc: Sequence[float], value: Sequence[float], threshold: float | Sequence[float] = 0.0,
                   valid: Sequence[bool] | None = None) -> tuple[float | None, str]:
    """The AUROC above which ``value > threshold`` holds at every level up to the last one, with
    ``valid`` (e.g. non-inferiority) as a condition; linear interpolation of ``value - threshold``
    between the last level where it fails and the first where it holds, when ``value`` is valid at
    both; otherwise that first level. Returns (AUROC or None when it never holds at the top
    level, how it was found)."""
    x = np.asarray(auroc, dtype=float)
    order = np.argsort(x)
    x = x[order]
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), np.shape(value))[order]
    diff = np.asarray(value, dtype=float)[order] - thr
    ok = np.isfinite(diff) & (diff > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)[order]
    if not len(x) or not ok[-1]:
        return None, "never (not at the highest level swept)"
    k = len(x) - 1
    while k > 0 and ok[k - 1]:
        k -= 1
    if k == 0:
        return float(x[0]), f"already at the lowest level swept ({x[0]:g})"
    v_prev_ok = np.isfinite(diff[k - 1]) and (valid is None or bool(np.asarray(valid, dtype=bool)[order][k - 1]))
    if v_prev_ok and diff[k] > diff[k - 1]:
        t = -diff[k - 1] / (diff[k] - diff[k - 1])
        return float(x[k - 1] + t * (x[k] - x[k - 1])), f"interpolated between {x[k - 1]:g} and {x[k]:g}"
    return float(x[k]), f"at level {x[k]:g} (the level below fails non-inferiority; not interpolated)"


def break_even_aurocs(table: pd.DataFrame, policies: Sequence[str] = OPTSCALE_POLICIES,
                      paper_savings: float = PAPER_SAVINGS) -> pd.DataFrame:
    """Per (pool_set, benchmark, shift_mode, policy): ``break_even_auroc``, the AUROC above which
    the policy is non-inferior to BoN@n and saves more tokens than the best vote policy that is
    non-inferior at the same level (:data:`VOTE_POLICIES`; BoN itself, 0 saved, when none is), and
    ``auroc_paper_savings``, the AUROC above which it is non-inferior and saves at least
    ``paper_savings`` (the paper's 37%); both by :func:`crossing_auroc`, None when never."""
    rows = []
    for (ps, ds, mode), g in table.groupby(["pool_set", "benchmark", "shift_mode"], sort=False):
        levels = np.sort(g["auroc_target"].unique())
        vote = g[g["policy"].isin(VOTE_POLICIES)]
        best, best_name = [], []
        for a in levels:
            v = vote[np.isclose(vote["auroc_target"], a) & vote["non_inferior"].astype(bool)]
            if len(v) and v["tokens_saved"].max() > 0:
                i = v["tokens_saved"].idxmax()
                best.append(float(v.loc[i, "tokens_saved"]))
                best_name.append(str(v.loc[i, "policy"]))
            else:
                best.append(0.0)
                best_name.append("bon (no vote policy non-inferior and saving)")
        # a pool where no question has both a correct and a wrong sample: the AUROC is undefined and
        # every policy is trivially as accurate as BoN
        undefined = "auroc_measured" in g and not np.isfinite(g["auroc_measured"].to_numpy(float)).any()
        for pol in policies:
            p = g[g["policy"] == pol].set_index("auroc_target").reindex(levels)
            if not len(p) or p["tokens_saved"].isna().all():
                continue
            ni = p["non_inferior"].fillna(False).astype(bool).to_numpy()
            saved = p["tokens_saved"].to_numpy(float)
            if undefined:
                why = "undefined: no question has both a correct and a wrong sample"
                be, be_how, pa, pa_how = None, why, None, why
            else:
                be, be_how = crossing_auroc(levels, saved, np.array(best), ni)
                pa, pa_how = crossing_auroc(levels, saved, paper_savings - 1e-12, ni)
            rows.append({"pool_set": ps, "benchmark": ds, "shift_mode": mode, "policy": pol,
                         "break_even_auroc": be, "break_even_how": be_how,
                         "auroc_paper_savings": pa, "paper_savings": paper_savings, "paper_savings_how": pa_how,
                         "tokens_saved_at_top": float(saved[-1]), "non_inferior_at_top": bool(ni[-1]),
                         "best_vote_at_top": best_name[-1], "best_vote_saved_at_top": best[-1],
                         "levels": ", ".join(f"{a:g}" for a in levels), "scores": SCORES_LABEL})
    return pd.DataFrame(rows)


def sweep_model_check(table: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """The model against reality: for each real (pool set, benchmark, scorer) point of
    :func:`optscale.evaluation.verifier_auroc.verifier_auroc_points`, the sweep's tokens saved and
    accuracy gap of the same policy on the same pool, linearly interpolated at the scorer's
    measured within-question AUROC (each shift mode), and whether each falls inside the real
    scorer's CI (``saved_lo..saved_hi``, ``acc_diff_lo..acc_diff_hi``); beside them the real
    scorer's BoN@n accuracy and the sweep's at the same AUROC (``real_bon_acc`` /
    ``predicted_bon_acc``): two scorers of one AUROC can pick their top sample very differently (a
    scorer that only finds the clearly wrong samples ranks well and picks badly), which moves the
    baseline every policy is measured against. A real AUROC outside the swept range gives NaN
    predictions and a note."""
    rows = []
    for r in points.itertuples():
        g = table[(table["pool_set"] == r.pool_set) & (table["benchmark"] == r.dataset) & (table["policy"] == r.policy)]
        for mode, m in g.groupby("shift_mode", sort=False):
            m = m.sort_values("auroc_target")
            x = m["auroc_measured"].to_numpy(float)
            inside = x.min() <= r.auroc_within <= x.max()
            pred_s = float(np.interp(r.auroc_within, x, m["tokens_saved"])) if inside else float("nan")
            pred_a = float(np.interp(r.auroc_within, x, m["acc_minus_bon"])) if inside else float("nan")
            pred_b = float(np.interp(r.auroc_within, x, m["bon_acc"])) if inside else float("nan")
            rows.append({
                "pool_set": r.pool_set, "benchmark": r.dataset, "scorer": r.scorer, "policy": r.policy,
                "auroc_within": r.auroc_within, "auroc_within_lo": r.auroc_within_lo, "auroc_within_hi": r.auroc_within_hi,
                "shift_mode": mode, "real_tokens_saved": r.saved, "real_tokens_saved_lo": r.saved_lo,
                "real_tokens_saved_hi": r.saved_hi, "predicted_tokens_saved": pred_s,
                "tokens_saved_inside_ci": bool(r.saved_lo <= pred_s <= r.saved_hi) if inside else None,
                "real_acc_minus_bon": r.acc_diff, "real_acc_minus_bon_lo": r.acc_diff_lo,
                "real_acc_minus_bon_hi": r.acc_diff_hi, "predicted_acc_minus_bon": pred_a,
                "acc_minus_bon_inside_ci": bool(r.acc_diff_lo <= pred_a <= r.acc_diff_hi) if inside else None,
                "real_bon_acc": float(r.bon_accuracy), "predicted_bon_acc": pred_b,
                "real_non_inferior": bool(r.non_inferior), "real_questions": getattr(r, "questions", None),
                "sweep_questions": int(m["questions"].iloc[0]) if "questions" in m else None,
                "note": "" if inside else f"real AUROC {r.auroc_within:.3f} outside the swept range "
                                          f"{x.min():.3f}-{x.max():.3f} (measured)",
                "scores": f"prediction: {SCORES_LABEL}; real: scorer {r.scorer}",
            })
    return pd.DataFrame(rows)


def sweep_calibration(table: pd.DataFrame, data_dir: str | Path | None = None) -> pd.DataFrame:
    """What the scores were calibrated to, per (pool_set, benchmark): the paper's between-question
    variance share and the synthetic one reached (median over levels, and its range), the shift
    scale range, and beside them the paper's BoN curve (BoN@1, BoN@n, BoN@64 from
    ``reference/bon_curves``) and the sweep's BoN@n at the lowest and highest level (the paper's
    curve has no per-question correctness, so it cannot pin the AUROC; comparison only)."""
    from .paper import PAPER_DATASETS
    from .paper_tokens import load_bon_curve

    rows = []
    for (ps, ds, mode), g in table[table["policy"] == "bon"].groupby(["pool_set", "benchmark", "shift_mode"], sort=False):
        g = g.sort_values("auroc_target")
        bon = load_bon_curve(data_dir, PAPER_DATASETS[ds]).set_index("N")["accuracy"]
        n = int(g["n"].iloc[0])
        rows.append({"pool_set": ps, "benchmark": ds, "shift_mode": mode, "paper_between_share": g["between_share_paper"].iloc[0],
                     "synthetic_between_share_median": g["between_share"].median(),
                     "synthetic_between_share_min": g["between_share"].min(),
                     "synthetic_between_share_max": g["between_share"].max(),
                     "shift_scale_min": g["shift_scale"].min(), "shift_scale_max": g["shift_scale"].max(),
                     "paper_bon_at_1": float(bon.get(1, np.nan)), "paper_bon_at_n": float(bon.get(n, np.nan)),
                     "paper_bon_at_64": float(bon.get(64, np.nan)), "n": n,
                     "sweep_single_acc": g["single_acc"].iloc[0], "sweep_pass_at_n": g["pass_at_n"].iloc[0],
                     "sweep_bon_at_n_lowest": g["bon_acc"].iloc[0], "sweep_bon_at_n_highest": g["bon_acc"].iloc[-1],
                     "lowest_level": g["auroc_target"].iloc[0], "highest_level": g["auroc_target"].iloc[-1],
                     "scores": SCORES_LABEL})
    return pd.DataFrame(rows)


def verifier_sweep_caption(table: pd.DataFrame, config: Any, notes: Sequence[str] = ()) -> str:
    """Caption of the sweep figure: semi-synthetic, the score model, the protocol and CIs, and
    every pool (pool set, generator, benchmark, n, sampling seed, questions)."""
    e = config.evaluation
    pools = []
    for (ps, ds), g in table.groupby(["pool_set", "benchmark"], sort=False):
        r = g.iloc[0]
        pools.append(f"{ps}/{ds} (generator {r['generator']}, n={int(r['n'])}, sampling seed {r['sampling_seed']}, "
                     f"{int(r['questions'])} questions)")
    seeds = int(table["seeds"].max()) if len(table) else 0
    orders = int(table["orders"].iloc[0]) if len(table) else e.orders
    tune = int(table["tune_orders"].iloc[0]) if len(table) else e.tune_orders
    skipped = f" Skipped: {'; '.join(notes)}." if notes else ""
    return (f"SEMI-SYNTHETIC scores (binormal model): each real pool keeps its correctness, answers and token counts; "
            f"its scores are replaced by i.i.d. binormal draws of the target within-question AUROC (x: the AUROC "
            f"measured on the draws), with a per-question shift (solid: following the question's pass rate; dotted: "
            f"independent of it) scaled to the paper's between-question score variance and quantile-mapped onto the "
            f"paper's PRM scores (rebuilt from its released truncated-normal fits). Every policy against Best-of-N "
            f"(N = min(max_N={e.max_N}, pool n)), two-fold cross-fitted (split seed {e.split_seed}, {orders} orders, "
            f"{tune} tuning orders), mean over {seeds} seed(s); bars/bands: mean of the per-seed {e.ci_level:.0%} "
            f"bootstrap CIs over questions; filled marker = non-inferior in most seeds (one-sided "
            f"{e.noninferiority_level:.0%} lower bound above -{e.noninferiority_margin:g}; shaded band). Black: the real "
            f"scorers' points ({e.auroc_policy}). No predictor prior. Pools: " + "; ".join(pools) + "." + skipped)


def sweep_overlay_caption(sweep: pd.DataFrame, config: Any) -> str:
    """The sentence notebook 06 appends to its verifier-AUROC caption for the sweep's grey curves
    ("" without a sweep)."""
    if sweep is None or not len(sweep):
        return ""
    seeds = int(sweep["seeds"].max())
    sets = ", ".join(dict.fromkeys(sweep["pool_set"]))
    return (f" Grey curves: SEMI-SYNTHETIC sweep ({SCORES_LABEL} scores of controlled within-question AUROC "
            f"{', '.join(f'{a:g}' for a in sorted(sweep['auroc_target'].unique()))}, x = AUROC measured on the draws) "
            f"on the same pools ({sets}): each pool's correctness, answers and tokens with its scores replaced; same "
            f"cross-fitted protocol ({int(sweep['orders'].iloc[0])} orders, {int(sweep['tune_orders'].iloc[0])} tuning "
            f"orders), mean over {seeds} seed(s), band = mean per-seed CI; solid: per-question shift following "
            f"difficulty, dotted: independent (optscale.evaluation.verifier_sweep, notebook 10).")
