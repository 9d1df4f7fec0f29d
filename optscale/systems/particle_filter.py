"""Particle filtering for inference-time scaling (Puri et al., arXiv 2502.01618).

Reasoning as a state-space model: a particle is a partial solution, one transition is one
reasoning step (the sampler continues the particle's text up to the next blank line,
``SampleRequest(prefix=..., stop=("\\n\\n",))``), and the scorer's reward for the newest step
plays the role of the observation likelihood. Each step:

1. extend every unfinished particle by one step (particles sharing a text share one request);
2. score the partial solutions and take the step reward (``reward_of``: the last step score by
   default, as in the paper's best setting; ``mean`` / ``min`` / ``prod`` also available). The
   step scores come from a judge over the partial texts (``score_fn``, e.g. the LM judge), or,
   with ``score_fn=None``, from the generator itself: each new step's self-certainty
   ``exp(mean token log-prob)`` (:func:`step_certainty`), which costs no model call;
3. weights ``w = softmax(reward / temperature)`` over all particles (finished ones included:
   they stay in the population but are not extended);
4. resample ``N`` indices from ``w`` (``multinomial`` or ``systematic``; registry
   :data:`RESAMPLERS`).

The loop ends when every particle has finished (EOS) or after ``max_steps`` steps. The answer
is the particle with the highest final reward (``best``) or the answer class with the largest
total weight (``weighted-vote``; classes by :func:`optscale.data.grading.answer_classes`). A particle
that did not end with EOS (cut at ``max_tokens``, or still open when the steps ran out) is graded
as a truncated sample: only a stated answer counts (:attr:`Particle.answer`).

Pool baselines at equal rollouts (Best-of-N by score, weighted majority, plain majority) are
in :func:`pool_baseline_curves`; intervals come from a question-level bootstrap
(:func:`bootstrap_ci`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..data.grading import answer_classes, extract_answer, is_equivalent
from ..registry import Registry
from ..sampling.base import Completion, SampleRequest, derive_seed
from ..scoring.scorers import aggregate_steps

__all__ = [
    "RESAMPLERS",
    "softmax_weights",
    "resample_multinomial",
    "resample_systematic",
    "Particle",
    "PFResult",
    "particle_filter",
    "select_answer",
    "pool_baseline_curves",
    "bootstrap_ci",
    "scorer_step_fn",
    "step_certainty",
    "live_bon",
    "load_pool_arrays",
]

RESAMPLERS: Registry = Registry("resampler")


def softmax_weights(rewards: Sequence[float], temperature: float) -> np.ndarray:
    """(n,) normalised weights ``softmax(rewards / temperature)`` (numerically stable)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    r = np.asarray(rewards, dtype=float)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)):
        raise ValueError(f"rewards must be a non-empty 1-D finite array, got {rewards!r}")
    z = r / temperature
    z -= z.max()
    w = np.exp(z)
    return w / w.sum()


def _check_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or w.size == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("weights must be a non-empty 1-D array of non-negative numbers with a positive sum")
    return w / w.sum()


