"""Live mode: the replay policies drive a :class:`optscale.samplers.Sampler` online.

For each question the sampler is asked for ``chunk`` samples at a time (chunk ``c`` uses seed
``derive_seed(seed, dataset, question id, "chunk", c)``); each sample is graded, scored and shown
to the policy one by one; once the policy stops, no further chunk is requested. Tokens are
counted twice: ``tokens_generated`` (everything the sampler produced, including the rest of the
last chunk) and ``tokens_charged`` (what the policy consumed, as in replay). With ``chunk=1`` the
two agree except for DeepConf's cut traces (a chunked sampler cannot cut a trace mid-way).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .data import Problem
from .grading import extract_answer, is_equivalent
from .policies import Policy, QuestionContext, Sample, group_confidences
from .samplers.base import Completion, SampleRequest, Sampler, derive_seed

__all__ = ["OnlineClasses", "chunk_seed", "run_live", "question_samples"]


class OnlineClasses:
    """Equivalence classes built as answers arrive (same rule as ``grading.answer_classes``:
    compare with each class representative; label = index of the first member)."""

    def __init__(self) -> None:
        self.reps: list[tuple[int, str]] = []
        self.count = 0

    def add(self, answer: str | None) -> int:
        i = self.count
        self.count += 1
        if answer is None or not str(answer).strip():
            return -1
        for j, rep in self.reps:
            if rep == answer or is_equivalent(rep, answer):
                return j
        self.reps.append((i, answer))
        return i


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
        prior = tuple(priors[qi]) if priors is not None else None
        policy.reset(QuestionContext(max_N=max_N, prior=prior, question_id=p.id))
        classes = OnlineClasses()
        gen_tokens, charged, n_gen, c, stop = 0.0, 0.0, 0, 0, False
        answers: list[str | None] = []
        while not stop and n_gen < max_N:
            k = min(chunk, max_N - n_gen)
            req = SampleRequest(prompt=prompt_fn(p), n=k, max_new_tokens=max_new_tokens,
                                seed=chunk_seed(seed, p, c), key=f"{p.dataset}/{p.id}")
            comps = sampler.generate([req])[0]
            c += 1
            scores = list(score_fn(p.question, comps))
            for comp, sc in zip(comps, scores):
                ans = extract_answer(comp.text)
                s = Sample(index=n_gen, score=float(sc), answer_class=classes.add(ans), tokens=float(comp.n_tokens),
                           correct=is_equivalent(p.answer, ans),
                           group_conf=group_confidences(comp.token_confidence, conf_window), conf_window=conf_window)
                answers.append(ans)
                n_gen += 1
                gen_tokens += comp.n_tokens
                if not stop:
                    stop = policy.observe(s)
                    charged += policy.charge(s)
        pos = policy.select()
        ans = answers[policy.seen[pos].index] if pos is not None else None
        rows.append({"dataset": p.dataset, "question_id": p.id, "policy": policy.label(), "n_generated": n_gen,
                     "n_used": len(policy.seen), "tokens_generated": gen_tokens, "tokens_charged": charged,
                     "answer": ans, "correct": bool(is_equivalent(p.answer, ans))})
    return pd.DataFrame(rows)
