"""The question-only prior predictor (OptScale^t): question text -> prior for the score distribution.

What the model predicts
-----------------------
The training labels (``optscale.data.benchmarks.load_predictor_labels``) are the **sample mean and sample
standard deviation** of 64 PRM scores per question, not truncated-normal parameters. Every head
here is trained (MSE) on those two sample moments. :meth:`PriorPredictor.predict` returns them
(``mean``, ``std``) and converts them to the truncated-normal parameters on [0, 1] that the fit
module uses, ``(mu, sigma) = optscale.theory.fits.truncnorm_from_moments(mean, std)``, together with an
uncertainty for each (``*_unc``: the calibrated standard deviation of the prediction error), so a
MAP fit can weight the prior.

Parts (name registries, :mod:`optscale.predictor.heads`)
-----------------------------------------------------------
- ``BACKBONES``: ``"minilm"`` (frozen all-MiniLM-L6-v2 sentence embeddings + cheap text features),
  ``"text"`` (cheap text features only), ``"lm"`` (paper-style: a causal LM with the last layers
  trainable, attention pooling and MLP heads, :class:`optscale.predictor.lm.LMPriorPredictor`; GPU
  when available).
- ``HEADS`` for the feature backbones: ``"constant"`` (training mean), ``"ridge"`` (RidgeCV),
  ``"mlp"`` (small sklearn MLP, weight decay chosen by CV), ``"ridge+mlp"`` (their average),
  ``"krr"`` (RBF kernel ridge on standardised features).

Uncertainty: K-fold out-of-fold residuals on the training set; a ridge model of
``log(residual^2)`` on the features gives a per-question error scale, rescaled so the
out-of-fold z-scores have unit variance (calibrated sigma).
:func:`optscale.predictor.metrics.interval_coverage` checks it on held-out data.

Evaluation helpers (:mod:`optscale.predictor.metrics`): :func:`split_indices` (seeded train/test
split), :func:`evaluate_predictions` (MAE and Spearman with bootstrap CIs); transfer
(:mod:`optscale.predictor.calibration`): :class:`ScaleCalibrator` maps predicted priors onto a new
scorer's scale from a few labeled questions of a pool. :func:`optscale.predictor.factory.build_predictor`
builds either predictor from the config.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data.benchmarks import Problem
from .heads import BACKBONES, HEADS, TextBackbone, _AverageHead, _KernelRidgeHead, check_labels
from .metrics import _spearman

__all__ = [
    "PriorPrediction",
    "PriorPredictor",
]

# -- predictions ------------------------------------------------------------------------------
@dataclass
class PriorPrediction:
    """Per-question prior, arrays of shape ``(n,)``.

    ``mean``/``std``: predicted sample moments of the scores (what the head is trained on);
    ``mu``/``sigma``: truncated-normal parameters on [0, 1] with those moments;
    ``*_unc``: calibrated standard deviation of the prediction error of each quantity
    (``mu_unc``/``sigma_unc`` by the delta method through the moment -> parameter map).
    """

    mean: np.ndarray
    std: np.ndarray
    mean_unc: np.ndarray
    std_unc: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    mu_unc: np.ndarray
    sigma_unc: np.ndarray

    def moments(self) -> np.ndarray:
        """``(n, 2)`` predicted [mean, std]."""
        return np.column_stack([self.mean, self.std])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({k: np.asarray(v) for k, v in asdict(self).items()})

    def __len__(self) -> int:
        return len(self.mean)


def _moments_to_truncnorm(mean: np.ndarray, std: np.ndarray, mean_unc: np.ndarray,
                          std_unc: np.ndarray) -> tuple[np.ndarray, ...]:
    """Truncated-normal (mu, sigma) with the given moments, and their uncertainties.

    The uncertainties propagate ``mean_unc``/``std_unc`` through the moment -> parameter map by
    secants over +-1 uncertainty (not derivatives): most MATH labels sit where the map saturates at
    ``mu``'s upper bound, where a derivative is 0 and would claim a certain ``mu``.
    """
    from ..theory.fits import truncnorm_from_moments

    def conv(m: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = np.clip(m, 1e-3, 1 - 1e-3)
        s = np.clip(s, 1e-3, np.sqrt(m * (1 - m)))
        mu, sig = truncnorm_from_moments(m, s)
        return np.asarray(mu, dtype=float), np.asarray(sig, dtype=float)

    n = len(mean)
    # One batched conversion: centre, mean +- unc, std +- unc.
    M = np.concatenate([mean, mean + mean_unc, mean - mean_unc, mean, mean])
    S = np.concatenate([std, std, std, std + std_unc, std - std_unc])
    mu_all, sg_all = conv(M, S)
    mu_all, sg_all = mu_all.reshape(5, n), sg_all.reshape(5, n)
    mu, sigma = mu_all[0], sg_all[0]
    mu_unc = 0.5 * np.hypot(mu_all[1] - mu_all[2], mu_all[3] - mu_all[4])
    sigma_unc = 0.5 * np.hypot(sg_all[1] - sg_all[2], sg_all[3] - sg_all[4])
    return mu, sigma, mu_unc, sigma_unc


def _make_prediction(moments: np.ndarray, unc: np.ndarray) -> PriorPrediction:
    mean = np.clip(moments[:, 0], 1e-3, 1 - 1e-3)
    # A sample std on [0, 1] with this mean is at most sqrt(mean (1 - mean)).
    std = np.clip(moments[:, 1], 1e-3, np.sqrt(mean * (1 - mean)))
    mu, sigma, mu_unc, sigma_unc = _moments_to_truncnorm(mean, std, unc[:, 0], unc[:, 1])
    return PriorPrediction(mean, std, unc[:, 0], unc[:, 1], mu, sigma, mu_unc, sigma_unc)


# -- feature-backbone predictor ---------------------------------------------------------------
@dataclass
class PriorPredictor:
    """Feature backbone + regression head + calibrated uncertainty.

    ``fit(items, labels)``: ``items`` are :class:`Problem` s (or question strings), ``labels`` an
    ``(n, 2)`` array of [sample mean, sample std] of the scores. ``predict(items)`` returns a
    :class:`PriorPrediction`. Same seed and data -> same predictions.
    """

    backbone: str = "minilm"
    head: str = "ridge"
    use_metadata: bool = False
    seed: int = 0
    epochs: int = 200
    cv_folds: int = 5
    threads: int | None = 1  # BLAS/OpenMP threads while fitting (None = library default)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        BACKBONES.get(self.backbone)  # fail early on unknown names
        HEADS.get(self.head)
        if self.backbone == "lm":
            raise ValueError("backbone 'lm' is its own predictor: use build_predictor() or LMPriorPredictor")
        self._fitted = False

    # features ----------------------------------------------------------------------------
    def _backbone(self) -> TextBackbone:
        return BACKBONES.build(self.backbone, use_metadata=self.use_metadata)

    def features(self, items: Sequence[Problem | str]) -> np.ndarray:
        """``(n, d)`` features of the questions."""
        return self._backbone().features(items)

    # fit -----------------------------------------------------------------------------------
    def fit(self, items: Sequence[Problem | str], labels: Any, X: np.ndarray | None = None) -> "PriorPredictor":
        """Fit the head and the uncertainty model. ``X``: precomputed ``(n, d)`` features (optional)."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(self.threads):
            return self._fit(items, labels, X)

    def _fit(self, items: Sequence[Problem | str], labels: Any, X: np.ndarray | None) -> "PriorPredictor":
        from sklearn.linear_model import RidgeCV
        from sklearn.model_selection import KFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        Y = check_labels(labels, len(items))
        X = self.features(items) if X is None else np.asarray(X, dtype=float)
        if len(X) != len(Y):
            raise ValueError(f"features have {len(X)} rows, labels {len(Y)}")
        build = lambda: HEADS.build(self.head, self.seed, self.epochs, self.cv_folds)  # noqa: E731
        # Out-of-fold predictions on the training rows only -> residuals for the uncertainty.
        oof = np.empty_like(Y)
        for tr, va in KFold(self.cv_folds, shuffle=True, random_state=self.seed).split(X):
            oof[va] = build().fit(X[tr], Y[tr]).predict(X[va])
        self.model_ = build().fit(X, Y)
        resid2 = (Y - oof) ** 2
        self.unc_models_, self.unc_scale_ = [], []
        for j in range(2):
            m = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(0, 5, 11), gcv_mode="svd"))
            m.fit(X, np.log(resid2[:, j] + 1e-8))
            s2 = np.exp(m.predict(X))
            # Calibrate: out-of-fold z-scores get unit variance.
            self.unc_models_.append(m)
            self.unc_scale_.append(float(np.sqrt(np.mean(resid2[:, j] / s2))))
        self.info = {
            "n_train": int(len(Y)),
            "oof_mae": np.abs(Y - oof).mean(axis=0).tolist(),
            "oof_spearman": [float(_spearman(Y[:, j], oof[:, j])) for j in range(2)],
            "head_params": _head_params(self.model_),
        }
        self._fitted = True
        return self

    # predict -------------------------------------------------------------------------------
    def predict_moments(self, items: Sequence[Problem | str] | None = None,
                        X: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(moments, uncertainty), both ``(n, 2)`` over [mean, std]."""
        if not self._fitted:
            raise RuntimeError("predictor is not fitted; call fit() or load()")
        from threadpoolctl import threadpool_limits

        X = self.features(items) if X is None else np.asarray(X, dtype=float)
        with threadpool_limits(self.threads):
            mom = self.model_.predict(X)
            unc = np.column_stack([self.unc_scale_[j] * np.sqrt(np.exp(self.unc_models_[j].predict(X)))
                                   for j in range(2)])
        return mom, unc

    def predict(self, items: Sequence[Problem | str] | None = None, X: np.ndarray | None = None) -> PriorPrediction:
        return _make_prediction(*self.predict_moments(items, X))

    # persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``<path>/predictor.pkl`` and a readable ``<path>/predictor.json``."""
        if not self._fitted:
            raise RuntimeError("nothing to save: predictor is not fitted")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with open(path / "predictor.pkl", "wb") as f:
            pickle.dump(self, f)
        meta = {"kind": "features", "backbone": self.backbone, "head": self.head,
                "use_metadata": self.use_metadata, "seed": self.seed, "epochs": self.epochs,
                "cv_folds": self.cv_folds, "threads": self.threads, "info": self.info,
                "predicts": "sample mean/std of scores; (mu, sigma) via fits.truncnorm_from_moments"}
        (path / "predictor.json").write_text(json.dumps(meta, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PriorPredictor":
        p = Path(path) / "predictor.pkl"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no saved predictor")
        with open(p, "rb") as f:
            obj = pickle.load(f)
        if not isinstance(obj, cls):
            raise TypeError(f"{p}: holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj


def _head_params(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if hasattr(model, "best_params_"):
        out.update({k: float(v) for k, v in model.best_params_.items()})
    if hasattr(model, "steps") and hasattr(model.steps[-1][1], "alpha_"):
        out["ridge_alpha"] = float(np.atleast_1d(model.steps[-1][1].alpha_)[0])
    if isinstance(model, _KernelRidgeHead):
        out.update(krr_alpha=model.alpha, krr_gamma_scale=model.gamma_scale)
    if isinstance(model, _AverageHead):
        for i, h in enumerate(model.heads):
            out.update({f"{i}.{k}": v for k, v in _head_params(h).items()})
    return out
