"""The theory: the truncated normal on [0, 1] (:mod:`~optscale.theory.truncnorm`), the bound and ``N*``
(:mod:`~optscale.theory.bounds`), batched MLE / MAP fits (:mod:`~optscale.theory.fits`), the other
score-distribution families (:mod:`~optscale.theory.families`) and the fit studies of notebooks 01 / 02
(:mod:`~optscale.theory.studies`).
"""
