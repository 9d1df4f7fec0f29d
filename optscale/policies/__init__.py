"""Stopping policies: one interface, one registry (``POLICIES``).

A policy handles one question at a time. :meth:`Policy.reset` starts a question (with its
:class:`QuestionContext`: the sample budget ``max_N``, an optional prior from the predictor and a
per-question cache shared by all policies); :meth:`Policy.observe` sees one :class:`Sample` at a
time (score, answer class, tokens, token confidences) and returns ``True`` to stop sampling;
:meth:`Policy.select` then returns the position (in observed order) of the chosen sample, or
``None`` when no sample carries an answer. :meth:`Policy.charge` says how many tokens a sample
cost under the policy (DeepConf truncates low-confidence traces; everyone else pays in full).

The same objects drive offline replay (:mod:`optscale.evaluation`) and live sampling
(:mod:`optscale.evaluation.live`). Answers are compared through equivalence-class labels
(:func:`optscale.data.grading.answer_classes`, math-verify), never raw strings; label ``-1`` means the
sample gave no answer and never wins a vote.

Registered policies (constructor keywords are the hyper-parameters; ``grid`` lists the values
tuned on the calibration split):

=====================  =========================================================================
``bon``                Best-of-N: exactly ``N`` samples, select the highest score.
``majority``           Self-consistency: ``N`` samples, most frequent answer class.
``weighted-vote``      ``N`` samples, answer class with the largest score sum.
``optscale-0``         OptScale⁰: peek ``k`` samples, truncated-normal MLE, ``N*`` from the bound
                       ``1 - F(s*)^N >= 1 - delta``; select by score.
``optscale-t``         OptScaleᵗ: as above with the MAP fit under the question's prior (predictor
                       output, else the calibration population prior).
``optscale-seq``       Sequential OptScale: re-fit after every sample from ``n_min`` on and stop
                       as soon as the bound is met with the samples already drawn.
``esc``                Early-stopping SC (Li et al. 2024): windows of ``window`` samples; stop
                       after the first window whose answers are all equal; majority vote.
``asc``                Adaptive-Consistency (Aggarwal et al. 2023), Beta criterion:
                       ``P(p_1 > p_2 | votes) >= threshold`` for the two leading answers.
``dsc``                Difficulty-adaptive SC (Wang et al. 2024) with difficulty from the
                       predictor prior (never the oracle): easy questions use ESC with a
                       doubling window, hard ones the full vote.
``consol``             ConSol (SPRT on the vote): leader vs runner-up Wald SPRT, H1 ``p=p1``
                       vs H0 ``p=0.5``.
``optpo``              OptPO's Bayesian SPRT rule: Beta posterior of the leader's share against
                       all other votes, stop when ``P(share > 1/2) >= threshold``.
``ias``                Park et al.'s instance-adaptive rule ``N = ceil(log(1-C) / log(1-p̂))``,
                       ``p̂`` = mean calibrated P(correct | score) of a ``k`` peek; select by score.
``deepconf``           DeepConf-online: warm-up ``n_init`` traces set a confidence threshold
                       (keep the top ``eta``); later traces whose lowest group confidence drops
                       below it are cut there (tokens saved, trace dropped); stop when the
                       confidence-weighted vote reaches ``tau``; confidence-weighted vote.
``oracle``             Stop at the first correct sample (the physical token limit).
=====================  =========================================================================
"""

from . import base, fixed, score_distribution, voting  # noqa: F401  (each family registers its policies in POLICIES)
from .base import (POLICIES, Policy, PolicyError, QuestionContext, Sample, group_confidences,  # noqa: F401
                   lowest_group_confidence, make_policy, vote)

__all__ = base.__all__
