"""Live mode: the replay policies drive a :class:`optscale.sampling.Sampler` online.

For each question the sampler is asked for ``chunk`` samples at a time (chunk ``c`` uses seed
``derive_seed(seed, dataset, question id, "chunk", c)``); each sample is graded (with its
``finish_reason``: a truncated sample that states no answer has none), scored and shown to the
policy one by one; once the policy stops, no further chunk is requested. Tokens are
counted twice: ``tokens_generated`` (everything the sampler produced, including the rest of the
last chunk) and ``tokens_charged`` (what the policy consumed, as in replay). With ``chunk=1`` the
two agree except for DeepConf's cut traces (a chunked sampler cannot cut a trace mid-way).

:func:`run_live_concurrent` submits every question at once to a sampler with an async API
(:class:`optscale.sampling.openai_compat.OpenAICompatSampler`): question ``p`` is one request for
``max_N`` samples seeded ``chunk_seed(seed, p, 0)`` (the stream ``run_live(..., chunk=max_N)`` and
``question_samples(..., chunk=max_N)`` see), each question has its own policy, samples are shown
to it in sample-index order as they arrive, and once it stops the sampler is told to ``cancel``
the question's queued and in-flight samples.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..data.benchmarks import Problem
from ..data.grading import Grader, default_grader
from ..policies import Policy, QuestionContext, Sample, group_confidences
from ..sampling.base import Completion, SampleRequest, Sampler, derive_seed, run_coroutine_sync

__all__ = ["OnlineClasses", "chunk_seed", "run_live", "run_live_concurrent", "question_samples"]


class OnlineClasses:
    """Equivalence classes built as answers arrive, by the grader's own rule
    (:meth:`optscale.data.grading.Grader.classes`: compare with each class representative, an
    unresolved comparison leaves the answer in its own class; label = index of the first member).
    That rule labels each answer from the earlier ones only, so the label of the newest answer of
    the stream so far is its label in the whole stream (the grader's caches make the repeat cheap)."""

    def __init__(self, grader: Grader | None = None) -> None:
        self.grader = grader or default_grader()
        self.answers: list[str | None] = []

    @property
    def count(self) -> int:
        return len(self.answers)

    def add(self, answer: str | None) -> int:
        self.answers.append(answer)
        return self.grader.classes(self.answers)[-1]


def chunk_seed(seed: int, problem: Problem, c: int) -> int:
    return derive_seed(seed, problem.dataset, problem.id, "chunk", c)


def question_samples(sampler: Sampler, problem: Problem, prompt: str, n: int, chunk: int, seed: int,
                     max_new_tokens: int) -> list[Completion]:
    """The first ``n`` samples of the live stream of one question (chunks 0, 1, ...), i.e. the
    pool a replay of the same stream sees."""
    out: list[Completion] = []
    c = 0
    while len(out) < n:
        req = SampleRequest(prompt=prompt, n=chunk, max_new_tokens=max_new_tokens, seed=chunk_seed(seed, problem, c),
                            key=f"{problem.dataset}/{problem.id}")
        out.extend(sampler.generate([req])[0])
        c += 1
    return out[:n]


class _QuestionRun:
    """The live state of one question: its policy, answer classes and token counts. Samples
    must be fed in stream order (:meth:`feed`); once the policy stops, later samples are
    counted as generated but not shown to it."""

    def __init__(self, policy: Policy, problem: Problem, max_N: int, prior: tuple[float, ...] | None,
                 score_fn: Callable[[str, Sequence[Completion]], Sequence[float]], conf_window: int):
        self.policy, self.problem, self.score_fn, self.conf_window = policy, problem, score_fn, conf_window
        policy.reset(QuestionContext(max_N=max_N, prior=prior, question_id=problem.id))
        self.classes = OnlineClasses()
        self.answers: list[str | None] = []
        self.n_gen, self.gen_tokens, self.charged, self.stopped = 0, 0.0, 0.0, False

    def feed(self, comps: Sequence[Completion]) -> bool:
        """Grade, score and show the next samples of the stream (in order); returns ``stopped``."""
        p = self.problem
        scores = list(self.score_fn(p.question, comps))
        if len(scores) != len(comps):
            raise ValueError(f"score_fn returned {len(scores)} scores for {len(comps)} completions of {p.dataset}/{p.id}")
        grader = self.classes.grader
        for comp, sc in zip(comps, scores):
            # a truncated sample (finish_reason "length") must state its answer: no last-number fallback
            ans, correct = grader.grade(p.answer, comp.text, comp.finish_reason)
            s = Sample(index=self.n_gen, score=float(sc), answer_class=self.classes.add(ans),
                       tokens=float(comp.n_tokens), correct=correct,
                       group_conf=group_confidences(comp.token_confidence, self.conf_window),
                       conf_window=self.conf_window)
            self.answers.append(ans)
            self.n_gen += 1
            self.gen_tokens += comp.n_tokens
            if not self.stopped:
                self.stopped = self.policy.observe(s)
                self.charged += self.policy.charge(s)
        return self.stopped

    def count_unobserved(self, comp: Completion) -> None:
        """A sample that arrived after the stop: generated (its tokens were spent), never shown."""
        self.n_gen += 1
        self.gen_tokens += comp.n_tokens

    def row(self) -> dict[str, Any]:
        p, policy = self.problem, self.policy
        pos = policy.select()
        ans = self.answers[policy.seen[pos].index] if pos is not None else None
        return {"dataset": p.dataset, "question_id": p.id, "policy": policy.label(), "n_generated": self.n_gen,
                "n_used": len(policy.seen), "tokens_generated": self.gen_tokens, "tokens_charged": self.charged,
                "answer": ans, "correct": bool(self.classes.grader.equivalent(p.answer, ans))}


def _prior(priors: np.ndarray | None, qi: int) -> tuple[float, ...] | None:
    return tuple(priors[qi]) if priors is not None else None


def run_live(policy: Policy, sampler: Sampler, problems: Sequence[Problem],
             score_fn: Callable[[str, Sequence[Completion]], Sequence[float]], max_N: int, chunk: int = 1,
             seed: int = 0, max_new_tokens: int = 512, prompt_fn: Callable[[Problem], str] | None = None,
             priors: np.ndarray | None = None, conf_window: int = 32) -> pd.DataFrame:
    """Run ``policy`` online on each problem. ``score_fn(question, completions) -> scores`` in
    [0, 1]. Returns one row per question: n_generated, n_used, tokens_generated,
    tokens_charged, selected answer, correct."""
    prompt_fn = prompt_fn or (lambda p: p.question)
    rows = []
    for qi, p in enumerate(problems):
        q = _QuestionRun(policy, p, max_N, _prior(priors, qi), score_fn, conf_window)
        c = 0
        while not q.stopped and q.n_gen < max_N:
            k = min(chunk, max_N - q.n_gen)
            req = SampleRequest(prompt=prompt_fn(p), n=k, max_new_tokens=max_new_tokens,
                                seed=chunk_seed(seed, p, c), key=f"{p.dataset}/{p.id}")
            q.feed(sampler.generate([req])[0])
            c += 1
        rows.append(q.row())
    return pd.DataFrame(rows)


def run_live_concurrent(policy_factory: Callable[[], Policy], sampler: Sampler, problems: Sequence[Problem],
                        score_fn: Callable[[str, Sequence[Completion]], Sequence[float]], max_N: int,
                        seed: int = 0, max_new_tokens: int = 512,
                        prompt_fn: Callable[[Problem], str] | None = None, priors: np.ndarray | None = None,
                        conf_window: int = 32) -> pd.DataFrame:
    """All questions at once: question ``p`` is one request for ``max_N`` samples (seed
    ``chunk_seed(seed, p, 0)``, key ``"{dataset}/{id}"``) with its own ``policy_factory()``
    policy. Each arriving sample is buffered until every lower sample index of its question has
    arrived, then shown to the policy in index order, so the decisions equal a replay of the
    stream ``question_samples(sampler, p, prompt, max_N, chunk=max_N, seed)`` whatever order the
    replicas finish in. When a policy stops, ``sampler.cancel(key)`` drops the question's queued
    and in-flight samples; samples that still arrive count as generated but are not shown.

    ``sampler`` must provide ``agenerate(requests, on_completion=cb)`` and ``cancel(key)`` (the
    OpenAI-compatible sampler does). ``priors``: (len(problems), d) or None. Returns one row per
    question with :func:`run_live`'s columns plus ``n_cancelled`` = ``max_N`` - samples that
    arrived."""
    if not (hasattr(sampler, "agenerate") and hasattr(sampler, "cancel")):
        raise TypeError(f"run_live_concurrent needs a sampler with agenerate() and cancel() (e.g. 'openai'); "
                        f"got {type(sampler).__name__}; use run_live for synchronous samplers")
    if max_N < 1:
        raise ValueError(f"max_N={max_N}: need at least one sample per question")
    keys = [f"{p.dataset}/{p.id}" for p in problems]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"run_live_concurrent: duplicate question keys {dup[:5]} (cancel works per key)")
    prompt_fn = prompt_fn or (lambda p: p.question)
    reqs = [SampleRequest(prompt=prompt_fn(p), n=max_N, max_new_tokens=max_new_tokens, seed=chunk_seed(seed, p, 0),
                          key=key) for p, key in zip(problems, keys)]
    runs = [_QuestionRun(policy_factory(), p, max_N, _prior(priors, qi), score_fn, conf_window)
            for qi, p in enumerate(problems)]
    pending: list[dict[int, Completion]] = [dict() for _ in problems]
    arrived = [0] * len(problems)

    def on_completion(i: int, j: int, comp: Completion) -> None:
        q = runs[i]
        arrived[i] += 1
        if q.stopped:  # a late arrival of a cancelled question
            q.count_unobserved(comp)
            return
        pending[i][j] = comp
        while not q.stopped and q.n_gen in pending[i]:
            if q.feed([pending[i].pop(q.n_gen)]):
                sampler.cancel(keys[i])
                for late in pending[i].values():  # arrived out of order, now never shown
                    q.count_unobserved(late)
                pending[i].clear()

    run_coroutine_sync(lambda: sampler.agenerate(reqs, on_completion=on_completion))
    rows = []
    for i, q in enumerate(runs):
        if not q.stopped:  # every sample arrived (nothing was cancelled), so the policy hit max_N
            raise RuntimeError(f"{keys[i]}: {arrived[i]} of {max_N} samples arrived but the policy never stopped "
                               f"(missing sample indices {sorted(set(range(max_N)) - set(range(q.n_gen)) - set(pending[i]))[:5]})")
        rows.append({**q.row(), "n_cancelled": max_N - arrived[i]})
    return pd.DataFrame(rows)
