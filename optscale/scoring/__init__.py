"""Scoring: one score per sample (and per reasoning step), the stage between sampling and the policies.

- :mod:`~optscale.scoring.scorers`: the scorer interface and registry ``SCORERS`` (self-certainty,
  DeepConf's trace confidences, the LM judges), :func:`~optscale.scoring.scorers.aggregate_steps`;
- :mod:`~optscale.scoring.prm`: Qwen2.5-Math-PRM-style process reward models (the paper's GPU path);
- :mod:`~optscale.scoring.combinations`: a verifier combination fitted on the generator study and
  written to a pool as a score column (``generate combine``).
"""
