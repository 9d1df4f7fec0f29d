"""A deterministic sampler for tests and benchmarks (no model).

Sample ``i`` of a request is drawn from ``derive_seed(request.seed, i)``: the same request always
gives the same completions. Each question (``request.key`` or prompt) gets a fixed chance of a
correct answer; the text ends in ``\\boxed{...}`` with ``42`` for a "correct" sample (the fake gold)
and a wrong number otherwise; token counts, log-probs and token confidences are drawn so that
correct samples look more confident.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from .base import Completion, SampleRequest, Sampler, derive_seed

__all__ = ["FakeSampler", "FAKE_GOLD"]

FAKE_GOLD = "42"


class FakeSampler(Sampler):
    name = "fake"

    def __init__(self, config: Any = None, p_correct: float | None = None, max_tokens: int = 200,
                 delay_s: float = 0.0, questions_in_flight: int = 1):
        self.config = config
        self.delay_s = delay_s  # sleep per sample, so a test can kill a run part-way
        self.p_correct = p_correct
        self.max_tokens = max_tokens
        # requests per generate() call that pool generation sends (a batching backend's knob)
        self.questions_in_flight = questions_in_flight
        self.calls: list[SampleRequest] = []  # every request served (tests count them)
        self.batches: list[int] = []  # requests per generate() call

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": "fake", "p_correct": self.p_correct}

    def _one(self, req: SampleRequest, i: int) -> Completion:
        if self.delay_s:
            time.sleep(self.delay_s)
        seed = derive_seed(req.seed, i)
        rng = np.random.default_rng(seed)
        p = self.p_correct if self.p_correct is not None else derive_seed(req.key or req.prompt) / 2**31
        ok = rng.random() < p
        ans = FAKE_GOLD if ok else str(int(rng.integers(0, 40)))
        n = int(rng.integers(8, min(self.max_tokens, req.max_new_tokens) + 1))
        lp = rng.normal(-0.15 if ok else -0.5, 0.1, n).clip(max=0.0)
        conf = rng.normal(-2.5 if ok else -1.8, 0.3, n)
        text = f"Step 1: think.\n\nStep 2: so the answer is \\boxed{{{ans}}}."
        return Completion(text=text, n_tokens=n, finish_reason="stop", seed=seed,
                          token_logprobs=lp.tolist(), token_confidence=conf.tolist())

    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        self.calls.extend(requests)
        self.batches.append(len(requests))
        return [[self._one(r, i) for i in range(r.n)] for r in requests]
