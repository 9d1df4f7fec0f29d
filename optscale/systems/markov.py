"""MarkovScale: sequential revision as a two-state Markov chain.

A question is answered once (round 1), then revised: the model sees its previous answer and
writes a new one (rounds 2, 3, ...). Let ``C`` / ``I`` be "the current answer is correct /
incorrect" and assume the state after each round depends only on the state before it:

    P(C -> C) = a        (keep a correct answer correct)
    P(I -> C) = b        (fix a wrong answer)

With ``p_t`` the accuracy after round ``t`` (``p_1`` = first-round accuracy):

    p_{t+1} = a p_t + b (1 - p_t) = b + (a - b) p_t
    p_t     = p* + (a - b)^{t-1} (p_1 - p*),      p* = b / (1 - a + b)

``p*`` is the stationary accuracy (the limit whenever ``|a - b| < 1``). Revision helps in the
limit exactly when ``p* > p_1``, i.e. ``b (1 - p_1) > (1 - a) p_1``: the expected flow
``I -> C`` exceeds the flow ``C -> I``. Neutral when the flows balance
(``b = (1 - a) p_1 / (1 - p_1)``), harmful otherwise.

Bounds (our derivation; the paper's own proofs were not available here): because ``p_t - p*``
is multiplied by ``(a - b)`` each round, the sequence is monotone for ``a >= b`` and alternates
around ``p*`` with shrinking amplitude for ``a < b``. Hence for every ``t >= 1``

    lower = min(p_1, p_2, p*) <= p_t <= max(p_1, p_2, p*) = upper,

and the neutral line is ``p_t = p_1`` (what no revision gives). For ``a >= b`` the upper bound
is ``max(p_1, p*)`` and is approached but not exceeded by adding rounds.

Estimation: ``a`` and ``b`` are transition frequencies pooled over the revision chains of
calibration questions (``(questions x rounds)`` boolean correctness), with exact
Clopper-Pearson intervals (under the Markov assumption transitions are conditionally
independent given the previous state) and, as a check of that assumption, a question-level
bootstrap. :func:`rounds_that_pay` turns the fitted chain into a number of rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "MarkovChainFit",
    "accuracy_after",
    "accuracy_curve",
    "limit_accuracy",
    "revision_helps",
    "neutral_b",
    "accuracy_bounds",
    "rounds_to_converge",
    "rounds_that_pay",
    "simulate_chains",
    "count_transitions",
    "estimate_chain",
    "bootstrap_chain",
    "revision_prompt",
    "generate_revision_chains",
    "chains_matrix",
]


def _check_prob(name: str, x: float) -> float:
    x = float(x)
    if not (0.0 <= x <= 1.0) or math.isnan(x):
        raise ValueError(f"{name}={x!r} is not a probability in [0, 1]")
    return x


def limit_accuracy(a: float, b: float) -> float:
    """Stationary accuracy ``b / (1 - a + b)``. For ``a = 1, b = 0`` (nothing ever changes) the
    chain has no unique limit and ValueError is raised; use :func:`accuracy_after` instead."""
    a, b = _check_prob("a", a), _check_prob("b", b)
    den = 1.0 - a + b
    if den == 0.0:
        raise ValueError("a=1, b=0: every state is absorbing, the limit depends on p_1")
    return b / den


def accuracy_after(p1: float, a: float, b: float, t: int | np.ndarray) -> float | np.ndarray:
    """Accuracy after round ``t`` (``t >= 1``; round 1 is the first answer), closed form
    ``p* + (a - b)^{t-1} (p_1 - p*)``. ``t`` may be an int array; returns the same shape."""
    p1, a, b = _check_prob("p1", p1), _check_prob("a", a), _check_prob("b", b)
    t_arr = np.asarray(t)
    if np.any(t_arr < 1):
        raise ValueError(f"rounds t must be >= 1, got {t}")
    if 1.0 - a + b == 0.0:  # a=1, b=0: frozen chain
        out = np.full(t_arr.shape, p1, dtype=float)
    else:
        ps = b / (1.0 - a + b)
        out = ps + np.power(a - b, t_arr - 1.0) * (p1 - ps)
    return float(out) if out.ndim == 0 else out


def accuracy_curve(p1: float, a: float, b: float, rounds: int) -> np.ndarray:
    """(rounds,) accuracies after rounds 1..rounds."""
    return np.asarray(accuracy_after(p1, a, b, np.arange(1, rounds + 1)), dtype=float)


def revision_helps(p1: float, a: float, b: float) -> bool:
    """True when the limit accuracy exceeds the first-round accuracy, i.e.
    ``b (1 - p_1) > (1 - a) p_1``."""
    p1, a, b = _check_prob("p1", p1), _check_prob("a", a), _check_prob("b", b)
    return b * (1.0 - p1) - (1.0 - a) * p1 > 1e-12  # the neutral line itself is not "helps"


def neutral_b(p1: float, a: float) -> float:
    """The fix rate ``b`` at which revision leaves accuracy unchanged: ``(1 - a) p_1 / (1 - p_1)``
    (may exceed 1, meaning no ``b`` can compensate the losses)."""
    p1, a = _check_prob("p1", p1), _check_prob("a", a)
    if p1 == 1.0:
        return math.inf if a < 1.0 else 0.0
    return (1.0 - a) * p1 / (1.0 - p1)


def accuracy_bounds(p1: float, a: float, b: float) -> dict[str, float]:
    """``{"lower", "neutral", "upper", "limit"}``: every ``p_t`` (``t >= 1``) lies in
    ``[lower, upper] = [min(p_1, p_2, p*), max(p_1, p_2, p*)]``; ``neutral = p_1``."""
    p2 = float(accuracy_after(p1, a, b, 2))
    try:
        ps = limit_accuracy(a, b)
    except ValueError:
        ps = p1
    vals = (p1, p2, ps)
    return {"lower": min(vals), "neutral": float(p1), "upper": max(vals), "limit": ps}


def rounds_to_converge(p1: float, a: float, b: float, eps: float = 0.01) -> int:
    """Smallest ``t`` with ``|p_t - p*| <= eps``: ``1 + ceil(log(eps / |p_1 - p*|) / log|a - b|)``."""
    if eps <= 0:
        raise ValueError("eps must be > 0")
    ps = limit_accuracy(a, b)
    gap = abs(_check_prob("p1", p1) - ps)
    r = abs(a - b)
    if gap <= eps or r == 0.0:
        return 1 if gap <= eps else 2
    if r >= 1.0:  # pragma: no cover - |a-b|=1 with a gap means a periodic chain
        raise ValueError("|a - b| = 1: the chain oscillates and does not converge")
    return 1 + max(0, math.ceil(math.log(eps / gap) / math.log(r)))


def rounds_that_pay(p1: float, a: float, b: float, cost_per_round: float, max_rounds: int = 16) -> int:
    """Number of rounds ``t`` in ``1..max_rounds`` maximising ``p_t - cost_per_round (t - 1)``
    (accuracy minus the price of the extra rounds, in accuracy units per round). Ties go to fewer
    rounds. ``cost_per_round = 0`` picks the best round (the limit side for ``a >= b``)."""
    if cost_per_round < 0:
        raise ValueError("cost_per_round must be >= 0")
    curve = accuracy_curve(p1, a, b, max_rounds)
    utility = curve - cost_per_round * np.arange(max_rounds)
    return int(np.flatnonzero(utility >= utility.max() - 1e-12)[0]) + 1


def simulate_chains(p1: float, a: float, b: float, rounds: int, n_chains: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(n_chains, rounds) boolean correctness of chains drawn from the Markov model."""
    p1, a, b = _check_prob("p1", p1), _check_prob("a", a), _check_prob("b", b)
    out = np.empty((n_chains, rounds), dtype=bool)
    out[:, 0] = rng.random(n_chains) < p1
    for t in range(1, rounds):
        u = rng.random(n_chains)
        out[:, t] = np.where(out[:, t - 1], u < a, u < b)
    return out


