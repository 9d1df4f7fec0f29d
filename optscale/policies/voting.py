"""Vote-based adaptive baselines: stop when the answer votes are decisive (ESC, Adaptive-Consistency,
ConSol, OptPO's Bayesian SPRT, DSC) or when the traces' confidences say so (DeepConf).
"""

from __future__ import annotations

import math

import numpy as np

from .base import (POLICIES, Policy, Sample, _POSITIVE, _PROB, _beta_sf_half, _integer_at_least, _number,
                   _open_interval, vote)


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
