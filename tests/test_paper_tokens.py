"""The paper's OptScale token column rebuilt from the released fits (optscale.evaluation.paper_tokens)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import truncnorm

from optscale.data.benchmarks import DataError, resolve_data_dir
from optscale.evaluation.paper_tokens import (DEFAULT_POOL_DIR, GRID_PEEK, PAPER_BENCHMARKS, PAPER_NS, TABLE_COLUMNS,
                                              best_matching_settings, implied_tokens_per_question,
                                              length_difficulty_slopes, length_weights, load_optscale_grid,
                                              load_paper_fits, paper_regime_tokens, question_n_star)


def _have_release() -> bool:
    try:
        ref = resolve_data_dir() / "reference"
    except DataError:
        return False
    return all((ref / d).is_dir() for d in ("fits", "optscale_grid", "bon_curves")) and (ref / "results_table.csv").is_file()


needs_release = pytest.mark.skipif(not _have_release(), reason="OptScale release (reference/) not available")
needs_pools = pytest.mark.skipif(not any(DEFAULT_POOL_DIR.glob("*.parquet")), reason="committed 1.5B pools absent")


@pytest.fixture(scope="module")
def table():
    if not (_have_release() and any(DEFAULT_POOL_DIR.glob("*.parquet"))):
        pytest.skip("needs the OptScale release and the committed 1.5B pools")
    return paper_regime_tokens()


# --- N* ------------------------------------------------------------------------------------------
def _hand_n_star(mu, sigma, target, p, N, peek):
    F = truncnorm.cdf(target, (0 - mu) / sigma, (1 - mu) / sigma, loc=mu, scale=sigma)
    if F <= 0:
        n = 1
    elif F >= 1:
        n = N
    else:
        n = math.ceil(math.log(p) / math.log(F))
    return min(max(n, peek), N)


@needs_release
def test_n_star_of_one_released_question_by_hand():
    # AIME24, peek 3, question 1: MLE mu = 0.7608, sigma = 0.0908.
    # F(0.8) = 0.66985 -> ceil(log 0.05 / log 0.66985) = 8; F(0.9) = 0.94133 -> 50.
    f = load_paper_fits(None, "AIME24", 3)
    mu, sigma = f.loc[1, "mle_mu"], f.loc[1, "mle_sigma"]
    assert (mu, sigma) == (0.7608, 0.0908)
    assert question_n_star([mu], [sigma], [0.8, 0.9], [0.05, 0.05], N=64, peek=3).tolist() == [[8, 50]]
    assert question_n_star([mu], [sigma], [0.8, 0.9], [0.05, 0.05], N=16, peek=3).tolist() == [[8, 16]]  # capped
    assert question_n_star([mu], [sigma], [0.8], [0.05], N=16, peek=10).tolist() == [[10]]  # floored at the peek


@needs_release
def test_n_star_matches_scipy_hand_computation_on_a_whole_grid():
    f = load_paper_fits(None, "AMC23", 5)
    g = load_optscale_grid(None, "AMC23", "MAP", 16)
    got = question_n_star(f["map_mu"], f["map_sigma"], g["target_score"], g["percentile"], N=16, peek=5)
    want = np.array([[_hand_n_star(m, s, t, p, 16, 5) for t, p in zip(g["target_score"], g["percentile"])]
                     for m, s in zip(f["map_mu"], f["map_sigma"])])
    assert got.shape == (40, len(g))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 3  # the grid really spans several budgets


# --- the table -----------------------------------------------------------------------------------
def test_table_has_required_columns_and_every_paper_row(table):
    assert tuple(table.columns[: len(TABLE_COLUMNS)]) == TABLE_COLUMNS
    keys = set(map(tuple, table[["benchmark", "N", "variant"]].drop_duplicates().to_numpy()))
    assert keys == {(b, n, v) for b in PAPER_BENCHMARKS for n in PAPER_NS for v in ("MLE", "MAP")}
    assert table["paper_tokens"].notna().all() and table["reproduced_tokens"].notna().all()
    assert table["reproduced_tokens_length_corrected"].notna().all()
    assert (table["peek"] <= table["N"]).all()
    # one block per (benchmark, N, variant, peek <= N), each with every grid setting
    for (b, n, v, k), g in table.groupby(["benchmark", "N", "variant", "peek"]):
        assert len(g) == len(load_optscale_grid(None, b, v, n))
    # the paper's row is a grid setting at the grid's peek
    src = table[table["is_paper_setting"] & table["is_grid_peek"]]
    assert set(map(tuple, src[["benchmark", "N", "variant"]].drop_duplicates().to_numpy())) == keys
    assert (src["grid_tokens"].round() == src["paper_tokens"]).all()
    assert (table.loc[table["is_grid_peek"], "peek"] == table.loc[table["is_grid_peek"], "N"].map(GRID_PEEK)).all()


def test_n_star_within_peek_and_cap(table):
    assert (table["mean_n_star"] <= table["N"]).all() and (table["mean_n_star"] >= table["peek"]).all()
    tps = table["tokens_per_sample"]
    assert (table["reproduced_tokens"] <= table["N"] * tps * (1 + 1e-12)).all()
    assert (table["reproduced_tokens"] >= table["peek"] * tps * (1 - 1e-12)).all()
    full = table[table["frac_at_cap"] == 1.0]
    assert len(full) and np.allclose(full["reproduced_tokens"], full["N"] * full["tokens_per_sample"])


def test_length_correction_keeps_the_benchmark_mean_tokens_per_sample(table):
    rng = np.random.default_rng(0)
    w = length_weights(rng.normal(0.7, 0.1, 40), slope=-0.3)
    assert w.mean() == pytest.approx(1.0, abs=1e-12)
    assert w.std() > 0.1
    mu = np.array([0.9, 0.5, 0.7])
    w3 = length_weights(mu, slope=-0.3)
    assert w3[1] > w3[2] > w3[0]  # the hardest question (lowest mu) writes the longest samples
    # where every question gets the same N* (all at the peek or all at the cap) the correction is void
    same = table[(table["mean_n_star"] == table["peek"]) | (table["frac_at_cap"] == 1.0)]
    assert len(same)
    np.testing.assert_allclose(same["reproduced_tokens_length_corrected"], same["reproduced_tokens"], rtol=1e-9)
    # and elsewhere it moves tokens towards the questions with large N* (negative slope: harder = longer)
    g = table[table["is_grid_peek"] & (table["benchmark"] == "AIME24")]
    assert (g["length_slope"] < 0).all()
    assert (g["reproduced_tokens_length_corrected"] >= g["reproduced_tokens"] * (1 - 1e-9)).mean() > 0.9


@needs_pools
def test_length_difficulty_slope_measured_on_pools_is_negative_for_pass_rate():
    s = length_difficulty_slopes(DEFAULT_POOL_DIR, "pass-rate").set_index("benchmark")
    assert {"gsm8k", "math500", "pooled"} <= set(s.index)
    assert s.loc["pooled", "slope"] < -2 * s.loc["pooled", "slope_stderr"]
    assert s.loc["math500", "n_questions"] == 100
    with pytest.raises(DataError, match="no score column 'no-such-scorer'"):
        length_difficulty_slopes(DEFAULT_POOL_DIR, "no-such-scorer")


# --- best match ----------------------------------------------------------------------------------
def _synthetic_table():
    rows = []
    for k in (3, 5):
        for i, (t, p) in enumerate([(0.7, 0.1), (0.8, 0.05), (0.9, 0.01)]):
            rows.append({"benchmark": "AIME24", "N": 8, "variant": "MLE", "peek": k, "target_score": t,
                         "percentile": p, "paper_tokens": 1000.0, "paper_accuracy": 0.7,
                         "reproduced_tokens": 500.0 + 100 * i + 10 * k, "reproduced_tokens_length_corrected": 2000.0,
                         "grid_tokens": 1000.0 if (t, p) == (0.8, 0.05) else 900.0,
                         "grid_accuracy": 0.7 if (t, p) == (0.8, 0.05) else 0.6, "grid_peek": 3,
                         "is_paper_setting": (t, p) == (0.8, 0.05)})
    df = pd.DataFrame(rows)
    df.loc[(df.peek == 5) & (df.target_score == 0.9), "reproduced_tokens"] = 1000.0  # the planted exact match
    return df


def test_best_match_finds_a_planted_exact_match_and_says_none_otherwise():
    bm = best_matching_settings(_synthetic_table(), tolerance=0.05).set_index("version")
    r = bm.loc["reproduced_tokens"]
    assert (r.best_peek, r.best_target_score, r.best_percentile, r.rel_error) == (5, 0.9, 0.01, 0.0)
    assert r.within_tolerance and r.match == "peek 5, s*=0.9, p=0.01"
    assert pd.isna(r.accuracy_matches)  # peek 5 is not the grid's peek: the grid says nothing there
    g = bm.loc["grid_tokens"]
    assert (g.best_peek, g.best_target_score, g.best_percentile) == (3, 0.8, 0.05) and g.accuracy_matches is True
    assert (g.paper_target_score, g.paper_percentile) == (0.8, 0.05)
    assert r.at_paper_setting_tokens == 630.0 and r.at_paper_setting_rel_error == pytest.approx(-0.37)
    c = bm.loc["reproduced_tokens_length_corrected"]
    assert not c.within_tolerance and c.match == "none within 5%" and c.rel_error == pytest.approx(1.0)


def test_best_match_rejects_a_table_without_the_columns():
    with pytest.raises(DataError, match="paper_accuracy"):
        best_matching_settings(_synthetic_table().drop(columns=["paper_accuracy"]))


@needs_release
def test_best_match_on_the_release_recovers_the_paper_settings(table):
    bm = best_matching_settings(table)
    grid = bm[bm["version"] == "grid_tokens"]
    assert len(grid) == 40 and (grid["rel_error"] < 1e-3).all() and grid["accuracy_matches"].astype(bool).all()


# --- the released numbers' own per-question lengths ------------------------------------------------
@needs_release
def test_implied_lengths_reproduce_the_grid_tokens_on_aime24():
    frame, info = implied_tokens_per_question(None, "AIME24")
    assert len(frame) == 30 and info["rank"] == 30
    assert info["rel_rmse"] < 0.02  # N* of the bound x one length per question explains every grid number
    assert info["implied_mean"] == pytest.approx(info["tokens_per_sample"], rel=0.02)
    with pytest.raises(DataError, match="first|cover 50 questions"):
        implied_tokens_per_question(None, "GSM8K")


# --- bad input ------------------------------------------------------------------------------------
def test_bad_fits_file_names_file_row_and_field(tmp_path):
    d = tmp_path / "reference" / "fits"
    d.mkdir(parents=True)
    cols = "id,predictor_mu,predictor_sigma,mle_mu,mle_sigma,map_mu,map_sigma,full_mle_mu,full_mle_sigma\n"
    (d / "AIME24_peek3.csv").write_text(cols + "0,0.6,0.1,0.9,0.01,0.9,0.05,0.9,0.02\n1,0.6,0.1,0.7,0,0.7,0.1,0.7,0.1\n")
    with pytest.raises(DataError, match=r"AIME24_peek3\.csv: row 1: field 'mle_sigma' = 0\.0 must be a finite number > 0"):
        load_paper_fits(tmp_path, "AIME24", 3)
    (d / "AIME24_peek5.csv").write_text("id,mle_mu\n0,0.5\n")
    with pytest.raises(DataError, match=r"AIME24_peek5\.csv: missing column\(s\)"):
        load_paper_fits(tmp_path, "AIME24", 5)
    g = tmp_path / "reference" / "optscale_grid"
    g.mkdir()
    (g / "AIME24_MLE_8.json").write_text('[{"target_score": 0.7, "percentile": 0.1, "accuracy": 0.7}]')
    with pytest.raises(DataError, match=r"AIME24_MLE_8\.json: entry 0: field 'average_token_count' = None"):
        load_optscale_grid(tmp_path, "AIME24", "MLE", 8)
