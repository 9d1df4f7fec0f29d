"""Fixed-N baselines: Best-of-N, majority vote, score-weighted vote, and the oracle (an upper bound).
"""

from __future__ import annotations

from .base import POLICIES, Policy, _integer_at_least


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