def count_transitions(chains: np.ndarray) -> dict[str, int]:
    """Counts over consecutive rounds of a (chains, rounds) boolean array:
    ``cc, ci, ic, ii`` (from-to) and ``first_correct, n_chains``."""
    c = np.asarray(chains)
    if c.ndim != 2 or c.shape[1] < 2:
        raise ValueError(f"chains must be (chains, rounds>=2), got shape {c.shape}")
    c = c.astype(bool)
    prev, nxt = c[:, :-1], c[:, 1:]
    return {
        "cc": int((prev & nxt).sum()), "ci": int((prev & ~nxt).sum()),
        "ic": int((~prev & nxt).sum()), "ii": int((~prev & ~nxt).sum()),
        "first_correct": int(c[:, 0].sum()), "n_chains": int(c.shape[0]),
    }


@dataclass(frozen=True)
class MarkovChainFit:
    """Point estimates and exact (Clopper-Pearson) intervals of ``p_1``, ``a``, ``b``."""

    p1: float
    a: float
    b: float
    p1_ci: tuple[float, float]
    a_ci: tuple[float, float]
    b_ci: tuple[float, float]
    counts: dict[str, int]
    ci_level: float

    @property
    def limit(self) -> float:
        return limit_accuracy(self.a, self.b)

    def helps(self) -> bool:
        return revision_helps(self.p1, self.a, self.b)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("p1", "a", "b", "ci_level")}
        for k in ("p1", "a", "b"):
            lo, hi = getattr(self, f"{k}_ci")
            d[f"{k}_lo"], d[f"{k}_hi"] = lo, hi
        ok = not (math.isnan(self.a) or math.isnan(self.b) or math.isnan(self.p1))
        d["limit"] = self.limit if ok and (1 - self.a + self.b) > 0 else float("nan")
        d["helps"] = self.helps() if ok else None
        d.update(self.counts)
        return d


