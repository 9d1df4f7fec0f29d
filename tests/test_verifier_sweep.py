"""The verifier-quality sweep (semi-synthetic binormal scores on the real pools)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from optscale.evaluation import verifier_sweep as vs
from optscale.evaluation.curves import within_question_auroc

POOL_SET = "qwen2.5-coder-1.5b-q4km_words_t0.7_seed0"


def _correct(questions=150, n=16, seed=0):
    """A pool-sized correctness matrix with pass rates spread over (0, 1), like the real pools."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.8, 0.8, questions)
    return rng.random((questions, n)) < p[:, None]


@pytest.fixture(scope="module")
def cfg():
    from optscale.config import load_config

    return load_config("cpu-1.5b", "evaluation.orders=4,evaluation.tune_orders=1,evaluation.bootstrap_reps=200")


@pytest.fixture(scope="module")
def gsm8k_slice(cfg):
    from optscale.evaluation.runner import load_pool_arrays

    data = load_pool_arrays(cfg, "gsm8k", pool_name=POOL_SET, scorer="self-certainty", verbose=False)
    assert data is not None, "the committed 1.5B GSM8K pool is needed"
    return data.subset(np.arange(40))


@pytest.fixture(scope="module")
def reference():
    return vs.paper_score_reference("gsm8k")


def test_separation_matches_the_binormal_auroc():
    from scipy import stats

    for a in (0.5, 0.7, 0.9, 0.99):
        assert stats.norm.cdf(vs.binormal_separation(a) / np.sqrt(2)) == pytest.approx(a, abs=1e-12)
    with pytest.raises(ValueError, match="AUROC target"):
        vs.binormal_separation(1.0)


@pytest.mark.parametrize("mode", vs.SHIFT_MODES)
@pytest.mark.parametrize("target", [0.6, 0.8, 0.95])
def test_draws_hit_the_requested_within_question_auroc(reference, mode, target):
    c = _correct()
    scores, info = vs.synthetic_scores(c, target, mode, reference, seed=1)
    assert scores.shape == c.shape and np.all((scores > 0) & (scores < 1))
    measured = np.nanmean(within_question_auroc(scores, c))
    assert measured == pytest.approx(target, abs=0.025)
    # the shift was scaled to the paper's between-question share (or needed no shift at all)
    assert info["between_share"] == pytest.approx(info["between_share_target"], abs=0.01) or info["tau"] == 0.0


def test_quantile_map_is_monotone_and_takes_the_reference_marginal(reference):
    z = np.random.default_rng(0).standard_normal((150, 16)) * 3 + 1
    s = vs.quantile_map(z, reference)
    order = np.argsort(z.ravel())
    assert np.all(np.diff(s.ravel()[order]) > 0)  # strictly monotone: no ties, AUROC unchanged
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    np.testing.assert_allclose(np.quantile(s, qs), np.quantile(reference, qs), atol=5e-3)


def test_paper_reference_is_prm_shaped(reference):
    # 50 GSM8K questions x 64 quantiles of the released full-pool fits: piled up near 1
    assert reference.shape == (50, 64)
    assert np.median(reference) > 0.95 and reference.min() >= 0 and reference.max() <= 1
    assert 0.3 < vs.between_share(reference) < 0.8


def test_difficulty_shift_follows_the_pass_rate():
    c = _correct(60)
    h = vs.difficulty_shift(c)
    assert np.corrcoef(h, c.mean(1))[0, 1] > 0.95
    assert vs.difficulty_shift(np.ones((5, 4), bool)).tolist() == [0.0] * 5


def test_expected_bon_is_chance_at_half_and_pass_at_n_near_one():
    c = _correct(200)
    answered = np.ones_like(c)
    np.testing.assert_allclose(vs.binormal_bon_expected(c, answered, 0.5), c.mean(1), atol=1e-6)
    top = vs.binormal_bon_expected(c, answered, 0.999)
    assert abs(top.mean() - c.any(1).mean()) < 0.01