@RESAMPLERS.register("multinomial")
def resample_multinomial(weights: Sequence[float], rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """(n,) ancestor indices drawn i.i.d. from ``weights`` (default ``n = len(weights)``).
    Each index's count is Binomial(n, w_i): expected count ``n w_i``."""
    w = _check_weights(weights)
    n = w.size if n is None else n
    return rng.choice(w.size, size=n, p=w)


@RESAMPLERS.register("systematic")
def resample_systematic(weights: Sequence[float], rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """(n,) ancestor indices by systematic resampling: one uniform ``u ~ U[0, 1/n)``, points
    ``u + k/n``, inverted through the weights' CDF. Unbiased (expected count ``n w_i``) with
    every count within one of ``n w_i`` (floor or ceil), so less resampling noise."""
    w = _check_weights(weights)
    n = w.size if n is None else n
    points = (rng.random() + np.arange(n)) / n
    cdf = np.cumsum(w)
    cdf[-1] = 1.0
    return np.searchsorted(cdf, points, side="right").clip(0, w.size - 1)


@dataclass
class Particle:
    text: str = ""
    done: bool = False
    step_scores: tuple[float, ...] = ()
    n_tokens: int = 0  # tokens generated along this particle's own history
    finish_reason: str | None = None  # how its last step ended: "stop" (EOS), "stop_string", "length"

    @property
    def finished(self) -> bool:
        """Ended by the model (EOS), or no reason recorded. A particle cut at ``max_tokens``, or
        still open at a step boundary when the step budget ran out, is a truncated sample."""
        return self.finish_reason in (None, "stop")

    @property
    def answer(self) -> str | None:
        """The stated answer; the last-number fallback only for a finished particle (the grading
        rule for truncated samples, :func:`optscale.data.grading.extract_answer`)."""
        return extract_answer(self.text, finished=self.finished)


@dataclass
class PFResult:
    answer: str | None
    particles: list[Particle]
    rewards: np.ndarray  # (n,) final rewards (reward_of over each particle's step scores)
    steps: int
    tokens: int  # tokens generated in total (all extensions, including discarded branches)
    rollouts: int  # particles = the "rollouts" budget this run is compared at
    trace: list[dict] = field(default_factory=list)  # per step: weights, ancestors, n_done


ScoreFn = Callable[[str, Sequence[str]], list[tuple[float, ...]]]


def scorer_step_fn(scorer: Any) -> ScoreFn:
    """Adapt an :class:`optscale.scoring.scorers.Scorer` to ``fn(question, texts) -> step scores``."""

    def fn(question: str, texts: Sequence[str]) -> list[tuple[float, ...]]:
        comps = [Completion(text=t, n_tokens=0, finish_reason="length", seed=0) for t in texts]
        return [r.step_scores for r in scorer.score(question, comps)]

    return fn


def step_certainty(completion: Completion) -> float | None:
    """The generator's self-certainty of one generated piece, ``exp(mean token log-prob)`` (the
    ``self-certainty`` scorer's value for a whole sample); None for a piece with no tokens."""
    lp = np.asarray(completion.token_logprobs or [], dtype=float)
    if lp.size != completion.n_tokens:
        raise ValueError(f"self-certainty step rewards need a log-prob per generated token: the sampler "
                         f"returned {lp.size} for {completion.n_tokens} tokens (use a judge: score_fn=scorer_step_fn(...))")
    return float(np.exp(lp.mean())) if lp.size else None


def select_answer(particles: Sequence[Particle], rewards: np.ndarray, how: str, temperature: float = 1.0) -> str | None:
    """``best``: answer of the highest-reward particle that has one; ``weighted-vote``: the
    answer class with the largest total ``softmax(reward / temperature)`` weight."""
    answers = [p.answer for p in particles]
    if how == "best":
        for i in np.argsort(-np.asarray(rewards), kind="stable"):
            if answers[i] is not None:
                return answers[i]
        return None
    if how == "weighted-vote":
        labels = answer_classes(answers)
        w = softmax_weights(rewards, temperature)
        totals: dict[int, float] = {}
        for lab, wi in zip(labels, w):
            if lab >= 0:
                totals[lab] = totals.get(lab, 0.0) + wi
        return answers[max(totals, key=totals.get)] if totals else None
    raise ValueError(f"answer selection must be 'best' or 'weighted-vote', got {how!r}")


def particle_filter(question: str, prompt: str, sampler: Any, score_fn: ScoreFn | None, n_particles: int, max_steps: int,
                    temperature: float = 1.0, resampler: str = "systematic", reward_of: str = "last",
                    step_tokens: int = 96, max_tokens: int = 512, seed: int = 0, select: str = "best",
                    stop: tuple[str, ...] = ("\n\n",)) -> PFResult:
    """Run the filter on one question. ``prompt`` is the user message; ``sampler`` any
    :class:`Sampler` honouring ``prefix``/``stop``; ``score_fn(question, texts)`` returns step
    scores for each partial text (see :func:`scorer_step_fn`), or None for the generator's own
    step self-certainty (:func:`step_certainty`, appended per step). A particle finishes on EOS, or
    when its own history reaches ``max_tokens``. Same seed -> same result."""
    if n_particles < 1 or max_steps < 1:
        raise ValueError("n_particles and max_steps must be >= 1")
    resample = RESAMPLERS.get(resampler)
    rng = np.random.default_rng(derive_seed(seed, "pf-resample", question))
    particles = [Particle() for _ in range(n_particles)]
    tokens = 0
    trace: list[dict] = []
    steps = 0
    for step in range(max_steps):
        live = [i for i, p in enumerate(particles) if not p.done]
        if not live:
            break
        steps += 1
        groups: dict[str, list[int]] = {}
        for i in live:
            groups.setdefault(particles[i].text, []).append(i)
        reqs = [SampleRequest(prompt=prompt, n=len(ix), max_new_tokens=step_tokens,
                              seed=derive_seed(seed, "pf", question, step, g), key=f"pf/{step}/{g}",
                              prefix=text, stop=stop)
                for g, (text, ix) in enumerate(groups.items())]
        outs = sampler.generate(reqs)
        for (text, ix), comps in zip(groups.items(), outs):
            for i, c in zip(ix, comps):
                p = particles[i]
                tokens += c.n_tokens
                sep = stop[0] if c.finish_reason == "stop_string" and stop else ""
                new_text = text + c.text + sep
                n_tok = p.n_tokens + c.n_tokens
                done = c.finish_reason == "stop" or n_tok >= max_tokens
                steps_so_far = p.step_scores
                if score_fn is None and (certainty := step_certainty(c)) is not None:
                    steps_so_far = steps_so_far + (certainty,)
                particles[i] = Particle(new_text, done, steps_so_far, n_tok, c.finish_reason)
        if score_fn is not None:
            step_scores = score_fn(question, [particles[i].text.rstrip() for i in live])
            for i, s in zip(live, step_scores):
                particles[i].step_scores = tuple(float(x) for x in s)
        rewards = np.array([aggregate_steps(p.step_scores or (0.0,), reward_of) for p in particles])
        w = softmax_weights(rewards, temperature)
        anc = resample(w, rng)
        trace.append({"step": step, "weights": w.tolist(), "ancestors": anc.tolist(),
                      "n_done": int(sum(p.done for p in particles)), "tokens": tokens})
        particles = [dataclasses.replace(particles[a]) for a in anc]
    rewards = np.array([aggregate_steps(p.step_scores or (0.0,), reward_of) for p in particles])
    return PFResult(select_answer(particles, rewards, select, temperature), particles, rewards, steps, tokens,
                    n_particles, trace)


# ---------------------------------------------------------------------------------------------
# Pool baselines at equal rollouts, and the bootstrap
# ---------------------------------------------------------------------------------------------
def pool_baseline_curves(scores: np.ndarray, correct: np.ndarray, labels: np.ndarray, orders: np.ndarray,
                         ns: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-question accuracy of Best-of-N, weighted majority and majority voting at each N,
    averaged over replay orders.

    ``scores``, ``correct``, ``labels``: (questions, n) pool arrays (labels from
    :func:`optscale.systems.optpo.pool_class_labels`: index of the class's first member, -1 = no
    answer, so ``correct[i, label]`` is the class's correctness); ``orders``:
    (orders, questions, n). Vote ties go to the class seen first in the stream.
    Returns ``{method: (len(ns), questions)}`` for ``bon``, ``weighted-vote``, ``majority``."""
    from .optpo import _class_tallies
    from ..data.pools import subsample

    q = scores.shape[0]
    corr = np.broadcast_to(correct.astype(bool), orders.shape[:1] + correct.shape)
    out = {k: np.zeros((len(ns), q)) for k in ("bon", "weighted-vote", "majority")}
    for j, n in enumerate(ns):
        s = subsample(scores, orders, n)  # (orders, q, n)
        c = subsample(correct.astype(float), orders, n)
        lab = subsample(labels, orders, n)
        best = np.argmax(s, axis=-1)
        out["bon"][j] = np.take_along_axis(c, best[..., None], -1)[..., 0].mean(0)
        _, first = _class_tallies(lab)  # (orders, q, classes)
        onehot = lab[..., None] == np.arange(first.shape[-1])  # (orders, q, n, classes)
        tie = first / (n + 1.0) * 1e-6
        for key, w in (("weighted-vote", s), ("majority", np.ones_like(s))):
            tot = (onehot * w[..., None]).sum(-2)
            keyv = np.where(onehot.any(-2), tot - tie, -np.inf)
            lead = keyv.argmax(-1)
            has = np.isfinite(keyv).any(-1)
            acc = np.where(has, np.take_along_axis(corr, lead[..., None], -1)[..., 0], False)
            out[key][j] = acc.mean(0)
    return out


def bootstrap_ci(per_question: np.ndarray, rng: np.random.Generator, reps: int = 2000,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap over questions of a (questions,) score array."""
    x = np.asarray(per_question, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("per_question must be a non-empty 1-D array")
    idx = rng.integers(0, x.size, size=(reps, x.size))
    means = x[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(x.mean()), float(lo), float(hi)


def live_bon(question: str, prompt: str, sampler: Any, score_fn: ScoreFn | None, gold: str, ns: Sequence[int],
             max_tokens: int, seed: int, reward_of: str = "mean", temperature: float = 1.0) -> dict[int, dict[str, Any]]:
    """Best-of-N and weighted vote at every N in ``ns`` from one live draw of ``max(ns)`` full
    samples, scored like the filter's particles (so the comparison at equal rollouts uses the same
    scorer). The samples for N are the first N of that draw: nested budgets, drawn and scored once
    (a pool's BoN curve is made the same way), instead of a fresh draw per N. With
    ``score_fn=None`` a sample's score is its self-certainty (:func:`step_certainty` of the whole
    sample, the pool scorer's value).

    Returns ``{N: {"tokens", "best", "weighted-vote"}}``; tokens are those of the first N samples."""
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ValueError(f"live_bon: budgets must be >= 1, got {ns}")
    comps = sampler.generate([SampleRequest(prompt=prompt, n=ns[-1], max_new_tokens=max_tokens,
                                            seed=derive_seed(seed, "pf-bon", question))])[0]
    if score_fn is None:
        scored = [(x,) if (x := step_certainty(c)) is not None else () for c in comps]
    else:
        scored = score_fn(question, [c.text for c in comps])
    parts = [Particle(c.text, True, tuple(s), c.n_tokens, c.finish_reason) for c, s in zip(comps, scored)]
    rewards = np.array([aggregate_steps(p.step_scores or (0.0,), reward_of) for p in parts])
    out: dict[int, dict[str, Any]] = {}
    for n in ns:
        row: dict[str, Any] = {"tokens": int(sum(c.n_tokens for c in comps[:n]))}
        for how in ("best", "weighted-vote"):
            ans = select_answer(parts[:n], rewards[:n], how, temperature)
            row[how] = bool(is_equivalent(gold, ans)) if ans is not None else False
        out[n] = row
    return out


def load_pool_arrays(config: Any, dataset: str, scorer: str | None = None,
                     question_ids: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The arrays the systems notebooks need from one pool, or None (with a printed note) when
    the pool file does not exist yet or has no fully scored question.

    Keeps questions whose ``score__<scorer>`` is complete (pools fill up while generating) and,
    if given, only ``question_ids``. Returns ``scores, correct, tokens, labels`` as
    (questions, n) arrays, ``question_ids``, ``describe`` (for captions) and ``pool``."""
    from .optpo import pool_class_labels
    from ..data.pools import PoolError, pool_path, read_pool

    scorer = scorer or config.scoring.primary_for(dataset)
    path = pool_path(config, dataset)
    if not path.is_file():
        print(f"note: no pool for {dataset} at {path} yet; skipped")
        return None
    try:
        pool = read_pool(path, allow_partial_scores=True)
    except PoolError as e:
        print(f"note: {dataset} pool unreadable, skipped ({e})")
        return None
    col = f"score__{scorer}"
    if col not in pool.df.columns:
        print(f"note: {dataset} pool has no {col} column yet; skipped")
        return None
    complete = pool.df.groupby("question_id", sort=False)[col].apply(lambda s: s.notna().all())
    keep = set(complete[complete].index)
    if question_ids is not None:
        keep &= set(map(str, question_ids))
    if not keep:
        print(f"note: {dataset} pool has no fully scored question{' among the requested ones' if question_ids else ''}; skipped")
        return None
    from ..data.pools import Pool

    sub = Pool(pool.df[pool.df["question_id"].isin(keep)].reset_index(drop=True), dict(pool.meta), pool.path)
    n = sub.n_per_question
    answers = sub.answers(n)
    return {
        "pool": sub,
        "scores": sub.scores(scorer, n),
        "correct": sub.correct(n),
        "tokens": sub.tokens(n),
        "labels": pool_class_labels(answers),
        "question_ids": list(sub.df.sort_values("question_index").drop_duplicates("question_id")["question_id"]),
        "describe": f"{sub.describe()}; scorer {scorer}",
    }