def _prop(k: int, n: int, level: float) -> tuple[float, tuple[float, float]]:
    if n == 0:
        return float("nan"), (0.0, 1.0)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return k / n, (float(ci.low), float(ci.high))


def estimate_chain(chains: np.ndarray, ci_level: float = 0.95) -> MarkovChainFit:
    """Maximum-likelihood ``a = cc / (cc + ci)``, ``b = ic / (ic + ii)``, ``p_1`` = share of
    chains correct at round 1, from (chains, rounds) booleans; exact binomial intervals. A state
    never visited before the last round gives NaN with interval (0, 1)."""
    n = count_transitions(chains)
    p1, p1_ci = _prop(n["first_correct"], n["n_chains"], ci_level)
    a, a_ci = _prop(n["cc"], n["cc"] + n["ci"], ci_level)
    b, b_ci = _prop(n["ic"], n["ic"] + n["ii"], ci_level)
    return MarkovChainFit(p1, a, b, p1_ci, a_ci, b_ci, n, ci_level)


def bootstrap_chain(chains: np.ndarray, rng: np.random.Generator, reps: int = 1000,
                    ci_level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``p1, a, b, limit`` from resampling whole chains (questions) with
    replacement; robust to dependence within a chain. Replicates where a state was never
    visited are dropped for that quantity."""
    c = np.asarray(chains, dtype=bool)
    draws: dict[str, list[float]] = {"p1": [], "a": [], "b": [], "limit": []}
    for _ in range(reps):
        f = estimate_chain(c[rng.integers(0, len(c), len(c))], ci_level)
        for k in ("p1", "a", "b"):
            v = getattr(f, k)
            if not math.isnan(v):
                draws[k].append(v)
        if not (math.isnan(f.a) or math.isnan(f.b)) and 1 - f.a + f.b > 0:
            draws["limit"].append(f.limit)
    q = ((1 - ci_level) / 2, 1 - (1 - ci_level) / 2)
    return {k: tuple(float(x) for x in np.quantile(v, q)) if v else (float("nan"),) * 2 for k, v in draws.items()}


# ---------------------------------------------------------------------------------------------
# Real revision chains
# ---------------------------------------------------------------------------------------------
def revision_prompt(template: str, question: str, previous: str) -> str:
    """Fill ``optscale/prompts/revise.txt``-style templates (``{question}``, ``{previous}``)."""
    if "{question}" not in template or "{previous}" not in template:
        raise ValueError("revision template needs {question} and {previous} placeholders")
    return template.replace("{question}", question).replace("{previous}", previous.strip()).strip()


def generate_revision_chains(sampler: Any, problems: Sequence[Any], rounds: int, max_new_tokens: int,
                             seed: int, solve_template: str, revise_template: str,
                             chains_per_question: int = 1) -> pd.DataFrame:
    """Run ``rounds`` rounds of sequential revision per problem with a :class:`Sampler`.

    Round 1 answers the question with ``solve_template``; round ``t > 1`` shows the model its
    round ``t - 1`` solution through ``revise_template`` and samples a new one. Returns one row
    per (question, chain, round): ``question_id, chain, round, text, answer, correct, n_tokens,
    finish_reason``. Seeds derive from ``seed``, question id, chain and round."""
    from ..data.grading import grade
    from ..sampling.base import SampleRequest, derive_seed

    rows = []
    for p in problems:
        prev = [""] * chains_per_question
        for t in range(1, rounds + 1):
            reqs = []
            for c in range(chains_per_question):
                prompt = (solve_template.replace("{question}", p.question).strip() if t == 1
                          else revision_prompt(revise_template, p.question, prev[c]))
                reqs.append(SampleRequest(prompt=prompt, n=1, max_new_tokens=max_new_tokens,
                                          seed=derive_seed(seed, "revise", p.dataset, p.id, c, t),
                                          key=f"{p.dataset}/{p.id}/c{c}/r{t}"))
            for c, comps in enumerate(sampler.generate(reqs)):
                comp = comps[0]
                ans, ok = grade(p.answer, comp.text, comp.finish_reason)  # truncated: stated answers only
                prev[c] = comp.text
                rows.append({"question_id": p.id, "chain": c, "round": t, "text": comp.text, "answer": ans,
                             "gold": p.answer, "correct": bool(ok), "n_tokens": int(comp.n_tokens),
                             "finish_reason": comp.finish_reason})
    return pd.DataFrame(rows)


def chains_matrix(df: pd.DataFrame, column: str = "correct") -> np.ndarray:
    """(questions x chains, rounds) array of ``column`` from :func:`generate_revision_chains` rows."""
    missing = {"question_id", "chain", "round", column} - set(df.columns)
    if missing:
        raise ValueError(f"revision-chain frame lacks column(s) {sorted(missing)}")
    wide = df.pivot_table(index=["question_id", "chain"], columns="round", values=column, aggfunc="first")
    if wide.isna().any().any():
        raise ValueError("revision chains have missing rounds: every chain needs every round")
    return wide.to_numpy()
