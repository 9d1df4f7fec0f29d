"""Process reward model scorer ``prm``: Qwen2.5-Math-PRM-7B (the paper's verifier) via transformers.

How the model is used, following its model card and the paper's ``prm_scoring.py``:

- the sample is split into steps at blank lines (:func:`optscale.data.grading.split_steps`), the
  steps are joined with the separator token ``<extra_0>`` and one more separator ends the last
  step;
- the conversation ``[system: "Please reason step by step, and put your final answer within
  \\boxed{}.", user: question, assistant: steps]`` goes through the PRM's chat template;
- the reward head gives two logits per token; the step reward is the softmax probability of the
  positive class (index 1) at each separator position;
- the sample score aggregates the step rewards (``scoring.aggregation``; the paper: ``mean``).

The checkpoint's architecture is ``Qwen2ForProcessRewardModel`` (remote code: a Qwen2 decoder
and a ``score`` head ``Linear(h, h) -> ReLU -> Linear(h, 2)``). transformers has no such class
(``Qwen2ForTokenClassification``'s head is a single linear layer), so :func:`prm_model_class`
declares the same modules under the same parameter names (``model.*``, ``score.0.*``,
``score.2.*``); the released weights load into it with plain ``from_pretrained`` and no
``trust_remote_code``. ``trust_remote_code=True`` remains available for other PRM checkpoints.

Samples of one question are scored in batches of ``scoring.prm_batch_size`` sequences, sorted by
length to limit padding (right padding with an attention mask; a sample's score does not depend
on its batch).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from ..config import ScoringConfig
from ..data.grading import split_steps
from ..sampling.base import Completion
from .scorers import Scorer, ScoreResult, aggregate_steps

__all__ = ["PRMScorer", "prm_model_class", "build_prm_conversation", "STEP_SEPARATOR", "PRM_SYSTEM_PROMPT"]

STEP_SEPARATOR = "<extra_0>"
PRM_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


@functools.lru_cache(maxsize=1)
def prm_model_class() -> type:
    """``Qwen2ForProcessRewardModel`` with the released checkpoint's module layout.

    ``forward(input_ids, attention_mask)`` returns (batch, tokens, 2) logits."""
    import torch
    from torch import nn
    from transformers import Qwen2Model, Qwen2PreTrainedModel

    class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
        def __init__(self, config: Any):
            super().__init__(config)
            self.num_labels = 2
            self.model = Qwen2Model(config)
            self.score = nn.Sequential(
                nn.Linear(config.hidden_size, config.hidden_size),
                nn.ReLU(),
                nn.Linear(config.hidden_size, self.num_labels),
            )
            self.post_init()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.score(hidden)

    return Qwen2ForProcessRewardModel


def build_prm_conversation(question: str, text: str) -> tuple[list[dict[str, str]], int]:
    """Chat messages for the PRM and the number of steps (= separators) they hold.

    Literal separator strings inside the question or the sample are removed first, so only the
    step boundaries carry a separator."""
    question = question.replace(STEP_SEPARATOR, "")
    text = text.replace(STEP_SEPARATOR, "")
    steps = [text[s:e].strip() for s, e in split_steps(text)]
    response = STEP_SEPARATOR.join(steps) + STEP_SEPARATOR
    messages = [
        {"role": "system", "content": PRM_SYSTEM_PROMPT},
        {"role": "user", "content": question},
        {"role": "assistant", "content": response},
    ]
    return messages, len(steps)


class PRMScorer(Scorer):
    """Step rewards from a Qwen2.5-Math-PRM-style model; the sample score is their aggregate."""

    name = "prm"

    def __init__(self, config: ScoringConfig, model: Any = None, tokenizer: Any = None, device: str | None = None,
                 dtype: str | None = None, trust_remote_code: bool = False):
        super().__init__(config)
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        from ..sampling.hf_models import resolve_dtype

        # auto: bfloat16 on a GPU and on a CPU with native bf16, else float32 (resolve_dtype)
        dtype = resolve_dtype(dtype or "auto", self.device)
        if model is None or tokenizer is None:
            from transformers import AutoModel, AutoTokenizer

            from ..sampling.hf_models import resolve_torch_dtype

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.prm_model, trust_remote_code=trust_remote_code)
            if model is None:
                td = resolve_torch_dtype(dtype, self.device)
                if trust_remote_code:
                    model = AutoModel.from_pretrained(config.prm_model, dtype=td, trust_remote_code=True)
                else:
                    model = prm_model_class().from_pretrained(config.prm_model, dtype=td)
            model = model.to(self.device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.dtype = dtype
        sep = tokenizer.encode(STEP_SEPARATOR, add_special_tokens=False)
        if len(sep) != 1:
            raise ValueError(
                f"PRM tokenizer of {config.prm_model!r} encodes the step separator {STEP_SEPARATOR!r} as {sep}; "
                "expected one token (is this a Qwen2.5-Math-PRM checkpoint?)"
            )
        self.sep_id = sep[0]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError(f"PRM tokenizer of {config.prm_model!r} has neither a pad nor an eos token")
        self.pad_id = pad

    def describe(self) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "model": self.config.prm_model,
            "aggregation": self.config.aggregation,
            "steps": "split at blank lines (optscale.data.grading.split_steps), joined with <extra_0>",
            "step_reward": "softmax(reward head)[positive] at each <extra_0>",
            "system_prompt": PRM_SYSTEM_PROMPT,
            "dtype": self.dtype,
            "batch_size": self.config.prm_batch_size,
        }

    def encode(self, question: str, text: str) -> tuple[list[int], int]:
        """Token ids of one (question, sample) conversation and its number of steps."""
        messages, n_steps = build_prm_conversation(question, text)
        conv = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = self.tokenizer(conv, add_special_tokens=False)["input_ids"]
        found = sum(1 for t in ids if t == self.sep_id)
        if found != n_steps:
            raise ValueError(f"PRM input holds {found} step separators for {n_steps} steps "
                             "(the chat template or tokenizer altered <extra_0>)")
        return list(ids), n_steps

    def step_rewards(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Positive-class probability at every separator of each token sequence, in batches of
        ``prm_batch_size`` (longest first)."""
        import torch

        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        out: list[list[float]] = [[] for _ in sequences]
        bs = max(1, int(self.config.prm_batch_size))
        with torch.inference_mode():
            for b in range(0, len(order), bs):
                idx = order[b : b + bs]
                width = max(len(sequences[i]) for i in idx)
                ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    seq = torch.as_tensor(list(sequences[i]), dtype=torch.long)
                    ids[r, : len(seq)] = seq
                    mask[r, : len(seq)] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = self.model(input_ids=ids, attention_mask=mask)
                logits = logits[0] if isinstance(logits, (tuple, list)) else getattr(logits, "logits", logits)
                probs = torch.softmax(logits.float(), dim=-1)[..., 1]  # (batch, tokens)
                at_sep = (ids == self.sep_id) & mask.bool()
                for r, i in enumerate(idx):
                    out[i] = probs[r][at_sep[r]].tolist()
        return out

    def score(self, question: str, completions: Sequence[Completion]) -> list[ScoreResult]:
        encoded = [self.encode(question, c.text) for c in completions]
        rewards = self.step_rewards([ids for ids, _ in encoded])
        results = []
        for (_, n_steps), steps in zip(encoded, rewards):
            if len(steps) != n_steps:  # pragma: no cover - guarded by encode()
                raise ValueError(f"PRM returned {len(steps)} step rewards for {n_steps} steps")
            steps = [min(1.0, max(0.0, float(s))) for s in steps]
            results.append(ScoreResult(aggregate_steps(steps, self.config.aggregation), tuple(steps)))
        return results
