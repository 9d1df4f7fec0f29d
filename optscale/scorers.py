"""Scorers: one score in [0, 1] per sample and one per reasoning step, behind one interface.

Registered names (``SCORERS``):

- ``self-certainty``: the geometric-mean probability of the sampled tokens under the model's
  own untempered distribution, ``exp(mean_t log p(x_t | x_<t))``, for the whole sample; step
  scores are the same quantity over each step's tokens. Needs the sampler's token log-probs and
  no extra compute. (Kang et al.'s "self-certainty" is a KL-based variant of the same idea; we
  use the log-prob form because every backend, vLLM and OpenAI endpoints included, returns it.)
- ``lm-judge``: a generative process reward model built from the local causal LM. For each
  step prefix it asks "Is every step of the solution above correct so far? Answer Yes or No."
  and takes ``P(Yes) / (P(Yes) + P(No))`` from the next-token distribution. The sample score is
  the configured aggregation of the step scores (``mean`` as in the OptScale paper).
- ``prm``: Qwen2.5-Math-PRM-style reward model (GPU path; see ``optscale.prm``).

All step-score aggregations live in :func:`aggregate_steps`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .config import ScoringConfig
from .grading import split_steps
from .registry import Registry
from .samplers.base import Completion, load_prompt_template

__all__ = ["SCORERS", "Scorer", "ScoreResult", "get_scorer", "aggregate_steps", "SelfCertaintyScorer", "LMJudgeScorer"]

SCORERS: Registry = Registry("scorer")


@dataclass(frozen=True)
class ScoreResult:
    score: float
    step_scores: tuple[float, ...]


def aggregate_steps(step_scores: Sequence[float], how: str) -> float:
    """Aggregate step scores in [0, 1]: ``mean`` | ``min`` | ``last`` | ``prod``."""
    s = np.asarray(step_scores, dtype=float)
    if s.size == 0:
        raise ValueError("no step scores to aggregate")
    if how == "mean":
        return float(s.mean())
    if how == "min":
        return float(s.min())
    if how == "last":
        return float(s[-1])
    if how == "prod":
        return float(np.exp(np.log(np.clip(s, 1e-300, 1.0)).sum()))
    raise ValueError(f"unknown aggregation {how!r}; use mean|min|last|prod")


class Scorer(ABC):
    name: str = "base"

    def __init__(self, config: ScoringConfig):
        self.config = config

    @abstractmethod
    def score(self, question: str, completions: Sequence[Completion]) -> list[ScoreResult]:
        """One :class:`ScoreResult` per completion of one question."""

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.name}


def get_scorer(name: str, config: ScoringConfig, **kwargs: Any) -> Scorer:
    return SCORERS.build(name, config, **kwargs)


@SCORERS.register("self-certainty")
class SelfCertaintyScorer(Scorer):
    name = "self-certainty"

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.name, "definition": "exp(mean token log-prob), untempered model distribution"}

    def score(self, question: str, completions: Sequence[Completion]) -> list[ScoreResult]:
        results = []
        for c in completions:
            lp = np.asarray(c.token_logprobs, dtype=float)
            if lp.size == 0:
                results.append(ScoreResult(0.0, (0.0,)))
                continue
            if not np.all(np.isfinite(lp)):
                raise ValueError("self-certainty: token log-probs contain NaN/inf")
            ends = np.asarray(c.token_char_ends if c.token_char_ends else [], dtype=int)
            steps = []
            if ends.size == lp.size:
                lo = 0
                for _, end in split_steps(c.text, self.config.max_steps):
                    hi = int(np.searchsorted(ends, end, side="left")) + 1
                    hi = min(max(hi, lo + 1), lp.size)
                    if lo < lp.size:
                        steps.append(math.exp(lp[lo:hi].mean()))
                    lo = hi
            if not steps:
                steps = [math.exp(lp.mean())]
            results.append(ScoreResult(float(math.exp(lp.mean())), tuple(float(x) for x in steps)))
        return results


@SCORERS.register("lm-judge")
class LMJudgeScorer(Scorer):
    """Generative PRM from a local causal LM, with one forward pass per sample.

    Cost model: for a question, the judge prompt up to the solution is run once and its KV
    cache kept; for each sample the solution tokens are appended once, then for each step
    boundary (last to first) the cache is cropped back to that boundary and only the short
    question suffix (~20 tokens) is run. Total work per sample is its own length plus
    ``steps x suffix`` tokens, instead of the sum of all prefix lengths (~length x steps / 2)
    that batching every step prefix separately would cost.
    """

    name = "lm-judge"

    def __init__(self, config: ScoringConfig, model: Any = None, tokenizer: Any = None,
                 model_name: str = "qwen2.5-coder-0.5b-instruct-q4", dtype: str = "bfloat16", device: str = "cpu"):
        super().__init__(config)
        if model is None:
            from .hf_models import load_causal_lm

            model, tokenizer = load_causal_lm(model_name, dtype, device)
        self.model, self.tokenizer, self.model_name, self.device = model, tokenizer, model_name, device
        self.template = load_prompt_template(config.judge_template)
        self.yes_id = self._single_token("Yes")
        self.no_id = self._single_token("No")
        # Only the Yes/No logits are needed: run the decoder body and project its last hidden
        # state on those two rows of the LM head in float32. This skips the 150k-way head for
        # every token and avoids bf16 rounding of the logit difference (which would quantise
        # P(Yes) to steps of ~0.03).
        self.body = self.model.get_decoder()
        self.head = self.model.get_output_embeddings().weight[[self.yes_id, self.no_id]].detach().float()

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        return ids[0]

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.name, "model": self.model_name, "template": self.template,
                "aggregation": self.config.aggregation, "max_steps": self.config.max_steps}

    def _prompt_parts(self, question: str) -> tuple[list[int], list[int]]:
        sentinel = "\u2063SOLUTION\u2063"
        user = self.template.replace("{question}", question).replace("{solution}", sentinel).strip()
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        pre, post = rendered.split(sentinel)
        enc = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        return enc(pre), enc(post)

    def score(self, question: str, completions: Sequence[Completion]) -> list[ScoreResult]:
        import torch

        pre, post = self._prompt_parts(question)
        post_t = torch.tensor([post], device=self.device)
        results = []
        with torch.inference_mode():
            out = self.body(input_ids=torch.tensor([pre], device=self.device), use_cache=True)
            cache = out.past_key_values
            base_len = len(pre)
            for c in completions:
                spans = split_steps(c.text, self.config.max_steps)
                chunk_ids, bounds = [], []
                prev = 0
                for _, end in spans:
                    chunk_ids.extend(self.tokenizer(c.text[prev:end], add_special_tokens=False)["input_ids"])
                    bounds.append(len(chunk_ids))
                    prev = end
                if chunk_ids:
                    self.body(input_ids=torch.tensor([chunk_ids], device=self.device), past_key_values=cache, use_cache=True)
                step_scores = [0.0] * len(bounds)
                cur = base_len + len(chunk_ids)
                for k in range(len(bounds) - 1, -1, -1):
                    target = base_len + bounds[k]
                    if cur > target:
                        cache.crop(target - cur)
                    h = self.body(input_ids=post_t, past_key_values=cache, use_cache=True).last_hidden_state[0, -1]
                    cur = target + len(post)
                    pair = self.head @ h.float()
                    step_scores[k] = float(torch.softmax(pair, 0)[0])
                cache.crop(base_len - cur)
                results.append(ScoreResult(aggregate_steps(step_scores, self.config.aggregation), tuple(step_scores)))
        return results


SCORERS.register("prm", "optscale.prm:PRMScorer")
