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
- ``answer-judge``: the same kind of judge asked once per sample, after the whole solution,
  "Is the final answer of this solution correct? Answer Yes or No." (one forward pass per sample;
  the judge model is ``scoring.judge_model``, e.g. the 1.5B model judging the 0.5B's samples).
- ``lowest-group-confidence`` / ``tail-confidence``: DeepConf's trace confidences from the token
  confidences the sampler records (``C_t`` = minus the mean top-k log-prob of token t): the lowest
  mean ``C`` over sliding windows of ``scoring.conf_window`` tokens, and the mean ``C`` of the last
  ``scoring.tail_tokens`` tokens, mapped to [0, 1) by ``C / (1 + C)`` (monotone, so rankings and
  AUROC are those of ``C``; typical C of 2-10 land in 0.67-0.91). No extra compute.
- ``prm``: Qwen2.5-Math-PRM-style reward model (GPU path; see ``optscale.scoring.prm``).
- ``probe``: a logistic-regression probe on the generator's own hidden states (an outcome verifier
  learned here; see ``optscale.scoring.probe``): pools are scored cross-fitted by question
  (``generate score --scorer probe``), new questions by a committed head that never saw them.

All step-score aggregations live in :func:`aggregate_steps`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..config import ScoringConfig
from ..data.grading import split_steps
from ..registry import Registry
from ..sampling.base import Completion, load_prompt_template

__all__ = ["SCORERS", "Scorer", "ScoreResult", "get_scorer", "aggregate_steps", "SelfCertaintyScorer", "LMJudgeScorer",
           "AnswerJudgeScorer", "LowestGroupConfidenceScorer", "TailConfidenceScorer", "JUDGES", "build_judge",
           "build_scorers"]

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


JUDGES = ("lm-judge", "answer-judge")


def build_judge(config: Any, sampler: Any = None, name: str = "lm-judge") -> Scorer:
    """The profile's LM judge (``lm-judge`` or ``answer-judge``) next to ``sampler``: it shares the
    sampler's transformers model when the sampler has one in this process (hf-cpu) and that model
    is ``scoring.judge_model``; otherwise (llama.cpp, endpoints, vLLM, or another judge model) it
    loads ``scoring.judge_model`` with transformers (:func:`optscale.sampling.hf_models.load_causal_lm`).
    ``config``: the whole profile (its ``sampling`` and ``scoring`` sections)."""
    if name not in JUDGES:
        raise ValueError(f"build_judge: {name!r} is not an LM judge; choose one of {JUDGES}")
    model = getattr(sampler, "model", None)
    if callable(getattr(model, "get_decoder", None)) and config.scoring.judge_model == config.sampling.model:
        return get_scorer(name, config.scoring, model=model, tokenizer=sampler.tokenizer)
    return get_scorer(name, config.scoring, dtype=config.sampling.dtype)


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

    template_key = "judge_template"

    def __init__(self, config: ScoringConfig, model: Any = None, tokenizer: Any = None,
                 model_name: str | None = None, dtype: str = "auto", device: str = "cpu"):
        super().__init__(config)
        model_name = model_name or config.judge_model
        if model is None:
            from ..sampling.hf_models import load_causal_lm

            model, tokenizer = load_causal_lm(model_name, dtype, device)
        self.model, self.tokenizer, self.model_name, self.device = model, tokenizer, model_name, device
        self.template = load_prompt_template(getattr(config, self.template_key))
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
                spans = self._spans(c.text)
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
                results.append(ScoreResult(self._aggregate(step_scores), tuple(step_scores)))
        return results

    def _spans(self, text: str) -> list[tuple[int, int]]:
        return split_steps(text, self.config.max_steps)

    def _aggregate(self, step_scores: Sequence[float]) -> float:
        return aggregate_steps(step_scores, self.config.aggregation)


@SCORERS.register("answer-judge")
class AnswerJudgeScorer(LMJudgeScorer):
    """The LM judge asked once, after the whole solution, whether its final answer is correct."""

    name = "answer-judge"
    template_key = "answer_judge_template"

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.name, "model": self.model_name, "template": self.template}

    def _spans(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]

    def _aggregate(self, step_scores: Sequence[float]) -> float:
        return float(step_scores[-1])


class _TraceConfidenceScorer(Scorer):
    """Base of the DeepConf trace confidences: ``C / (1 + C)`` of a per-trace confidence ``C``."""

    def trace_confidence(self, token_confidence: np.ndarray) -> float:
        raise NotImplementedError

    def score(self, question: str, completions: Sequence[Completion]) -> list[ScoreResult]:
        out = []
        for c in completions:
            conf = -np.asarray(c.token_confidence, dtype=float)
            if conf.size == 0:
                if c.n_tokens:
                    raise ValueError(f"{self.name}: the sample has {c.n_tokens} tokens but no token confidences "
                                     "(the pool was sampled without them)")
                out.append(ScoreResult(0.0, (0.0,)))
                continue
            trace = max(self.trace_confidence(conf), 0.0)
            s = float(trace / (1.0 + trace))
            out.append(ScoreResult(s, (s,)))
        return out


@SCORERS.register("lowest-group-confidence")
class LowestGroupConfidenceScorer(_TraceConfidenceScorer):
    name = "lowest-group-confidence"

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.name, "window": self.config.conf_window,
                "definition": "C / (1 + C), C = min over sliding windows of the mean C_t, C_t = -mean top-k log-prob"}

    def trace_confidence(self, conf: np.ndarray) -> float:
        from ..policies import lowest_group_confidence

        return lowest_group_confidence(-conf, self.config.conf_window)


@SCORERS.register("tail-confidence")
class TailConfidenceScorer(_TraceConfidenceScorer):
    name = "tail-confidence"

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.name, "tail_tokens": self.config.tail_tokens,
                "definition": "C / (1 + C), C = mean C_t over the last tail_tokens tokens, C_t = -mean top-k log-prob"}

    def trace_confidence(self, conf: np.ndarray) -> float:
        return float(conf[-self.config.tail_tokens:].mean())


SCORERS.register("prm", "optscale.scoring.prm:PRMScorer")
SCORERS.register("probe", "optscale.scoring.probe:ProbeScorer")


def build_scorers(cfg, sampler, names=None):
    """The profile's scorers (or ``names`` among them); an LM judge shares the sampler's model
    when the sampler has one in this process (:func:`build_judge`)."""
    out = []
    for name in cfg.scoring.scorers:
        if names is not None and name not in names:
            continue
        out.append(build_judge(cfg, sampler, name) if name in JUDGES else get_scorer(name, cfg.scoring))
    return out
