"""The paper's OptScale token column rebuilt from the authors' released per-question fits.

OptScale's per-question budget ``N*`` depends only on the fitted score distribution, and the
authors released those fits (``reference/fits/{DS}_peek{k}.csv``: per question the MLE and MAP
truncated-normal parameters from the first ``k`` PRM scores, and ``full_mle_*`` from all of them)
together with the accuracy and mean tokens of every (target_score, percentile) setting of their
grid (``reference/optscale_grid/{DS}_{MLE,MAP}_{N}.json``) and the BoN curves
(``reference/bon_curves/{DS}.json``). Per-question token counts are *not* released. This module
recomputes ``N*`` per question with the workbook's bound and turns it into tokens two ways, so the
table says how much of the paper's token column the bound alone explains.

The decision rule
-----------------
The reference picks the smallest ``N`` whose max-of-``N`` score distribution has its
``percentile``-quantile at or above ``target_score``. For i.i.d. scores with CDF ``F`` the
``p``-quantile of the max of ``N`` is ``F^{-1}(p^{1/N})``, so the rule is ``F(s*)^N <= p``: the
workbook's :func:`optscale.theory.bounds.n_star` with ``s* = target_score`` and
``delta = percentile``, capped at ``N`` and floored at the peek ``k`` (the peeked samples are
spent anyway). The reference evaluates the quantile on a 1000-point grid; the closed form here
differs from that discretisation on 0.3-1.7% of (question, setting) pairs (measured on
AIME24, AMC23, MATH500 at N = 8 and 64).

Tokens
------
``reproduced_tokens`` = mean over the fitted questions of ``N*_q x tps``, where ``tps`` (tokens per
sample) is the benchmark's BoN mean at the largest N of ``bon_curves`` divided by that N (for the
release, tokens(64) / 64: every question, every sample).

``reproduced_tokens_length_corrected`` = mean over questions of ``N*_q x tps x w_q``. Harder
questions both need more samples and write longer ones; the released numbers do not say by how
much, so the link is *measured on our own pools* and transferred by rank. Assumptions, exactly:

1. Within a benchmark, ``log`` (mean tokens per sample of a question) is linear in the normal
   score ``z = Phi^{-1}((rank - 1/2) / Q)`` of the question's difficulty rank (ties share the
   average rank). The slope ``b`` is fitted by least squares on the committed 1.5B pools
   (:data:`DEFAULT_POOL_DIR`), one slope per pool benchmark; a paper benchmark without a pool of
   its own (AIME24, AIME25) takes the pooled within-benchmark slope of all pools.
2. The difficulty rank in our pools comes from a ``measure``: ``"pass-rate"`` (the fraction of a
   question's samples that are correct; what the mean score of a verifier with AUROC near 1, as
   the paper's PRM, ranks by) or a scorer name (``"self-certainty"``, ...: each question's mean
   score ``mu`` from a truncated-normal MLE of all its scores). On the 1.5B pools self-certainty's
   ``mu`` *rises* with length (a scorer artefact), so it transfers the opposite sign; both are
   reported and ``"pass-rate"`` fills the main column.
3. The paper's question ``q`` gets the same ``z`` from the rank of its ``full_mle_mu`` (the fit of
   all its PRM scores; one length profile per benchmark, the same for every peek and variant), so
   ``w_q = exp(b z_q) / mean_q exp(b z_q)``: the mean tokens per sample over the fitted questions
   stays exactly ``tps`` (the BoN curve), only its spread over questions changes.
4. The link of a 1.5B coder model writing hundreds of tokens is assumed to hold, in log scale, for
   the paper's R1-distilled 7B model writing thousands.

GSM8K and MATH-500 fits cover only the first 50 questions (of 1319 and 500), while the grid and
the paper average over every question: there the reproduced numbers are a 50-question estimate
of a full-benchmark mean (``n_questions_fitted`` / ``n_questions_benchmark`` say so per row).

Every (benchmark, N, variant) row of the paper's table equals one grid setting exactly (tokens to
the rounding, accuracy to 0.1 point): the table reports, per row, the grid setting chosen on the
test questions themselves. The grid was run with peek ``k`` = 3, 5, 10, 20 for N = 8, 16, 32, 64
(:data:`GRID_PEEK`, the reference notebooks' pairing).

Public functions return DataFrames and write nothing: :func:`paper_regime_tokens` (the table of
``tables/paper_regime_tokens.csv``), :func:`best_matching_settings` (per row of the paper's table,
which peek and grid setting reproduce it), :func:`length_difficulty_slopes` (the measured link),
:func:`implied_tokens_per_question` (the per-question lengths the released token numbers imply).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ..config import PROJECT_ROOT
from ..data.benchmarks import DataError, load_benchmark, resolve_data_dir
from ..theory.bounds import n_star
from ..theory.fits import fit_truncnorm
from .paper import PAPER_DATASETS, PAPER_ROWS, load_reported_table

__all__ = [
    "PAPER_BENCHMARKS",
    "PAPER_NS",
    "PAPER_PEEKS",
    "GRID_PEEK",
    "VARIANTS",
    "DEFAULT_POOL_DIR",
    "TABLE_COLUMNS",
    "load_paper_fits",
    "load_optscale_grid",
    "load_bon_curve",
    "tokens_per_sample",
    "question_n_star",
    "difficulty_normal_scores",
    "length_difficulty_slopes",
    "length_weights",
    "paper_regime_tokens",
    "best_matching_settings",
    "implied_tokens_per_question",
]

PAPER_BENCHMARKS: tuple[str, ...] = ("AIME24", "AIME25", "AMC23", "GSM8K", "MATH500")
PAPER_NS: tuple[int, ...] = (8, 16, 32, 64)
PAPER_PEEKS: tuple[int, ...] = (3, 5, 10, 20)
#: peek k the reference notebooks used for each N of the released grid
GRID_PEEK: dict[int, int] = {8: 3, 16: 5, 32: 10, 64: 20}
#: variant -> (column prefix in the fits, method name in results_table.csv)
VARIANTS: dict[str, tuple[str, str]] = {"MLE": ("mle", PAPER_ROWS["optscale-0"]), "MAP": ("map", PAPER_ROWS["optscale-t"])}
DEFAULT_POOL_DIR = PROJECT_ROOT / "data" / "pools" / "qwen2.5-coder-1.5b-q4km_words_t0.7_seed0"
#: the table's required leading columns (extras follow them)
TABLE_COLUMNS: tuple[str, ...] = ("benchmark", "N", "variant", "peek", "target_score", "percentile", "paper_tokens",
                                  "reproduced_tokens", "reproduced_tokens_length_corrected")
_KEY_OF = {ds: key for key, ds in PAPER_DATASETS.items()}  # "MATH500" -> "math500"
_PARAM_COLUMNS = ("mle_mu", "mle_sigma", "map_mu", "map_sigma", "full_mle_mu", "full_mle_sigma")


def _reference(data_dir) -> Path:
    return resolve_data_dir(data_dir) / "reference"


def _check_benchmark(benchmark: str) -> None:
    if benchmark not in PAPER_BENCHMARKS:
        raise DataError(f"unknown paper benchmark {benchmark!r}; known: {list(PAPER_BENCHMARKS)}")


# ---------------------------------------------------------------------------------------------
# Loading the release (validated: a bad entry names its file, row and field)
# ---------------------------------------------------------------------------------------------
def load_paper_fits(data_dir, benchmark: str, peek: int) -> pd.DataFrame:
    """``reference/fits/{benchmark}_peek{peek}.csv``: one row per fitted question, in file order,
    with ``id`` and the ``mle_*``, ``map_*``, ``full_mle_*`` truncated-normal parameters."""
    _check_benchmark(benchmark)
    path = _reference(data_dir) / "fits" / f"{benchmark}_peek{peek}.csv"
    if not path.is_file():
        raise DataError(f"{path}: released fits not found")
    df = pd.read_csv(path)
    missing = [c for c in ("id",) + _PARAM_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    if not len(df):
        raise DataError(f"{path}: no rows")
    for col in _PARAM_COLUMNS:
        x = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(x) | ((x <= 0) if col.endswith("sigma") else False)
        if bad.any():
            i = int(np.argmax(bad))
            need = "a finite number > 0" if col.endswith("sigma") else "a finite number"
            raw = df[col].iloc[i]
            raw = raw.item() if isinstance(raw, np.generic) else raw
            raise DataError(f"{path}: row {i}: field {col!r} = {raw!r} must be {need}")
        df[col] = x
    return df


def _read_json_records(path: Path, fields: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON list of records")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise DataError(f"{path}: entry {i} is not an object")
        for f in fields:
            v = r.get(f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise DataError(f"{path}: entry {i}: field {f!r} = {v!r} is not a finite number")
    return pd.DataFrame(rows)[list(fields)]


def load_optscale_grid(data_dir, benchmark: str, variant: str, N: int) -> pd.DataFrame:
    """``reference/optscale_grid/{benchmark}_{variant}_{N}.json``: columns target_score, percentile,
    accuracy (fraction), average_token_count; one row per grid setting, in file order."""
    _check_benchmark(benchmark)
    if variant not in VARIANTS:
        raise DataError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    path = _reference(data_dir) / "optscale_grid" / f"{benchmark}_{variant}_{N}.json"
    g = _read_json_records(path, ("target_score", "percentile", "accuracy", "average_token_count"))
    for f, ok in (("target_score", (g.target_score >= 0) & (g.target_score <= 1)),
                  ("percentile", (g.percentile > 0) & (g.percentile < 1))):
        if not ok.all():
            i = int(np.argmax(~ok.to_numpy()))
            raise DataError(f"{path}: entry {i}: field {f!r} = {g[f].iloc[i].item()!r} is outside its range")
    return g


def load_bon_curve(data_dir, benchmark: str) -> pd.DataFrame:
    """``reference/bon_curves/{benchmark}.json``: columns N, accuracy, token_count (mean tokens
    per question of BoN@N), sorted by N."""
    _check_benchmark(benchmark)
    path = _reference(data_dir) / "bon_curves" / f"{benchmark}.json"
    return _read_json_records(path, ("N", "accuracy", "token_count")).sort_values("N", ignore_index=True)


def tokens_per_sample(bon: pd.DataFrame) -> float:
    """Mean tokens per sample of a BoN curve: ``token_count / N`` at its largest ``N`` (every
    question's first ``N`` samples; for the release N = 64)."""
    last = bon.loc[bon["N"].idxmax()]
    return float(last["token_count"]) / float(last["N"])


# ---------------------------------------------------------------------------------------------
# N* and the length model
# ---------------------------------------------------------------------------------------------
def question_n_star(mu, sigma, target_score, percentile, N: int, peek: int) -> np.ndarray:
    """``N*`` per question and setting: shape (Q, S) for (Q,) parameters and (S,) settings.

    The smallest ``n`` with ``F(target_score)^n <= percentile`` (``F`` the question's truncated
    normal), i.e. :func:`optscale.theory.bounds.n_star` with ``delta = percentile``; at most ``N``
    (also when the target is out of reach) and at least ``peek``."""
    mu = np.asarray(mu, dtype=float).reshape(-1, 1)
    sigma = np.asarray(sigma, dtype=float).reshape(-1, 1)
    t = np.asarray(target_score, dtype=float).reshape(1, -1)
    p = np.asarray(percentile, dtype=float).reshape(1, -1)
    if peek > N:
        raise DataError(f"peek {peek} exceeds N = {N}")
    Ns, _ = n_star(mu, sigma, t, p, max_N=int(N), n_min=int(peek))
    return Ns


def difficulty_normal_scores(values) -> np.ndarray:
    """Normal scores of within-benchmark ranks: ``Phi^{-1}((rank - 1/2) / Q)``, ties averaged;
    higher value (easier question) -> higher score."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) < 2 or not np.isfinite(v).all():
        raise DataError("difficulty values must be a 1-d array of >= 2 finite numbers")
    return stats.norm.ppf((stats.rankdata(v) - 0.5) / len(v))


def _pool_difficulty(pool, measure: str) -> np.ndarray:
    if measure == "pass-rate":
        return pool.correct().mean(axis=1)
    if measure not in pool.scorers:
        raise DataError(f"{pool.path}: no score column {measure!r}; scorers: {pool.scorers} (or 'pass-rate')")
    return np.asarray(fit_truncnorm(pool.scores(measure)).mu, dtype=float)


def length_difficulty_slopes(pools: str | Path = DEFAULT_POOL_DIR, measure: str = "pass-rate") -> pd.DataFrame:
    """The length-difficulty link measured on our pools: per pool benchmark and pooled.

    For every ``*.parquet`` pool under ``pools``: per question the difficulty (``measure``, see
    the module docstring) and the log of its mean tokens per sample; least squares of the log
    tokens on :func:`difficulty_normal_scores`. The ``pooled`` row regresses the within-benchmark
    demeaned log tokens of all pools on their within-benchmark normal scores. Columns: benchmark
    (pool dataset name, or ``pooled``), measure, n_questions, samples_per_question, slope,
    slope_stderr, r, spearman_tokens_difficulty."""
    from ..data.pools import read_pool

    files = sorted(Path(pools).glob("*.parquet"))
    if not files:
        raise DataError(f"{pools}: no *.parquet pools")
    rows, zs, ys = [], [], []
    for f in files:
        pool = read_pool(f)
        d = _pool_difficulty(pool, measure)
        y = np.log(pool.tokens().mean(axis=1))
        z = difficulty_normal_scores(d)
        lr = stats.linregress(z, y)
        rows.append({"benchmark": pool.dataset, "measure": measure, "n_questions": len(y),
                     "samples_per_question": pool.n_per_question, "slope": lr.slope, "slope_stderr": lr.stderr,
                     "r": lr.rvalue, "spearman_tokens_difficulty": stats.spearmanr(y, d)[0]})
        zs.append(z - z.mean())
        ys.append(y - y.mean())
    z, y = np.concatenate(zs), np.concatenate(ys)
    slope = float(z @ y / (z @ z))
    resid = y - slope * z
    dof = len(y) - len(files) - 1
    se = float(np.sqrt(resid @ resid / dof / (z @ z)))
    rows.append({"benchmark": "pooled", "measure": measure, "n_questions": len(y), "samples_per_question": np.nan,
                 "slope": slope, "slope_stderr": se, "r": float(np.corrcoef(z, y)[0, 1]),
                 "spearman_tokens_difficulty": np.nan})
    return pd.DataFrame(rows)


def length_weights(difficulty, slope: float) -> np.ndarray:
    """Per-question length multipliers ``w_q = exp(slope z_q) / mean exp(slope z)`` with ``z`` the
    normal scores of ``difficulty``'s ranks; ``mean(w) == 1`` exactly (up to rounding)."""
    e = np.exp(float(slope) * difficulty_normal_scores(difficulty))
    return e / e.mean()


def _slope_for(slopes: pd.DataFrame, benchmark: str) -> tuple[float, str]:
    own = slopes[slopes["benchmark"] == _KEY_OF[benchmark]]
    if len(own):
        return float(own["slope"].iloc[0]), f"own pool ({_KEY_OF[benchmark]})"
    return float(slopes.loc[slopes["benchmark"] == "pooled", "slope"].iloc[0]), "pooled"


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def _paper_row(reported: pd.DataFrame, benchmark: str, N: int, variant: str) -> tuple[float, float]:
    r = reported[(reported["method"] == VARIANTS[variant][1]) & (reported["N"] == N)
                 & (reported["dataset"] == _KEY_OF[benchmark])]
    if not len(r):
        return float("nan"), float("nan")
    return float(r["tokens"].iloc[0]), float(r["accuracy"].iloc[0])


def paper_regime_tokens(data_dir=None, pools: str | Path = DEFAULT_POOL_DIR,
                        measures: Sequence[str] = ("pass-rate", "self-certainty"),
                        benchmarks: Iterable[str] = PAPER_BENCHMARKS, Ns: Iterable[int] = PAPER_NS,
                        peeks: Iterable[int] = PAPER_PEEKS) -> pd.DataFrame:
    """Reproduced mean tokens per question of OptScale for every (benchmark, N, variant, peek,
    grid setting), from the released fits and the workbook's bound (see the module docstring
    for every assumption).

    Parameters
    ----------
    data_dir : the OptScale release (``resolve_data_dir``); reads ``reference/``.
    pools : folder of our pools (``*.parquet``) for the length-difficulty link; ``None`` skips
        the length correction (those columns are NaN).
    measures : difficulty measures of the link; the first fills
        ``reproduced_tokens_length_corrected``, each further one adds
        ``reproduced_tokens_length_corrected__<measure>`` (``-`` written ``_``).

    Returns
    -------
    One row per setting (peeks larger than ``N`` are left out): :data:`TABLE_COLUMNS` first, then paper_accuracy, grid_tokens,
    grid_accuracy (the released grid at this (target_score, percentile); it was run at peek
    ``grid_peek``), grid_peek, is_grid_peek, is_paper_setting (the grid setting the paper's row
    equals: tokens to the rounding and accuracy to 0.0005), mean_n_star, frac_at_cap (share of
    questions with ``N* == N``), tokens_per_sample, length_slope, length_slope_source,
    n_questions_fitted, n_questions_benchmark, ratio_to_grid and
    ratio_length_corrected_to_grid (reproduced / grid tokens), ratio_to_paper and
    ratio_length_corrected_to_paper, and the further measures' columns.
    """
    measures = list(measures)
    if pools is not None and not measures:
        raise DataError("measures must name at least one difficulty measure when pools are given")
    reported = load_reported_table(data_dir)
    slopes = {m: length_difficulty_slopes(pools, m) for m in measures} if pools is not None else {}
    out = []
    for ds in benchmarks:
        _check_benchmark(ds)
        tps = tokens_per_sample(load_bon_curve(data_dir, ds))
        n_bench = len(load_benchmark(_KEY_OF[ds], data_dir))
        full_mu = load_paper_fits(data_dir, ds, min(peeks))["full_mle_mu"].to_numpy()
        weights = {}
        for m in slopes:
            slope, source = _slope_for(slopes[m], ds)
            weights[m] = (length_weights(full_mu, slope), (slope, source))
        for N in Ns:
            for variant, (prefix, _) in VARIANTS.items():
                grid = load_optscale_grid(data_dir, ds, variant, N)
                paper_tok, paper_acc = _paper_row(reported, ds, N, variant)
                is_paper = ((grid["average_token_count"].round() == paper_tok)
                            & ((grid["accuracy"] - paper_acc).abs() < 5e-4)).to_numpy()
                for k in peeks:
                    if k > N:  # a peek of more than N samples is not an N-sample policy
                        continue
                    fits = load_paper_fits(data_dir, ds, k)
                    if len(fits) != len(full_mu):
                        raise DataError(f"{ds}: peek {k} fits have {len(fits)} questions, peek {min(peeks)} "
                                        f"has {len(full_mu)}")
                    Ns_q = question_n_star(fits[f"{prefix}_mu"], fits[f"{prefix}_sigma"], grid["target_score"],
                                           grid["percentile"], N, k)
                    block = pd.DataFrame({
                        "benchmark": ds, "N": N, "variant": variant, "peek": k,
                        "target_score": grid["target_score"], "percentile": grid["percentile"],
                        "paper_tokens": paper_tok, "reproduced_tokens": Ns_q.mean(axis=0) * tps,
                        "reproduced_tokens_length_corrected": np.nan,
                    })
                    extra = {}
                    for j, (m, (w, (slope, source))) in enumerate(weights.items()):
                        col = ("reproduced_tokens_length_corrected" if j == 0 else
                               f"reproduced_tokens_length_corrected__{m.replace('-', '_')}")
                        vals = (Ns_q * w[:, None]).mean(axis=0) * tps
                        if j == 0:
                            block[col] = vals
                            extra["length_slope"], extra["length_slope_source"] = slope, f"{m}, {source}"
                        else:
                            extra[col] = vals
                    block = block.assign(
                        paper_accuracy=paper_acc, grid_tokens=grid["average_token_count"],
                        grid_accuracy=grid["accuracy"], grid_peek=GRID_PEEK.get(N, -1),
                        is_grid_peek=GRID_PEEK.get(N) == k, is_paper_setting=is_paper,
                        mean_n_star=Ns_q.mean(axis=0), frac_at_cap=(Ns_q == N).mean(axis=0),
                        tokens_per_sample=tps, length_slope=extra.pop("length_slope", np.nan),
                        length_slope_source=extra.pop("length_slope_source", "none"),
                        n_questions_fitted=len(fits), n_questions_benchmark=n_bench)
                    block["ratio_to_grid"] = block["reproduced_tokens"] / block["grid_tokens"]
                    block["ratio_length_corrected_to_grid"] = (block["reproduced_tokens_length_corrected"]
                                                               / block["grid_tokens"])
                    block["ratio_to_paper"] = block["reproduced_tokens"] / block["paper_tokens"]
                    block["ratio_length_corrected_to_paper"] = (block["reproduced_tokens_length_corrected"]
                                                                / block["paper_tokens"])
                    for col, vals in extra.items():
                        block[col] = vals
                    out.append(block)
    if not out:
        raise DataError("no (benchmark, N) selected")
    return pd.concat(out, ignore_index=True)


def best_matching_settings(table: pd.DataFrame, tolerance: float = 0.05,
                           versions: Sequence[str] = ("grid_tokens", "reproduced_tokens",
                                                      "reproduced_tokens_length_corrected")) -> pd.DataFrame:
    """Per row of the paper's table (benchmark, N, variant) and per token ``version`` (a column of
    :func:`paper_regime_tokens`), the (peek, target_score, percentile) whose tokens are closest to
    ``paper_tokens`` (relative error ``|tokens / paper_tokens - 1|``; ties: first in table order).

    ``grid_tokens`` is searched at the grid's own peek only (it was run there). Columns:
    benchmark, N, variant, version, paper_tokens, paper_accuracy, best_peek, best_target_score,
    best_percentile, best_tokens, rel_error, within_tolerance, accuracy_matches (the grid's
    accuracy at that setting equals the paper's to 0.0005; NA when the best peek is not the grid's,
    where the grid says nothing), match (``"peek k, s*=t, p=q"`` or ``"none within 5%"``),
    plus paper_target_score / paper_percentile (the grid setting the paper's row equals, if any)
    and at_paper_setting_tokens / at_paper_setting_rel_error (this version at that setting and the
    grid's peek)."""
    missing = [c for c in ("benchmark", "N", "variant", "peek", "target_score", "percentile", "paper_tokens",
                           "paper_accuracy", "grid_accuracy", "grid_peek") + tuple(versions) if c not in table.columns]
    if missing:
        raise DataError(f"table lacks column(s) {missing}")
    rows = []
    for (ds, N, variant), g in table.groupby(["benchmark", "N", "variant"], sort=False):
        paper_tok, paper_acc = float(g["paper_tokens"].iloc[0]), float(g["paper_accuracy"].iloc[0])
        if not np.isfinite(paper_tok):
            continue
        at_grid = g[g["peek"] == g["grid_peek"]]
        src = at_grid[at_grid["is_paper_setting"]] if "is_paper_setting" in g else at_grid.iloc[:0]
        for v in versions:
            cand = at_grid if v == "grid_tokens" else g
            cand = cand[np.isfinite(cand[v].to_numpy(dtype=float))]
            base = {"benchmark": ds, "N": N, "variant": variant, "version": v, "paper_tokens": paper_tok,
                    "paper_accuracy": paper_acc}
            if not len(cand):
                rows.append({**base, "within_tolerance": False, "match": "no values"})
                continue
            rel = (cand[v] / paper_tok - 1.0).abs().to_numpy()
            b = cand.iloc[int(np.argmin(rel))]
            ok = bool(rel.min() <= tolerance)
            acc_match = (bool(abs(b["grid_accuracy"] - paper_acc) < 5e-4) if b["peek"] == b["grid_peek"] else pd.NA)
            row = {**base, "best_peek": int(b["peek"]), "best_target_score": b["target_score"],
                   "best_percentile": b["percentile"], "best_tokens": float(b[v]), "rel_error": float(rel.min()),
                   "within_tolerance": ok, "accuracy_matches": acc_match,
                   "match": (f"peek {int(b['peek'])}, s*={b['target_score']:g}, p={b['percentile']:g}" if ok
                             else f"none within {tolerance:.0%}")}
            if len(src):
                s = src.iloc[0]
                row.update(paper_target_score=s["target_score"], paper_percentile=s["percentile"],
                           at_paper_setting_tokens=float(s[v]), at_paper_setting_rel_error=float(s[v] / paper_tok - 1))
            rows.append(row)
    return pd.DataFrame(rows)


def implied_tokens_per_question(data_dir, benchmark: str, ridge: float = 1e-5,
                                Ns: Iterable[int] = PAPER_NS) -> tuple[pd.DataFrame, dict]:
    """Per-question mean tokens per sample implied by the released token numbers.

    Every grid entry's ``average_token_count`` is modelled as ``mean_q N*_q t_q`` (``N*`` at the
    grid's peek, :data:`GRID_PEEK`) and every BoN point as ``mean_q n t_q``; the ``t_q >= 0`` are
    fitted by non-negative least squares in relative error, with a ridge of weight ``ridge``
    pulling each ``t_q`` towards the BoN tokens per sample (questions whose ``N*`` never varies
    are otherwise not identified). Meaningful only where every question of the benchmark is
    fitted (AIME24, AIME25, AMC23); in-sample, so a small residual shows the bound *can* produce
    the grid's numbers, not that the lengths are known.

    Returns (frame with id, full_mle_mu, implied_tokens_per_sample; info dict with n_equations,
    rank, rel_rmse, tokens_per_sample, slope of log t on the normal score of full_mle_mu)."""
    Ns = list(Ns)
    bon = load_bon_curve(data_dir, benchmark)
    tps = tokens_per_sample(bon)
    full = load_paper_fits(data_dir, benchmark, GRID_PEEK[Ns[0]])
    Q = len(full)
    if Q != len(load_benchmark(_KEY_OF[benchmark], data_dir)):
        raise DataError(f"{benchmark}: the fits cover {Q} questions, not the whole benchmark the grid averages")
    A, y = [], []
    for N in Ns:
        fits = load_paper_fits(data_dir, benchmark, GRID_PEEK[N])
        for variant, (prefix, _) in VARIANTS.items():
            g = load_optscale_grid(data_dir, benchmark, variant, N)
            Nq = question_n_star(fits[f"{prefix}_mu"], fits[f"{prefix}_sigma"], g["target_score"], g["percentile"],
                                 N, GRID_PEEK[N])
            A.append(Nq.T / Q)
            y.append(g["average_token_count"].to_numpy(dtype=float))
    A.append(bon["N"].to_numpy(dtype=float)[:, None] * np.full((1, Q), 1.0 / Q))
    y.append(bon["token_count"].to_numpy(dtype=float))
    A, y = np.vstack(A), np.concatenate(y)
    scale = 1.0 / y
    lam = np.sqrt(ridge * len(y))
    A_aug = np.vstack([A * scale[:, None], lam * np.eye(Q) / tps])
    y_aug = np.concatenate([np.ones_like(y), np.full(Q, lam)])
    t, _ = optimize.nnls(A_aug, y_aug)
    pred = A @ t
    mu = full["full_mle_mu"].to_numpy()
    ok = t > 0
    lr = stats.linregress(difficulty_normal_scores(mu)[ok], np.log(t[ok]))
    info = {"benchmark": benchmark, "n_equations": len(y), "rank": int(np.linalg.matrix_rank(A)), "n_questions": Q,
            "rel_rmse": float(np.sqrt(np.mean((pred / y - 1.0) ** 2))), "tokens_per_sample": tps,
            "implied_mean": float(t.mean()), "slope": float(lr.slope), "slope_stderr": float(lr.stderr),
            "spearman_tokens_mu": float(stats.spearmanr(t, mu)[0])}
    return pd.DataFrame({"id": full["id"], "full_mle_mu": mu, "implied_tokens_per_sample": t}), info
