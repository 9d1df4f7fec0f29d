"""The question-only prior predictor (OptScale^t): question text -> prior for the score distribution.

What the model predicts
-----------------------
The training labels (``optscale.data.load_predictor_labels``) are the **sample mean and sample
standard deviation** of 64 PRM scores per question, not truncated-normal parameters. Every head
here is trained (MSE) on those two sample moments. :meth:`PriorPredictor.predict` returns them
(``mean``, ``std``) and converts them to the truncated-normal parameters on [0, 1] that the fit
module uses, ``(mu, sigma) = optscale.fits.truncnorm_from_moments(mean, std)``, together with an
uncertainty for each (``*_unc``: the calibrated standard deviation of the prediction error), so a
MAP fit can weight the prior.

Parts (name registries)
-----------------------
- ``BACKBONES``: ``"minilm"`` (frozen all-MiniLM-L6-v2 sentence embeddings + cheap text features),
  ``"text"`` (cheap text features only), ``"lm"`` (paper-style: a causal LM with the last layers
  trainable, attention pooling and MLP heads, :class:`LMPriorPredictor`; GPU when available).
- ``HEADS`` for the feature backbones: ``"constant"`` (training mean), ``"ridge"`` (RidgeCV),
  ``"mlp"`` (small sklearn MLP, weight decay chosen by CV), ``"ridge+mlp"`` (their average),
  ``"krr"`` (RBF kernel ridge on standardised features, :class:`_KernelRidgeHead`).

Uncertainty: K-fold out-of-fold residuals on the training set; a ridge model of
``log(residual^2)`` on the features gives a per-question error scale, rescaled so the
out-of-fold z-scores have unit variance (calibrated sigma). :func:`interval_coverage` checks it on
held-out data.

Evaluation helpers: :func:`split_indices` (seeded train/test split), :func:`evaluate_predictions`
(MAE and Spearman with bootstrap CIs), :class:`ScaleCalibrator` (maps predicted priors onto a new
scorer's scale from a few labeled questions of a pool).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .data import DataError, Problem
from .registry import Registry

__all__ = [
    "BACKBONES",
    "HEADS",
    "PriorPrediction",
    "PriorPredictor",
    "LMPriorPredictor",
    "build_predictor",
    "load_predictor",
    "split_indices",
    "question_groups",
    "pool_targets",
    "transfer_evaluate",
    "evaluate_predictions",
    "interval_coverage",
    "ScaleCalibrator",
    "pool_moments",
    "check_labels",
]

TARGETS = ("mean", "std")
BACKBONES: Registry[Any] = Registry("predictor backbone")
HEADS: Registry[Callable[..., Any]] = Registry("predictor head")


# -- inputs -----------------------------------------------------------------------------------
def _texts_metas(items: Sequence[Problem | str]) -> tuple[list[str], list[dict]]:
    texts, metas = [], []
    for i, it in enumerate(items):
        if isinstance(it, Problem):
            texts.append(it.question)
            metas.append({k: it.meta[k] for k in ("level", "subject") if k in it.meta})
        elif isinstance(it, str):
            texts.append(it)
            metas.append({})
        else:
            raise TypeError(f"item {i}: expected a Problem or a question string, got {type(it).__name__}")
    return texts, metas


def check_labels(labels: Any, n: int, where: str = "labels") -> np.ndarray:
    """Validate an ``(n, 2)`` array of [mean, std] labels; errors name the row and field."""
    arr = np.asarray(labels, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(f"{where}: expected shape ({n}, 2) of [mean, std], got {arr.shape}")
    if arr.shape[0] != n:
        raise DataError(f"{where}: {arr.shape[0]} label rows for {n} questions")
    for j, name in enumerate(TARGETS):
        bad = np.flatnonzero(~np.isfinite(arr[:, j]))
        if bad.size:
            raise DataError(f"{where}: row {bad[0]}: field {name!r} is not finite ({arr[bad[0], j]!r})")
    bad = np.flatnonzero((arr[:, 0] < 0) | (arr[:, 0] > 1))
    if bad.size:
        raise DataError(f"{where}: row {bad[0]}: field 'mean' = {arr[bad[0], 0]} outside [0, 1]")
    bad = np.flatnonzero((arr[:, 1] < 0) | (arr[:, 1] > 0.5))
    if bad.size:
        raise DataError(f"{where}: row {bad[0]}: field 'std' = {arr[bad[0], 1]} outside [0, 0.5]")
    return arr


# -- backbones (feature extractors) -----------------------------------------------------------
@dataclass
class TextBackbone:
    """Cheap text features (+ MATH level/subject one-hots when ``use_metadata``)."""

    use_metadata: bool = False

    def features(self, items: Sequence[Problem | str]) -> np.ndarray:
        """``(n, d)`` float array."""
        from .features import metadata_features, text_features

        texts, metas = _texts_metas(items)
        parts = [text_features(texts)]
        if self.use_metadata:
            parts.append(metadata_features(metas))
        return np.hstack(parts)


@dataclass
class MiniLMBackbone(TextBackbone):
    """all-MiniLM-L6-v2 embeddings (384, cached on disk) + :class:`TextBackbone` features."""

    def features(self, items: Sequence[Problem | str]) -> np.ndarray:
        from .features import embed_minilm

        texts, _ = _texts_metas(items)
        return np.hstack([embed_minilm(texts), super().features(items)])


BACKBONES.register("text", TextBackbone)
BACKBONES.register("minilm", MiniLMBackbone)
BACKBONES.register("lm", "optscale.prior:LMPriorPredictor")


# -- heads ------------------------------------------------------------------------------------
class _ConstantHead:
    def fit(self, X: np.ndarray, Y: np.ndarray) -> "_ConstantHead":
        self.value_ = Y.mean(axis=0)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.tile(self.value_, (len(X), 1))


class _AverageHead:
    def __init__(self, heads: list[Any]):
        self.heads = heads

    def fit(self, X: np.ndarray, Y: np.ndarray) -> "_AverageHead":
        for h in self.heads:
            h.fit(X, Y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.mean([h.predict(X) for h in self.heads], axis=0)


def _ridge(seed: int, epochs: int, cv: int) -> Any:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Alpha chosen by efficient leave-one-out on the training rows only.
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 25), gcv_mode="svd"))


def _mlp(seed: int, epochs: int, cv: int) -> Any:
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn.compose import TransformedTargetRegressor

    # One hidden layer, strong weight decay, early stopping on 15% of the training rows; inputs
    # and targets standardised (the label spread is ~0.04, far below the MLP's initial scale).
    mlp = MLPRegressor(hidden_layer_sizes=(128,), alpha=10.0, learning_rate_init=1e-3, max_iter=max(epochs, 5),
                       early_stopping=True, validation_fraction=0.15, n_iter_no_change=10,
                       batch_size=128, random_state=seed)
    return TransformedTargetRegressor(make_pipeline(StandardScaler(), mlp), transformer=StandardScaler())


def _ridge_mlp(seed: int, epochs: int, cv: int) -> Any:
    return _AverageHead([_ridge(seed, epochs, cv), _mlp(seed, epochs, cv)])


class _KernelRidgeHead:
    """RBF kernel ridge on standardised features, targets centred (multi-output).

    ``gamma = gamma_scale / d`` for ``d`` features, so the kernel width follows the standardised
    squared distance (about ``2 d`` between unrelated rows). Defaults (``gamma_scale=1``,
    ``alpha=0.3``) were chosen by 5-fold CV inside the 80% training part of the MATH labels
    (split seed 0; out-of-fold Spearman of the mean 0.61 vs 0.55 for ridge on the same features),
    never on the held-out part or MATH-500.
    """

    def __init__(self, alpha: float = 0.3, gamma_scale: float = 1.0):
        self.alpha, self.gamma_scale = alpha, gamma_scale

    def fit(self, X: np.ndarray, Y: np.ndarray) -> "_KernelRidgeHead":
        from sklearn.kernel_ridge import KernelRidge
        from sklearn.preprocessing import StandardScaler

        X, Y = np.asarray(X, float), np.asarray(Y, float)
        self.scaler_ = StandardScaler().fit(X)
        self.offset_ = Y.mean(axis=0)
        self.model_ = KernelRidge(alpha=self.alpha, kernel="rbf", gamma=self.gamma_scale / X.shape[1])
        self.model_.fit(self.scaler_.transform(X), Y - self.offset_)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(n, k)`` predictions for ``(n, d)`` features."""
        out = self.model_.predict(self.scaler_.transform(np.asarray(X, float)))
        return out.reshape(len(X), -1) + self.offset_


