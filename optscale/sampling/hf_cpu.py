"""transformers sampler (the CPU default; also runs on a GPU with ``device='cuda'``).

A small decoding loop instead of ``model.generate``, for three reasons measured on the 2-core
default machine: the prompt is prefilled once and its KV cache repeated for the ``batch_size``
samples of a chunk; finished sequences are dropped from the batch at once (``generate`` keeps
computing padding for them until the longest one ends, ~25% of the work on GSM8K); and the
log-probabilities of the raw model distribution (temperature 1, before top-p) are recorded per
step without keeping (steps x vocab) logits. Sampling uses a seeded ``torch.Generator`` per
chunk, so the same seed gives the same samples.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..config import SamplingConfig
from .base import (Completion, SampleRequest, Sampler, SamplerError, chat_messages, derive_seed, load_prompt_template,
                   validate_completion)

__all__ = ["HFSampler"]


class HFSampler(Sampler):
    name = "hf-cpu"

    def __init__(self, config: SamplingConfig, device: str = "cpu", model: Any = None, tokenizer: Any = None):
        self.config = config
        self.device = device
        if model is None:
            from .hf_models import load_causal_lm

            model, tokenizer = load_causal_lm(config.model, config.dtype, device)
        self.model, self.tokenizer = model, tokenizer
        if config.repetition_penalty != 1.0:
            raise SamplerError(
                f"sampling.repetition_penalty={config.repetition_penalty}: the hf-cpu backend has no repetition "
                "penalty (llama.cpp's penalty over the last 64 generated tokens has no exact transformers "
                "equivalent); use backend 'llama-cpp' or repetition_penalty 1.0"
            )
        self.template = load_prompt_template(config.prompt_template)
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end >= 0 and im_end not in eos and im_end != self.tokenizer.unk_token_id:
            eos.append(im_end)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = eos

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            **super().describe(),
            "dtype": str(self.model.dtype).removeprefix("torch."),  # the dtype computed in (sampling.dtype auto: resolved)
            "device": self.device,
            "batch_size": c.batch_size,
            "logprobs": "raw model distribution (temperature 1), chosen token and top-%d mean" % c.top_k_logprobs,
        }

    def format_prompt(self, question: str) -> str:
        return self.template.replace("{question}", question).strip()

    def prompt_ids(self, request: SampleRequest):
        text = self.tokenizer.apply_chat_template(
            chat_messages(self.config, request.prompt), tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text + request.prefix, return_tensors="pt", add_special_tokens=False)["input_ids"]

    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        return [[validate_completion(c, r, source=self.name) for c in self._generate_one(r)] for r in requests]

    def _generate_one(self, req: SampleRequest) -> list[Completion]:
        out: list[Completion] = []
        chunk = 0
        while len(out) < req.n:
            k = min(self.config.batch_size, req.n - len(out))
            seed = derive_seed(req.seed, chunk)
            out.extend(self._sample_chunk(req, k, seed))
            chunk += 1
        return out

    def _sample_chunk(self, req: SampleRequest, k: int, seed: int) -> list[Completion]:
        import torch

        c = self.config
        gen = torch.Generator(device=self.device).manual_seed(seed)
        eos = torch.tensor(self.eos_ids, device=self.device)
        ids = self.prompt_ids(req).to(self.device)
        tokens: list[list[int]] = [[] for _ in range(k)]
        lps: list[list[float]] = [[] for _ in range(k)]
        confs: list[list[float]] = [[] for _ in range(k)]
        finish = ["length"] * k
        active = torch.arange(k, device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True)
            cache = out.past_key_values
            cache.batch_repeat_interleave(k)
            logits = out.logits[:, -1, :].float().expand(k, -1)
            for step in range(req.max_new_tokens):
                logp = torch.log_softmax(logits, dim=-1)
                conf = logp.topk(c.top_k_logprobs, dim=-1).values.mean(-1)
                tok = self._draw(logits, gen)
                chosen = logp.gather(1, tok[:, None]).squeeze(1)
                done = torch.isin(tok, eos)
                for j, (row, t, lp, cf, d) in enumerate(
                    zip(active.tolist(), tok.tolist(), chosen.tolist(), conf.tolist(), done.tolist())
                ):
                    if d:
                        finish[row] = "stop"
                        continue
                    tokens[row].append(t)
                    lps[row].append(lp)
                    confs[row].append(cf)
                    if req.stop and self._hit_stop(tokens[row], req.stop):
                        finish[row] = "stop_string"
                        done[j] = True
                if step == req.max_new_tokens - 1:
                    break
                keep = (~done).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                if keep.numel() < active.numel():
                    cache.batch_select_indices(keep)
                    active, tok = active[keep], tok[keep]
                out = self.model(input_ids=tok[:, None], past_key_values=cache, use_cache=True)
                logits = out.logits[:, -1, :].float()
        return [self._to_completion(req, tokens[r], lps[r], confs[r], seed, finish[r]) for r in range(k)]

    def _draw(self, logits, gen):
        """Temperature + nucleus (top-p) sampling; greedy at temperature 0."""
        import torch

        c = self.config
        if c.temperature <= 0:
            return logits.argmax(-1)
        if c.top_k > 0:
            kth = logits.topk(min(c.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits / c.temperature, dim=-1)
        if c.top_p < 1.0:
            sp, si = probs.sort(dim=-1, descending=True)
            cum = sp.cumsum(-1)
            sp = sp.masked_fill(cum - sp > c.top_p, 0.0)
            pick = torch.multinomial(sp, 1, generator=gen)
            return si.gather(1, pick).squeeze(1)
        return torch.multinomial(probs, 1, generator=gen).squeeze(1)

    def _hit_stop(self, toks: list[int], stop: tuple[str, ...]) -> bool:
        tail = self.tokenizer.decode(toks[-8:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    def _to_completion(
        self, req: SampleRequest, toks: list[int], lp: list[float], conf: list[float], seed: int, finish: str
    ) -> Completion:
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        ends, total = [], 0
        for t in toks:
            total += len(self.tokenizer.decode([t], skip_special_tokens=True))
            ends.append(min(total, len(text)))
        n = len(toks)
        if finish == "stop_string":
            hits = [text.find(s) for s in req.stop if s in text]
            cut = min(hits) if hits else len(text)
            text = text[:cut]
            ends = [min(e, cut) for e in ends]
        return Completion(
            text=text,
            n_tokens=n,
            finish_reason=finish,
            seed=seed,
            token_logprobs=[float(x) for x in lp],
            token_confidence=[float(x) for x in conf],
            token_char_ends=ends,
        )
