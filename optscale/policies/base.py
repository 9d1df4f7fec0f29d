"""Stopping policies: one interface, one registry (``POLICIES``).

A policy handles one question at a time. :meth:`Policy.reset` starts a question (with its
:class:`QuestionContext`: the sample budget ``max_N``, an optional prior from the predictor and a
per-question cache shared by all policies); :meth:`Policy.observe` sees one :class:`Sample` at a
time (score, answer class, tokens, token confidences) and returns ``True`` to stop sampling;
:meth:`Policy.select` then returns the position (in observed order) of the chosen sample, or
``None`` when no sample carries an answer. :meth:`Policy.charge` says how many tokens a sample
cost under the policy (DeepConf truncates low-confidence traces; everyone else pays in full).

The same objects drive offline replay (:mod:`optscale.evaluation`) and live sampling
(:mod:`optscale.live`). Answers are compared through equivalence-class labels
(:func:`optscale.grading.answer_classes`, math-verify), never raw strings; label ``-1`` means the
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

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from scipy import special

from .registry import Registry

__all__ = [
    "POLICIES",
    "Policy",
    "PolicyError",
    "Sample",
    "QuestionContext",
    "make_policy",
    "lowest_group_confidence",
    "group_confidences",
    "vote",
]

POLICIES: Registry = Registry("policy")


class PolicyError(ValueError):
    """A policy hyper-parameter outside its range (the message names the policy, the parameter,
    its value and the allowed range)."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _open_interval(lo: float, hi: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _number(v) and lo < v < hi), f"a number in ({lo}, {hi})"


def _integer_at_least(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo), f"an integer >= {lo}"