def test_sanity_on_a_real_pool_slice(cfg, gsm8k_slice, reference):
    """At AUROC 0.5 BoN@16 is a random answered sample (the single-sample accuracy), at 0.99 close
    to pass@16, on the real GSM8K correctness."""
    per_seed = vs.sweep_pool(gsm8k_slice, cfg, reference, POOL_SET, aurocs=(0.5, 0.99), seeds=range(4),
                             shift_modes=("difficulty",), policies=["bon"])
    table = vs.aggregate_sweep(per_seed)
    sanity = vs.sweep_sanity(table).set_index("auroc_target")
    lo, hi = sanity.loc[0.5], sanity.loc[0.99]
    assert abs(lo["bon_acc"] - lo["single_acc_answered"]) <= 3 * lo["bon_chance_se"]
    assert abs(lo["bon_acc"] - lo["single_acc"]) < 0.08
    assert hi["pass_at_n"] - hi["bon_acc"] < 0.06
    assert hi["bon_acc"] > lo["bon_acc"] + 0.2
    assert bool(sanity["sanity_ok"].all())


def test_same_seed_same_table_other_seed_other_scores(cfg, gsm8k_slice, reference):
    run = lambda seeds: vs.aggregate_sweep(vs.sweep_pool(  # noqa: E731
        gsm8k_slice.subset(np.arange(16)), cfg, reference, POOL_SET, aurocs=(0.9,), seeds=seeds,
        shift_modes=("independent",), policies=["bon", "optscale-0", "esc"]))
    a, b = run([0]), run([0])
    pd.testing.assert_frame_equal(a, b)
    c = run([1])
    assert not np.allclose(a["auroc_measured"], c["auroc_measured"])
    s0 = vs.synthetic_pool(gsm8k_slice, 0.8, "difficulty", reference, 0, POOL_SET).scores
    s1 = vs.synthetic_pool(gsm8k_slice, 0.8, "difficulty", reference, 1, POOL_SET).scores
    assert np.array_equal(s0, vs.synthetic_pool(gsm8k_slice, 0.8, "difficulty", reference, 0, POOL_SET).scores)
    assert not np.allclose(s0, s1)


def test_table_columns_and_semi_synthetic_labels(cfg, gsm8k_slice, reference):
    per_seed = vs.sweep_pool(gsm8k_slice.subset(np.arange(12)), cfg, reference, POOL_SET, aurocs=(0.6,), seeds=[0],
                             shift_modes=("difficulty",), policies=["bon", "optscale-0"])
    table = vs.aggregate_sweep(per_seed)
    assert list(table.columns[: len(vs.SWEEP_COLUMNS)]) == list(vs.SWEEP_COLUMNS)
    assert set(table["scores"]) == {"semi-synthetic (binormal)"}
    assert len(table) == 2 and set(table["policy"]) == {"bon", "optscale-0"}
    syn = vs.synthetic_pool(gsm8k_slice, 0.6, "difficulty", reference, 0, POOL_SET)
    assert "semi-synthetic (binormal)" in syn.description and "self-certainty" not in syn.description
    assert syn.prior is None and "population_prior" not in syn.meta
    caption = vs.verifier_sweep_caption(table, cfg)
    assert "SEMI-SYNTHETIC" in caption and POOL_SET in caption and "n=16" in caption


def test_score_free_policies_joined_once_equal_a_full_replay(cfg, gsm8k_slice, reference):
    """The sweep replays the score-free policies once per pool; a policy listed there that read the
    scores would give different numbers here."""
    from optscale.evaluation.runner import evaluate_config

    data = gsm8k_slice.subset(np.arange(20))
    free = [p for p in vs.SCORE_FREE_POLICIES if p != "deepconf"] + (["deepconf"] if data.group_conf is not None else [])
    per_seed = vs.sweep_pool(data, cfg, reference, POOL_SET, aurocs=(0.9,), seeds=[0], shift_modes=("difficulty",),
                             policies=["bon"] + free)
    syn = vs.synthetic_pool(data, 0.9, "difficulty", reference, 0, POOL_SET)
    full = evaluate_config(syn, cfg, policies=["bon"] + free, verbose=False).savings.set_index("policy")
    got = per_seed.set_index("policy")
    for p in free:
        assert got.loc[p, "tokens_saved"] == pytest.approx(full.loc[p, "saved"], abs=1e-12), p
        assert got.loc[p, "acc_minus_bon"] == pytest.approx(full.loc[p, "acc_diff"], abs=1e-12), p
        assert got.loc[p, "acc_minus_bon_lo"] == pytest.approx(full.loc[p, "acc_diff_lo"], abs=1e-12), p


