"""Build a predictor from the config, or load whichever kind was saved (feature or LM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .heads import BACKBONES
from .lm import LMPriorPredictor
from .prior import PriorPredictor

__all__ = ["build_predictor", "load_predictor"]


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
