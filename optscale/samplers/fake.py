"""A deterministic stand-in sampler for tests and pipeline checks (no model).

Each sample's text, answer, length and log-probs are a pure function of the request seed and
the sample index: the same request always gives the same completions, and a request's samples
do not depend on which other requests are in the batch. ``answers`` and ``p_correct`` let a
test control how often the boxed answer is a given value. ``delay_s`` slows it down, so a test
can kill a run part-way.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..config import SamplingConfig
from .base import Completion, SampleRequest, Sampler, derive_seed

__all__ = ["FakeSampler"]


class FakeSampler(Sampler):
    name = "fake"

    def __init__(self, config: SamplingConfig, answers: Sequence[str] = ("1", "2", "3"),
                 weights: Sequence[float] | None = None, delay_s: float = 0.0):
        self.config = config
        self.answers = list(answers)
        w = np.asarray(weights if weights is not None else np.ones(len(self.answers)), dtype=float)
        self.weights = w / w.sum()
        self.delay_s = delay_s
        self.calls = 0

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": "fake", "temperature": self.config.temperature,
                "top_p": self.config.top_p, "answers": self.answers}

    def format_prompt(self, question: str) -> str:
        return question

    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        self.calls += 1
        return [[self._one(r, i) for i in range(r.n)] for r in requests]

    def _one(self, req: SampleRequest, i: int) -> Completion:
        if self.delay_s:
            time.sleep(self.delay_s)
        seed = derive_seed(req.seed, "sample", i)
        rng = np.random.default_rng(seed)
        ans = self.answers[int(rng.choice(len(self.answers), p=self.weights))]
        n_steps = int(rng.integers(1, 4))
        steps = [f"Step {k + 1}: reasoning {int(rng.integers(0, 1000))}." for k in range(n_steps)]
        text = req.prefix + "\n\n".join(steps + [f"The answer is \\boxed{{{ans}}}."])
        n_tok = min(req.max_new_tokens, 8 * (n_steps + 1))
        finish = "stop" if n_tok < req.max_new_tokens else "length"
        lp = (-rng.exponential(0.3, n_tok)).tolist()
        conf = (np.asarray(lp) - rng.exponential(0.5, n_tok)).tolist()
        ends = np.linspace(len(text) / n_tok, len(text), n_tok).round().astype(int).tolist()
        return Completion(text=text, n_tokens=n_tok, finish_reason=finish, seed=seed,
                          token_logprobs=lp, token_confidence=conf, token_char_ends=ends)
