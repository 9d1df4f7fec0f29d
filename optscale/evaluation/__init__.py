"""Evaluation: offline replay of policies on pools (:mod:`~optscale.evaluation.replay`), statistics
(:mod:`~optscale.evaluation.statistics`), tuning and the cross-fitted protocol
(:mod:`~optscale.evaluation.protocol`), the config-driven runner of notebooks 05 / 06
(:mod:`~optscale.evaluation.runner`), the paper comparison (:mod:`~optscale.evaluation.paper`), verifier
AUROC (:mod:`~optscale.evaluation.verifier_auroc`), fixed-N curves and pool status
(:mod:`~optscale.evaluation.curves`), figures (:mod:`~optscale.evaluation.figures`,
:mod:`~optscale.evaluation.pool_figures`) and the live driver (:mod:`~optscale.evaluation.live`).
"""