def test_crossing_auroc_interpolates_a_planted_curve():
    x = [0.5, 0.6, 0.7, 0.8, 0.9]
    # crosses 0.3 between 0.6 (0.2) and 0.7 (0.4): at 0.65
    assert vs.crossing_auroc(x, [0.1, 0.2, 0.4, 0.5, 0.6], 0.3)[0] == pytest.approx(0.65)
    # a dip above the first crossing: the last crossing counts (it must hold up to the top)
    assert vs.crossing_auroc(x, [0.1, 0.4, 0.2, 0.5, 0.6], 0.3)[0] == pytest.approx(0.7 + 0.1 * (0.1 / 0.3))
    # per-level thresholds (the best vote policy at each level)
    assert vs.crossing_auroc(x, [0.1, 0.2, 0.3, 0.4, 0.5], [0.3, 0.3, 0.25, 0.2, 0.2])[0] == pytest.approx(
        0.6 + 0.1 * (0.1 / 0.15))
    # not valid (not non-inferior) below 0.8: no interpolation across an invalid level
    at, how = vs.crossing_auroc(x, [0.5, 0.5, 0.5, 0.5, 0.5], 0.3, valid=[False, False, False, True, True])
    assert at == pytest.approx(0.8) and "not interpolated" in how
    assert vs.crossing_auroc(x, [0.5] * 5, 0.3)[0] == pytest.approx(0.5)
    assert vs.crossing_auroc(x, [0.1, 0.2, 0.4, 0.5, 0.2], 0.3) == (None, "never (not at the highest level swept)")


def _planted_table():
    levels = [0.5, 0.7, 0.9, 0.99]
    rows = []
    curves = {"optscale-0": ([0.1, 0.2, 0.45, 0.6], [False, True, True, True]),
              "esc": ([0.3, 0.3, 0.3, 0.3], [True, True, False, False]),
              "asc": ([0.25, 0.25, 0.25, 0.25], [True, True, True, False])}
    for name, (saved, ni) in curves.items():
        for a, s, ok in zip(levels, saved, ni):
            rows.append({"pool_set": "p", "benchmark": "gsm8k", "shift_mode": "difficulty", "auroc_target": a,
                         "auroc_measured": a + 0.01, "policy": name, "tokens_saved": s, "non_inferior": ok,
                         "acc_minus_bon": -0.1 + 0.1 * a, "tokens_saved_lo": s - 0.1, "tokens_saved_hi": s + 0.1,
                         "bon_acc": 0.5 + 0.4 * a})
    return pd.DataFrame(rows)


def test_break_even_against_the_best_non_inferior_vote_policy():
    be = vs.break_even_aurocs(_planted_table(), policies=["optscale-0"]).iloc[0]
    # best vote at NI: esc 0.3 (0.5, 0.7), asc 0.25 (0.9), none (0.99); optscale-0 NI from 0.7:
    # 0.2 - 0.3 < 0 at 0.7, 0.45 - 0.25 > 0 at 0.9 -> interpolated 0.7 + 0.2 * 0.1 / 0.3
    assert be["break_even_auroc"] == pytest.approx(0.7 + 0.2 * (0.1 / 0.3))
    # 37%: 0.2 at 0.7, 0.45 at 0.9 -> 0.7 + 0.2 * 0.17 / 0.25
    assert be["auroc_paper_savings"] == pytest.approx(0.7 + 0.2 * (0.17 / 0.25), abs=1e-9)
    assert be["scores"] == "semi-synthetic (binormal)"


