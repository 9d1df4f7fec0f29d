"""The policy interface: the :class:`Sample` and :class:`QuestionContext` records, the :class:`Policy`
base class, vote and confidence helpers, and the ``POLICIES`` registry the families register into
(:mod:`optscale.policies` imports them all).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from scipy import special

from ..registry import Registry

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

    @classmethod
    def tuning_grid(cls, calib: Any) -> dict[str, list]:
        """The grid :func:`optscale.evaluation.protocol.tune` searches on ``calib`` (the tuning
        questions only, a :class:`optscale.evaluation.replay.PoolArrays`): the fixed ``grid``,
        unless a policy puts a parameter on the scale of the data it is tuned on."""
        return cls.grid

    # -- calibration hook ---------------------------------------------------------------------
    def prepare(self, calib: Any) -> None:
        """Fit anything learned from data (calibration maps, population priors) on the
        calibration split only. ``calib`` is an :class:`optscale.evaluation.replay.PoolArrays`."""

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