HEADS.register("constant", lambda seed, epochs, cv: _ConstantHead())
HEADS.register("krr", lambda seed, epochs, cv: _KernelRidgeHead())
HEADS.register("ridge", _ridge)
HEADS.register("mlp", _mlp)
HEADS.register("ridge+mlp", _ridge_mlp)


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
    from .fits import truncnorm_from_moments

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


# -- paper-style LM backbone ------------------------------------------------------------------
@dataclass
class LMPriorPredictor:
    """Causal-LM encoder (last ``trainable_layers`` trainable), attention pooling, MLP heads.

    The OptScale paper's predictor, with ``model`` a local path or hub id (e.g.
    DeepSeek-R1-Distill-Qwen-1.5B, needs a GPU and the weights). ``model_config`` (a
    ``transformers`` config dict, e.g. a tiny ``Qwen2Config``) builds a randomly initialised model
    instead; the CPU test uses that. ``tokenizer`` defaults to ``model``; with ``model_config`` it
    must be given (the bundled MiniLM WordPiece tokenizer works). Trained with MSE on
    [mean, std]; uncertainty is the RMSE on a seeded validation slice of the training rows.
    """

    model: str | None = None
    model_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    trainable_layers: int = 2
    mlp_hidden: int = 256
    epochs: int = 3
    batch_size: int = 8
    lr: float = 1e-4
    head_lr: float = 1e-3
    max_length: int = 512
    val_fraction: float = 0.1
    seed: int = 0
    device: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.model_config is None):
            raise ValueError("LMPriorPredictor: give exactly one of model (path/id) or model_config (dict)")
        self._net = None

    def _device(self) -> str:
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def _build(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        torch.manual_seed(self.seed)
        if self.model_config is not None:
            conf = dict(self.model_config)
            mtype = conf.pop("model_type")
            base = AutoModel.from_config(AutoConfig.for_model(mtype, **conf))
        else:
            base = AutoModel.from_pretrained(self.model, torch_dtype=torch.bfloat16 if self._device() == "cuda" else None)
        tok_src = self.tokenizer or self.model
        if tok_src is None:
            raise ValueError("LMPriorPredictor: model_config needs an explicit tokenizer path")
        self._tok = AutoTokenizer.from_pretrained(tok_src)
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token or self._tok.unk_token
        self._net = _LMNet(base, self.trainable_layers, self.mlp_hidden).to(self._device())

    def _batches(self, texts: list[str]):
        for i in range(0, len(texts), self.batch_size):
            enc = self._tok(texts[i:i + self.batch_size], padding=True, truncation=True,
                            max_length=self.max_length, return_tensors="pt")
            yield i, {k: v.to(self._device()) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def fit(self, items: Sequence[Problem | str], labels: Any) -> "LMPriorPredictor":
        import torch

        texts, _ = _texts_metas(items)
        Y = check_labels(labels, len(texts))
        self._build()
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(len(texts))
        n_val = max(1, int(round(self.val_fraction * len(texts)))) if len(texts) > 4 else 0
        val, tr = perm[:n_val], perm[n_val:]
        net = self._net
        groups = [{"params": [p for p in net.base.parameters() if p.requires_grad], "lr": self.lr},
                  {"params": list(net.pool.parameters()) + list(net.heads.parameters()), "lr": self.head_lr}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.01)
        gen = torch.Generator().manual_seed(self.seed)
        losses = []
        for _ in range(self.epochs):
            net.train()
            order = tr[torch.randperm(len(tr), generator=gen).numpy()]
            tr_texts = [texts[i] for i in order]
            for i, batch in self._batches(tr_texts):
                y = torch.as_tensor(Y[order[i:i + self.batch_size]], dtype=torch.float32, device=self._device())
                loss = torch.nn.functional.mse_loss(net(**batch), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        if n_val:
            pv = self._raw_predict([texts[i] for i in val])
            self.unc_ = np.sqrt(np.mean((pv - Y[val]) ** 2, axis=0))
        else:
            self.unc_ = Y.std(axis=0)
        self.info = {"n_train": int(len(tr)), "n_val": int(n_val), "final_loss": losses[-1] if losses else None,
                     "val_rmse": self.unc_.tolist()}
        return self

    def _raw_predict(self, texts: list[str]) -> np.ndarray:
        import torch

        if self._net is None:
            raise RuntimeError("predictor is not fitted; call fit() or load()")
        self._net.eval()
        out = np.empty((len(texts), 2))
        with torch.no_grad():
            for i, batch in self._batches(texts):
                out[i:i + len(batch["input_ids"])] = self._net(**batch).float().cpu().numpy()
        return out

    def predict_moments(self, items: Sequence[Problem | str]) -> tuple[np.ndarray, np.ndarray]:
        texts, _ = _texts_metas(items)
        mom = self._raw_predict(texts)
        return mom, np.tile(self.unc_, (len(texts), 1))

    def predict(self, items: Sequence[Problem | str]) -> PriorPrediction:
        return _make_prediction(*self.predict_moments(items))

    def save(self, path: str | Path) -> Path:
        """Trainable weights (all weights when the base model was built from a config)."""
        import torch

        if self._net is None:
            raise RuntimeError("nothing to save: predictor is not fitted")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        full = self.model_config is not None
        state = {k: v for k, v in self._net.state_dict().items()
                 if full or not k.startswith("base.") or self._net.is_trainable(k)}
        torch.save(state, path / "lm_predictor.pt")
        meta = {k: v for k, v in asdict(self).items()}
        meta.update(kind="lm", unc=self.unc_.tolist(), full_state=full)
        (path / "predictor.json").write_text(json.dumps(meta, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LMPriorPredictor":
        import torch

        path = Path(path)
        meta = json.loads((path / "predictor.json").read_text())
        unc = np.asarray(meta.pop("unc"))
        for k in ("kind", "full_state"):
            meta.pop(k, None)
        obj = cls(**meta)
        obj._build()
        state = torch.load(path / "lm_predictor.pt", map_location=obj._device())
        missing, unexpected = obj._net.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{path}: unexpected weights {unexpected[:3]}")
        obj.unc_ = unc
        return obj


def _lm_net_class():
    import torch
    from torch import nn

    class AttentionPooling(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.score = nn.Linear(d, 1)

        def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            w = self.score(h).squeeze(-1).float().masked_fill(mask == 0, float("-inf"))
            a = torch.softmax(w, dim=-1).to(h.dtype)
            return torch.einsum("bt,btd->bd", a, h)

    class LMNet(nn.Module):
        def __init__(self, base: nn.Module, trainable_layers: int, hidden: int):
            super().__init__()
            self.base = base
            layers = _decoder_layers(base)
            for p in base.parameters():
                p.requires_grad = False
            self._trainable_prefixes = []
            n = len(layers)
            for i in range(max(0, n - trainable_layers), n):
                for p in layers[i].parameters():
                    p.requires_grad = True
            for name, p in base.named_parameters():
                if p.requires_grad:
                    self._trainable_prefixes.append("base." + name)
            norm = getattr(base, "norm", None)
            if norm is not None and trainable_layers > 0:
                for name, p in norm.named_parameters():
                    p.requires_grad = True
                    self._trainable_prefixes.append("base.norm." + name)
            d = base.config.hidden_size
            self.pool = AttentionPooling(d)
            self.heads = nn.ModuleList([
                nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, 1))
                for _ in range(2)])

        def is_trainable(self, key: str) -> bool:
            return key in self._trainable_prefixes

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            z = self.pool(h, attention_mask).float()
            mean = torch.sigmoid(self.heads[0](z))
            std = 0.5 * torch.sigmoid(self.heads[1](z))
            return torch.cat([mean, std], dim=-1)

    return LMNet


def _decoder_layers(base: Any) -> Any:
    for attr in ("layers", "h", "decoder.layers"):
        obj = base
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    raise ValueError(f"{type(base).__name__}: cannot find the decoder layers to unfreeze")


def _LMNet(base: Any, trainable_layers: int, hidden: int) -> Any:
    return _lm_net_class()(base, trainable_layers, hidden)


# -- factory ----------------------------------------------------------------------------------
def build_predictor(pcfg: Any, **kw: Any) -> PriorPredictor | LMPriorPredictor:
    """A predictor from a :class:`optscale.config.PredictorConfig` (keyword args override)."""
    if pcfg.backbone == "lm":
        args = dict(model=pcfg.lm_model, trainable_layers=pcfg.lm_trainable_layers,
                    epochs=pcfg.lm_epochs, seed=pcfg.split_seed)
        args.update(kw)
        return BACKBONES.get("lm")(**args)
    args = dict(backbone=pcfg.backbone, head=pcfg.head, use_metadata=pcfg.use_metadata,
                seed=pcfg.split_seed, epochs=pcfg.epochs, cv_folds=pcfg.cv_folds)
    args.update(kw)
    return PriorPredictor(**args)


def load_predictor(path: str | Path) -> PriorPredictor | LMPriorPredictor:
    """Load whichever predictor kind was saved at ``path``."""
    meta_path = Path(path) / "predictor.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no saved predictor")
    kind = json.loads(meta_path.read_text()).get("kind")
    return LMPriorPredictor.load(path) if kind == "lm" else PriorPredictor.load(path)


# -- splits and evaluation --------------------------------------------------------------------
def split_indices(n: int, test_fraction: float, seed: int,
                  groups: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, test) index arrays covering ``range(n)``, each sorted.

    ``groups`` (length ``n``, e.g. question-text hashes): rows of one group go to the same side,
    so a question repeated in the data cannot sit in both train and test.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    if groups is None:
        perm = np.random.default_rng(seed).permutation(n)
        n_test = int(round(test_fraction * n))
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for n={n}")
    _, gid = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(gid.max() + 1)
    test_groups, count = set(), 0
    sizes = np.bincount(gid)
    for g in order:
        if count >= test_fraction * n:
            break
        test_groups.add(int(g))
        count += sizes[g]
    is_test = np.isin(gid, list(test_groups))
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def question_groups(items: Sequence[Problem | str]) -> list[str]:
    """Grouping key for :func:`split_indices`: the whitespace-normalised question text."""
    texts, _ = _texts_metas(items)
    return [" ".join(t.split()).lower() for t in texts]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def evaluate_predictions(pred: np.ndarray, true: np.ndarray, reps: int = 1000, seed: int = 0,
                         ci: float = 0.95, names: Sequence[str] = ("mu", "sigma")) -> pd.DataFrame:
    """MAE and Spearman per column with percentile bootstrap CIs (questions resampled).

    ``pred``, ``true``: ``(n, k)``. A constant column has Spearman NaN. Returns one row per
    column: ``target, mae, mae_lo, mae_hi, spearman, spearman_lo, spearman_hi, n``.
    """
    from scipy.stats import rankdata

    pred, true = np.atleast_2d(np.asarray(pred, float)), np.atleast_2d(np.asarray(true, float))
    if pred.shape != true.shape:
        raise ValueError(f"pred {pred.shape} and true {true.shape} differ")
    rng = np.random.default_rng(seed)
    n = len(true)
    idx = rng.integers(0, n, size=(reps, n))
    alpha = (1 - ci) / 2
    rows = []
    for j, name in enumerate(names[: pred.shape[1]]):
        p, t = pred[:, j], true[:, j]
        err = np.abs(p - t)
        maes = err[idx].mean(axis=1)
        if np.ptp(p) == 0:
            rhos = np.full(reps, np.nan)
        else:
            rp, rt = rankdata(p[idx], axis=1), rankdata(t[idx], axis=1)
            rp -= rp.mean(axis=1, keepdims=True)
            rt -= rt.mean(axis=1, keepdims=True)
            rhos = (rp * rt).sum(1) / np.sqrt((rp ** 2).sum(1) * (rt ** 2).sum(1))
        rows.append({
            "target": name, "mae": err.mean(), "mae_lo": np.quantile(maes, alpha), "mae_hi": np.quantile(maes, 1 - alpha),
            "spearman": _spearman(p, t),
            "spearman_lo": np.nanquantile(rhos, alpha) if np.isfinite(rhos).any() else np.nan,
            "spearman_hi": np.nanquantile(rhos, 1 - alpha) if np.isfinite(rhos).any() else np.nan,
            "n": n,
        })
    return pd.DataFrame(rows)


def interval_coverage(pred: np.ndarray, unc: np.ndarray, true: np.ndarray, level: float = 0.9) -> np.ndarray:
    """Fraction of ``true`` inside ``pred +- z * unc`` per column (``(n, k)`` arrays -> ``(k,)``)."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + level / 2)
    return (np.abs(np.asarray(true) - np.asarray(pred)) <= z * np.asarray(unc)).mean(axis=0)


# -- transfer to a new scorer -----------------------------------------------------------------
def pool_moments(scores: np.ndarray) -> np.ndarray:
    """Per-question sample [mean, std] (ddof=0, like the labels) of a ``(questions, n)`` score
    array, ignoring NaN; rows with fewer than 2 finite scores are NaN."""
    s = np.asarray(scores, dtype=float)
    cnt = np.isfinite(s).sum(axis=1)
    with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
        sup.filter(RuntimeWarning)
        m, sd = np.nanmean(s, axis=1), np.nanstd(s, axis=1)
    bad = cnt < 2
    m[bad], sd[bad] = np.nan, np.nan
    return np.column_stack([m, sd])


@dataclass
class ScaleCalibrator:
    """Map predicted [mean, std] (MATH-PRM scale) onto a new scorer's scale.

    Fit on a few labeled questions of the target pool: per target, a least-squares line
    ``new = a + b * predicted`` with the slope shrunk towards 0 (``shrink`` pseudo-questions at
    slope 0) and clipped at ``b >= 0`` -- with few or uninformative questions it falls back to the
    target pool's constant. The uncertainty is the leave-one-out RMSE of that map.
    """

    shrink: float = 2.0

    def fit(self, pred_moments: np.ndarray, true_moments: np.ndarray) -> "ScaleCalibrator":
        P, T = np.asarray(pred_moments, float), np.asarray(true_moments, float)
        ok = np.isfinite(T).all(axis=1) & np.isfinite(P).all(axis=1)
        P, T = P[ok], T[ok]
        if len(T) < 2:
            raise ValueError(f"ScaleCalibrator needs >= 2 labeled questions, got {len(T)}")
        self.coef_ = np.array([self._line(P[:, j], T[:, j]) for j in range(2)])  # (2, 2): a, b
        loo = np.empty_like(T)
        for i in range(len(T)):
            keep = np.arange(len(T)) != i
            for j in range(2):
                a, b = self._line(P[keep, j], T[keep, j])
                loo[i, j] = a + b * P[i, j]
        self.unc_ = np.sqrt(np.mean((loo - T) ** 2, axis=0))
        self.n_ = int(len(T))
        return self

    def _line(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        xm, ym = x.mean(), y.mean()
        sxx = ((x - xm) ** 2).sum()
        b = ((x - xm) * (y - ym)).sum() / (sxx + self.shrink * max(x.var(), 1e-6))
        b = max(b, 0.0)
        return float(ym - b * xm), float(b)

    def transform(self, pred_moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(moments, uncertainty) on the new scale, both ``(n, 2)``."""
        P = np.asarray(pred_moments, float)
        out = self.coef_[:, 0] + self.coef_[:, 1] * P
        out[:, 0] = np.clip(out[:, 0], 1e-3, 1 - 1e-3)
        out[:, 1] = np.clip(out[:, 1], 1e-3, 0.5)
        return out, np.tile(self.unc_, (len(P), 1))

    def predict(self, pred_moments: np.ndarray) -> PriorPrediction:
        return _make_prediction(*self.transform(pred_moments))


def pool_targets(pool: Any, scorer: str) -> tuple[np.ndarray, np.ndarray]:
    """(question_index ``(q,)``, per-question [mean, std] ``(q, 2)``) of one scorer in a pool.

    Rows follow :meth:`optscale.pools.Pool.matrix` (questions sorted by ``question_index``).
    """
    col = f"score__{scorer}"
    if col not in pool.df.columns:
        raise KeyError(f"pool {pool.path}: no column {col!r}; scorers: {pool.scorers}")
    n = pool.n_per_question
    qidx = np.sort(pool.df.loc[pool.df["sample_index"] < n, "question_index"].unique())
    return qidx.astype(int), pool_moments(pool.scores(scorer))


def transfer_evaluate(pred_moments: np.ndarray, true_moments: np.ndarray, n_labeled: int, seed: int,
                      reps: int = 200, eligible: np.ndarray | None = None) -> tuple[pd.DataFrame, ScaleCalibrator | None]:
    """Fit :class:`ScaleCalibrator` on ``n_labeled`` seeded questions, evaluate on the rest.

    ``eligible``: boolean mask or indices of the questions that may be labeled (e.g. the
    evaluation's calibration split, so that a prior used on the test split never saw a test
    question's scores); ``None``: any question. Returns a table (rows: ``raw`` prediction,
    ``calibrated`` prediction, ``constant`` = labeled questions' mean; columns from
    :func:`evaluate_predictions`) and the calibrator. With fewer than 2 eligible labeled
    questions or fewer than 3 left to evaluate on, the table is empty and the calibrator None.
    """
    P, T = np.asarray(pred_moments, float), np.asarray(true_moments, float)
    ok = np.flatnonzero(np.isfinite(T).all(axis=1))
    if eligible is None:
        can_label = ok
    else:
        e = np.asarray(eligible)
        e = np.flatnonzero(e) if e.dtype == bool else e.astype(int)
        can_label = np.intersect1d(ok, e)
    perm = np.random.default_rng(seed).permutation(can_label)
    lab = np.sort(perm[:n_labeled])
    rest = np.setdiff1d(ok, lab)
    if len(lab) < 2 or len(rest) < 3:  # len(lab) <= n_labeled, so this also covers n_labeled < 2
        return pd.DataFrame(), None
    cal = ScaleCalibrator().fit(P[lab], T[lab])
    rows = []
    for name, pred in (("raw", P[rest]), ("calibrated", cal.transform(P[rest])[0]),
                       ("constant", np.tile(T[lab].mean(axis=0), (len(rest), 1)))):
        ev = evaluate_predictions(pred, T[rest], reps=reps, seed=seed, names=TARGETS)
        ev.insert(0, "predictor", name)
        rows.append(ev)
    return pd.concat(rows, ignore_index=True), cal
