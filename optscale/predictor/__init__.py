"""The question-only prior predictor (OptScaleᵗ): features (:mod:`~optscale.predictor.features`), backbones
and heads (:mod:`~optscale.predictor.heads`), the feature predictor (:mod:`~optscale.predictor.prior`), the
LM predictor (:mod:`~optscale.predictor.lm`), building / loading either (:mod:`~optscale.predictor.factory`),
metrics (:mod:`~optscale.predictor.metrics`) and transfer to a new scorer (:mod:`~optscale.predictor.calibration`).
"""