_PROB = _open_interval(0, 1)
_POSITIVE = ((lambda v: _number(v) and v > 0), "a number > 0")


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One sample as a policy sees it.

    ``index``: position in the pool (or the live stream) — a stable id used for fit caching;
    ``answer_class``: equivalence-class label (-1: no answer); ``group_conf``: DeepConf group
    confidences (1-D, one per sliding window; empty when the pool has no token log-probs)."""

    index: int
    score: float
    answer_class: int
    tokens: float
    correct: bool = False  # only the oracle may read this
    group_conf: np.ndarray = field(default_factory=lambda: np.empty(0))
    conf_window: int = 0


@dataclass
class QuestionContext:
    """Per-question inputs. ``prior``: (mu, sigma[, uncertainty]) of the score distribution from
    the predictor, or None; ``cache``: shared dict for fits (keys include the sample indices)."""

    max_N: int
    prior: tuple[float, ...] | None = None
    cache: dict = field(default_factory=dict)
    question_id: str = ""


def group_confidences(token_confidence: Sequence[float], window: int) -> np.ndarray:
    """DeepConf group confidences of one trace: ``C_t = -token_confidence_t`` (the stored value is
    the mean top-k log-prob, so higher C = more peaked), averaged over sliding windows of
    ``window`` tokens. Returns (max(1, T - window + 1),) or (0,) for an empty trace."""
    c = -np.asarray(token_confidence, dtype=float)
    if c.size == 0:
        return np.empty(0)
    w = min(window, c.size)
    cs = np.concatenate([[0.0], np.cumsum(c)])
    return (cs[w:] - cs[:-w]) / w


def lowest_group_confidence(token_confidence: Sequence[float], window: int) -> float:
    g = group_confidences(token_confidence, window)
    return float(g.min()) if g.size else float("nan")


def _beta_sf_half(a: float, b: float) -> float:
    """P(X > 1/2) for X ~ Beta(a, b) (= I_{1/2}(b, a))."""
    return float(special.betainc(b, a, 0.5))


def vote(classes: Sequence[int], weights: Sequence[float] | None = None) -> tuple[int | None, list[int], list[float]]:
    """Plurality vote over answer classes (-1 ignored). Returns (position of the first sample of
    the winning class or None, class labels sorted by decreasing weight, their weights). Ties go
    to the class seen first. Plain Python: it runs once per observed sample in replay."""
    totals: dict[int, float] = {}
    first: dict[int, int] = {}
    for i, c in enumerate(classes):
        if c < 0:
            continue
        totals[c] = totals.get(c, 0.0) + (1.0 if weights is None else float(weights[i]))
        first.setdefault(c, i)
    if not totals:
        return None, [], []
    labels = sorted(totals, key=lambda c: (-totals[c], first[c]))
    return first[labels[0]], labels, [totals[c] for c in labels]


# ---------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------
class Policy(ABC):
    """Base class. Subclasses set ``name``, ``grid`` and implement :meth:`_stop` / :meth:`select`.

    ``max_N`` of the context always caps sampling; :meth:`observe` returns True at the cap."""

    name: ClassVar[str] = "base"
    grid: ClassVar[dict[str, list]] = {}
    selects_by: ClassVar[str] = "score"  # "score" | "vote" — which reference it is tuned against
    needs_prior: ClassVar[bool] = False
    needs_confidence: ClassVar[bool] = False
    # Allowed values of the hyper-parameters, checked at construction: name -> (test, allowed).
    ranges: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {}

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults())
        if unknown:
            raise TypeError(f"policy {self.name!r}: unknown parameter(s) {sorted(unknown)}; "
                            f"known {sorted(self.defaults())}")
        self.params = {**self.defaults(), **params}
        for k, (ok, allowed) in self.ranges.items():
            if not ok(self.params[k]):
                raise PolicyError(f"policy {self.name!r}: parameter {k}={self.params[k]!r} must be {allowed}")
        for k, v in self.params.items():
            setattr(self, k, v)
        self.seen: list[Sample] = []
        self.ctx: QuestionContext | None = None

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {}

    def label(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in self.params.items()
                         if k in self.grid or k == "N" and v)
        return f"{self.name}({inner})" if inner else self.name

    # -- calibration hook ---------------------------------------------------------------------
    def prepare(self, calib: Any) -> None:
        """Fit anything learned from data (calibration maps, population priors) on the
        calibration split only. ``calib`` is an :class:`optscale.evaluation.PoolArrays`."""

    # -- per question --------------------------------------------------------------------------
    def reset(self, ctx: QuestionContext) -> None:
        self.ctx = ctx
        self.seen = []

    def observe(self, s: Sample) -> bool:
        self.seen.append(s)
        n = len(self.seen)
        if n >= self.ctx.max_N:
            return True
        return bool(self._stop(n))

    def charge(self, s: Sample) -> float:
        return float(s.tokens)

    @abstractmethod
    def _stop(self, n: int) -> bool:
        """Stop after ``n`` observed samples (``self.seen``)?"""

    @abstractmethod
    def select(self) -> int | None:
        """Position in ``self.seen`` of the chosen sample, None if no sample has an answer."""

    # helpers
    def _argmax_score(self) -> int | None:
        if not self.seen:
            return None
        sc = np.array([s.score for s in self.seen])
        has = np.array([s.answer_class >= 0 for s in self.seen])
        if has.any():
            sc = np.where(has, sc, -np.inf)
        return int(np.argmax(sc))

    def _vote(self, weights: Sequence[float] | None = None) -> int | None:
        pos, _, _ = vote([s.answer_class for s in self.seen], weights)
        return pos

    def _top_counts(self) -> tuple[float, float, float]:
        """(leader count, runner-up count, all other non-leader answered votes)."""
        _, _, totals = vote([s.answer_class for s in self.seen])
        if not totals:
            return 0.0, 0.0, 0.0
        v2 = totals[1] if len(totals) > 1 else 0.0
        return float(totals[0]), float(v2), float(sum(totals[1:]))


def make_policy(name: str, **params: Any) -> Policy:
    return POLICIES.build(name, **params)


# ---------------------------------------------------------------------------------------------
# Fixed-N baselines
# ---------------------------------------------------------------------------------------------
@POLICIES.register("bon")
class BestOfN(Policy):
    name = "bon"
    grid = {}
    ranges = {"N": (_integer_at_least(0)[0], "an integer >= 0 (0 = max_N)")}

    @classmethod
    def defaults(cls):
        return {"N": 0}  # 0 = max_N

    def _stop(self, n):
        return self.N > 0 and n >= self.N

    def select(self):
        return self._argmax_score()


@POLICIES.register("majority")
class MajorityVote(BestOfN):
    name = "majority"
    selects_by = "vote"

    def select(self):
        return self._vote()


@POLICIES.register("weighted-vote")
class WeightedVote(BestOfN):
    name = "weighted-vote"

    def select(self):
        return self._vote([s.score for s in self.seen])


@POLICIES.register("oracle")
class Oracle(Policy):
    name = "oracle"

    def _stop(self, n):
        return self.seen[-1].correct

    def select(self):
        for i, s in enumerate(self.seen):
            if s.correct:
                return i
        return self._argmax_score()


# ---------------------------------------------------------------------------------------------
# Vote-based adaptive baselines
# ---------------------------------------------------------------------------------------------
@POLICIES.register("esc")
class ESC(Policy):
    name = "esc"
    selects_by = "vote"
    grid = {"window": [2, 3, 4, 5, 8]}
    ranges = {"window": _integer_at_least(1)}

    @classmethod
    def defaults(cls):
        return {"window": 5}

    def _stop(self, n):
        w = self.window
        if n % w:
            return False
        win = [s.answer_class for s in self.seen[n - w:n]]
        return win[0] >= 0 and all(c == win[0] for c in win)

    def select(self):
        return self._vote()


@POLICIES.register("asc")
class AdaptiveConsistency(Policy):
    name = "asc"
    selects_by = "vote"
    grid = {"threshold": [0.8, 0.9, 0.95, 0.99]}
    # P(p1 > p2 | votes) is >= 1/2 for the leader and < 1: a threshold outside can never stop
    # (>= 1) or always stops (<= 1/2).
    ranges = {"threshold": _open_interval(0.5, 1)}

    @classmethod
    def defaults(cls):
        return {"threshold": 0.95}

    def _stop(self, n):
        v1, v2, _ = self._top_counts()
        if v1 == 0:
            return False
        # P(p1 > p2) with (p1 / (p1 + p2)) ~ Beta(v1 + 1, v2 + 1)
        return _beta_sf_half(v1 + 1, v2 + 1) >= self.threshold

    def select(self):
        return self._vote()


@POLICIES.register("consol")
class ConSol(Policy):
    name = "consol"
    selects_by = "vote"
    grid = {"p1": [0.6, 0.7, 0.8, 0.9], "alpha": [0.05, 0.1]}
    ranges = {"p1": _open_interval(0.5, 1), "alpha": _PROB, "beta": _PROB}

    @classmethod
    def defaults(cls):
        return {"p1": 0.7, "alpha": 0.05, "beta": 0.2}

    def _stop(self, n):
        v1, v2, _ = self._top_counts()
        p0, p1 = 0.5, self.p1
        llr = v1 * math.log(p1 / p0) + v2 * math.log((1 - p1) / (1 - p0))
        return llr >= math.log((1 - self.beta) / self.alpha)

    def select(self):
        return self._vote()


@POLICIES.register("optpo")
class OptPOBayesSPRT(Policy):
    name = "optpo"
    selects_by = "vote"
    grid = {"threshold": [0.8, 0.9, 0.95, 0.99]}
    ranges = {"threshold": _open_interval(0.5, 1), "a0": _POSITIVE, "b0": _POSITIVE}

    @classmethod
    def defaults(cls):
        return {"threshold": 0.95, "a0": 1.0, "b0": 1.0}

    def _stop(self, n):
        v1, _, rest = self._top_counts()
        unanswered = sum(1 for s in self.seen if s.answer_class < 0)
        if v1 == 0:
            return False
        # posterior of the leader's share of all votes (unanswered count against it)
        return _beta_sf_half(self.a0 + v1, self.b0 + rest + unanswered) >= self.threshold

    def select(self):
        return self._vote()


@POLICIES.register("dsc")
class DSC(Policy):
    """Difficulty from the question's prior mean score ``mu`` (predictor output, or the
    calibration population prior). ``easy_quantile``: the fraction of calibration questions (by
    prior mu, highest first) treated as easy; the mu threshold is learned in :meth:`prepare`."""

    name = "dsc"
    selects_by = "vote"
    needs_prior = True
    grid = {"easy_quantile": [0.25, 0.5, 0.75, 1.0], "window": [2, 3, 4]}
    ranges = {"easy_quantile": ((lambda v: _number(v) and 0 <= v <= 1), "a number in [0, 1]"),
              "window": _integer_at_least(1)}

    @classmethod
    def defaults(cls):
        return {"easy_quantile": 0.5, "window": 3, "mu_threshold": None}

    def prepare(self, calib):
        mu = calib.prior_mu()
        if mu is not None and np.isfinite(mu).any():
            self.mu_threshold = float(np.nanquantile(mu, 1 - self.easy_quantile))
            self.params["mu_threshold"] = self.mu_threshold

    def reset(self, ctx):
        super().reset(ctx)
        mu = ctx.prior[0] if ctx.prior is not None else None
        thr = self.mu_threshold
        self.easy = mu is not None and thr is not None and mu >= thr
        self._next_check = self.window

    def _stop(self, n):
        # easy: check after w, 2w, 4w, ... samples; stop when the samples drawn since the last
        # check (the new window) all give the same answer. hard: the full vote (max_N).
        if not self.easy or n < self._next_check:
            return False
        prev = n // 2 if n > self.window else 0
        win = [s.answer_class for s in self.seen[prev:n]]
        self._next_check = 2 * n
        return win[0] >= 0 and all(c == win[0] for c in win)

    def select(self):
        return self._vote()


@POLICIES.register("deepconf")
class DeepConf(Policy):
    name = "deepconf"
    selects_by = "vote"
    needs_confidence = True
    grid = {"eta": [0.1, 0.5, 0.9], "tau": [0.9, 0.95]}
    ranges = {"n_init": _integer_at_least(1), "eta": ((lambda v: _number(v) and 0 < v <= 1), "a number in (0, 1]"),
              "tau": ((lambda v: _number(v) and 0 < v <= 1), "a number in (0, 1]")}

    @classmethod
    def defaults(cls):
        return {"n_init": 4, "eta": 0.1, "tau": 0.95}

    def reset(self, ctx):
        super().reset(ctx)
        self.threshold: float | None = None
        self.kept: list[bool] = []
        self.conf: list[float] = []

    def _cut(self, s: Sample) -> int | None:
        """Window index where the trace drops below the threshold, None if it never does."""
        if self.threshold is None or s.group_conf.size == 0:
            return None
        below = np.flatnonzero(s.group_conf < self.threshold)
        return int(below[0]) if below.size else None

    def observe(self, s):
        cut = self._cut(s)
        self.kept.append(cut is None)
        self.conf.append(float(s.group_conf.min()) if s.group_conf.size else 0.0)
        return super().observe(s)

    def charge(self, s):
        cut = self._cut(s) if len(self.seen) > self.n_init else None
        if cut is None:
            return float(s.tokens)
        return float(min(s.tokens, cut + max(1, min(s.conf_window, int(s.tokens)))))

    def _stop(self, n):
        if n == self.n_init:
            # keep the top eta of warm-up traces: threshold = (1 - eta) quantile
            self.threshold = float(np.quantile(self.conf[:n], 1 - self.eta))
        if n < self.n_init:
            return False
        cls = [s.answer_class if k else -1 for s, k in zip(self.seen, self.kept)]
        _, _, totals = vote(cls, self.conf)
        if not totals or sum(totals) <= 0:
            return False
        return totals[0] / sum(totals) >= self.tau

    def select(self):
        cls = [s.answer_class if k else -1 for s, k in zip(self.seen, self.kept)]
        pos, _, _ = vote(cls, self.conf)
        return pos if pos is not None else self._vote()


# ---------------------------------------------------------------------------------------------
# Score-distribution policies (OptScale and IAS)
# ---------------------------------------------------------------------------------------------
def fit_key(prior: tuple[float, ...] | None, prior_strength: float, indices) -> tuple:
    """Cache key of a fit: the prior and the *set* of sample indices (fits ignore order)."""
    return ("fit", prior, float(prior_strength), frozenset(int(i) for i in indices))


def _fit(ctx: QuestionContext, seen: Sequence[Sample], prior: tuple[float, ...] | None,
         prior_strength: float):
    """Truncated-normal fit of the observed scores, cached by the set of sample indices
    (:func:`optscale.evaluation.warm_fit_cache` fills the cache in one batched fit)."""
    from .fits import fit_truncnorm

    key = fit_key(prior, prior_strength, (s.index for s in seen))
    hit = ctx.cache.get(key)
    if hit is None:
        scores = np.array([s.score for s in seen], dtype=float)
        if prior is None:
            hit = fit_truncnorm(scores)
        else:
            hit = fit_truncnorm(scores, prior=prior, prior_strength=prior_strength)
        ctx.cache[key] = hit
    return hit


class _OptScaleBase(Policy):
    """Shared machinery: target ``s*`` and ``delta`` define the bound ``1 - F(s*)^N >= 1 - delta``.

    ``target``: a fixed score ``s*`` in (0, 1)."""

    grid = {"target": [0.6, 0.7, 0.8, 0.9], "delta": [0.05, 0.1, 0.2, 0.4], "k": [2, 3, 4]}
    ranges = {"target": (_PROB[0], "a score s* in (0, 1)"), "delta": _PROB, "k": _integer_at_least(1),
              "prior_strength": ((lambda v: _number(v) and v >= 0), "a number >= 0")}
    use_prior: ClassVar[bool] = False

    @classmethod
    def defaults(cls):
        return {"target": 0.8, "delta": 0.1, "k": 3, "prior_strength": 1.0, "population_prior": None}

    def prepare(self, calib):
        if self.use_prior:
            self.population_prior = calib.population_prior()
            self.params["population_prior"] = self.population_prior

    def prior_for(self, question_prior: tuple[float, ...] | None) -> tuple[float, ...] | None:
        """(mu0, sigma0[, tau_mu]): the question's prior (a third entry, the predictor's
        uncertainty, becomes the prior scale of mu), else the population prior; None for MLE."""
        if not self.use_prior:
            return None
        p = question_prior if question_prior is not None else self.population_prior
        if p is None:
            raise ValueError(f"policy {self.name!r} needs a prior: pass per-question priors or call prepare()")
        return tuple(float(x) for x in p[:3])

    def fit_prefixes(self, max_N: int) -> list[int]:
        """Numbers of observed samples at which this policy fits (for batched cache warming)."""
        return [self.k] if self.k <= max_N else []

    def _prior(self):
        return self.prior_for(self.ctx.prior)

    def _n_star(self) -> tuple[int, bool]:
        from .bounds import n_star

        prior = self._prior()
        fkey = fit_key(prior, self.prior_strength, (s.index for s in self.seen))
        nkey = ("n_star", fkey, self.target, self.delta, self.ctx.max_N)
        hit = self.ctx.cache.get(nkey)
        if hit is None:
            fit = _fit(self.ctx, self.seen, prior, self.prior_strength)
            N, ok = n_star(float(fit.mu), float(fit.sigma), self.target, self.delta, self.ctx.max_N, len(self.seen))
            hit = self.ctx.cache[nkey] = (int(N), bool(ok))
        return hit

    def select(self):
        return self._argmax_score()


@POLICIES.register("optscale-0")
class OptScale0(_OptScaleBase):
    name = "optscale-0"

    def reset(self, ctx):
        super().reset(ctx)
        self.n_star: int | None = None

    def _stop(self, n):
        if n < self.k:
            return False
        if self.n_star is None:
            self.n_star, _ = self._n_star()
        return n >= self.n_star


@POLICIES.register("optscale-t")
class OptScaleT(OptScale0):
    name = "optscale-t"
    use_prior = True
    needs_prior = True


@POLICIES.register("optscale-seq")
class OptScaleSequential(_OptScaleBase):
    name = "optscale-seq"
    use_prior = True

    @classmethod
    def defaults(cls):
        d = super().defaults()
        d["use_prior"] = True
        return d

    def prepare(self, calib):
        if self.params["use_prior"]:
            self.population_prior = calib.population_prior()
            self.params["population_prior"] = self.population_prior

    def prior_for(self, question_prior):
        if not self.params["use_prior"]:
            return None
        p = question_prior if question_prior is not None else self.population_prior
        return None if p is None else tuple(float(x) for x in p[:3])

    grid = {"target": [0.6, 0.7, 0.8, 0.9], "delta": [0.05, 0.1, 0.2, 0.4]}

    def fit_prefixes(self, max_N):
        return list(range(self.k, max_N + 1))

    def _stop(self, n):
        if n < self.k:
            return False
        n_star, _ = self._n_star()
        return n >= n_star


@POLICIES.register("ias")
class IAS(Policy):
    """``p̂``: mean over a ``k`` peek of P(correct | score), an isotonic map fitted on the
    calibration split in :meth:`prepare` (identity before that). ``N = ceil(log(1-C)/log(1-p̂))``
    clipped to ``[k, max_N]``; select by score."""

    name = "ias"
    grid = {"C": [0.8, 0.9, 0.95, 0.99], "k": [1, 2, 4]}
    ranges = {"C": _PROB, "k": _integer_at_least(1)}

    @classmethod
    def defaults(cls):
        return {"C": 0.9, "k": 2, "calibrator": None}

    def prepare(self, calib):
        from sklearn.isotonic import IsotonicRegression

        s, c = calib.scores.ravel(), calib.correct.ravel().astype(float)
        ok = np.isfinite(s)
        iso = IsotonicRegression(y_min=1e-3, y_max=1 - 1e-3, out_of_bounds="clip").fit(s[ok], c[ok])
        self.calibrator = iso
        self.params["calibrator"] = "isotonic(calibration split)"

    def _p_hat(self) -> float:
        sc = np.array([s.score for s in self.seen], dtype=float)
        p = self.calibrator.predict(sc) if self.calibrator is not None else np.clip(sc, 1e-3, 1 - 1e-3)
        return float(np.clip(np.mean(p), 1e-6, 1 - 1e-6))

    def reset(self, ctx):
        super().reset(ctx)
        self.n_target: int | None = None

    def _stop(self, n):
        if n < self.k:
            return False
        if self.n_target is None:
            p = self._p_hat()
            self.n_target = max(self.k, math.ceil(math.log(1 - self.C) / math.log(1 - p)))
        return n >= self.n_target

    def select(self):
        return self._argmax_score()