def test_model_check_interpolates_at_the_real_auroc():
    table = _planted_table()
    points = pd.DataFrame([{"pool_set": "p", "dataset": "gsm8k", "scorer": "s", "policy": "optscale-0",
                            "auroc_within": 0.81, "auroc_within_lo": 0.78, "auroc_within_hi": 0.84, "saved": 0.30,
                            "saved_lo": 0.25, "saved_hi": 0.40, "acc_diff": 0.0, "acc_diff_lo": -0.01,
                            "acc_diff_hi": 0.01, "non_inferior": True, "bon_accuracy": 0.6},
                           {"pool_set": "p", "dataset": "gsm8k", "scorer": "t", "policy": "optscale-0",
                            "auroc_within": 0.40, "auroc_within_lo": 0.35, "auroc_within_hi": 0.45, "saved": 0.1,
                            "saved_lo": 0.0, "saved_hi": 0.2, "acc_diff": 0.0, "acc_diff_lo": -0.1,
                            "acc_diff_hi": 0.1, "non_inferior": True, "bon_accuracy": 0.55}])
    mc = vs.sweep_model_check(table, points).set_index("scorer")
    # measured 0.71 -> 0.2, 0.91 -> 0.45: at 0.81 the midpoint 0.325
    assert mc.loc["s", "predicted_tokens_saved"] == pytest.approx(0.325)
    assert bool(mc.loc["s", "tokens_saved_inside_ci"]) is True
    assert mc.loc["s", "predicted_acc_minus_bon"] == pytest.approx(-0.1 + 0.1 * 0.8)
    assert bool(mc.loc["s", "acc_minus_bon_inside_ci"]) is False
    # the baseline beside it: the real scorer's BoN@n and the sweep's at the same AUROC (0.5 + 0.4 x 0.8)
    assert mc.loc["s", "real_bon_acc"] == pytest.approx(0.6)
    assert mc.loc["s", "predicted_bon_acc"] == pytest.approx(0.5 + 0.4 * 0.8)
    assert np.isnan(mc.loc["t", "predicted_bon_acc"])
    assert np.isnan(mc.loc["t", "predicted_tokens_saved"]) and "outside the swept range" in mc.loc["t", "note"]


def test_bad_levels_are_refused_naming_the_setting(cfg):
    from optscale.config import ConfigError

    with pytest.raises(ConfigError, match="sweep_aurocs"):
        vs.run_verifier_sweep(cfg, aurocs=[0.4], seeds=1, verbose=False)
    with pytest.raises(ConfigError, match="sweep_shift_modes"):
        vs.run_verifier_sweep(cfg, aurocs=[0.6], seeds=1, shift_modes=["sideways"], verbose=False)


def test_sweep_figure_draws_the_policies_and_leaves_undefined_pools_out():
    import matplotlib

    matplotlib.use("Agg")
    from optscale.evaluation.figures import plot_verifier_sweep

    t = _planted_table().assign(n=16, acc_minus_bon_lo=-0.2, acc_minus_bon_hi=0.1)
    dead = t.assign(benchmark="aime24", auroc_measured=np.nan)
    points = pd.DataFrame([{"pool_set": "p", "dataset": "gsm8k", "scorer": "s", "policy": "optscale-0",
                            "auroc_within": 0.7, "auroc_within_lo": 0.65, "auroc_within_hi": 0.75, "saved": 0.1,
                            "saved_lo": 0.05, "saved_hi": 0.15, "acc_diff": 0.0, "acc_diff_lo": -0.01,
                            "acc_diff_hi": 0.01, "non_inferior": True}])
    fig = plot_verifier_sweep(pd.concat([t, dead]), points, ni_margin=0.02)
    axes = [ax for ax in fig.axes if ax.get_xlabel() or ax.get_ylabel() or ax.get_title()]
    assert len(axes) == 2  # one column (gsm8k); aime24 has no defined AUROC
    assert "gsm8k" in axes[0].get_title() and "SEMI-SYNTHETIC" in fig._suptitle.get_text()
    assert len(axes[0].get_lines()) >= 3  # a line per policy
