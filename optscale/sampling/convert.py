"""Conversion helpers shared by the OpenAI-compatible, vLLM and llama.cpp samplers: server choices
to :class:`~optscale.sampling.base.Completion` (log-probs, top-k means, token end offsets, finish
reasons), base URLs, and the chat tokenizer of an embedded or named model.

A reply whose shape is broken (no text, log-probs that are not numbers, a usage count that cannot
be) raises :class:`~optscale.sampling.base.InvalidReplyError`; the caller then checks the
completion with :func:`~optscale.sampling.base.validate_completion`.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Sequence

from .base import MAX_TOKENS_SLACK, Completion, InvalidReplyError, SamplerError

__all__ = ["topk_mean", "char_ends_from_tokens", "completion_from_choice", "normalize_base_url", "load_chat_tokenizer"]


def topk_mean(logprobs: Sequence[float], k: int) -> float:
    """Mean of the ``k`` largest log-probs (fewer if fewer are given): DeepConf's token confidence."""
    vals = sorted((float(x) for x in logprobs), reverse=True)[: max(k, 1)]
    if not vals:
        raise InvalidReplyError("no top log-probs for a generated token (did the server ignore `logprobs`?)")
    return sum(vals) / len(vals)


def char_ends_from_tokens(pieces: Sequence[str], text: str) -> list[int]:
    """End offset in ``text`` of each generated token, from the tokens' strings (clipped to the
    text, which a stop string may have shortened)."""
    ends, total = [], 0
    for p in pieces:
        total += len(p)
        ends.append(min(total, len(text)))
    return ends


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or key access, for both openai-client objects and plain dicts (llama.cpp)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    val = getattr(obj, name, default)
    if val is default and getattr(obj, "model_extra", None):
        val = obj.model_extra.get(name, default)
    return val


def _finish(choice: Any, stop: Sequence[str], tail: str) -> str:
    """Map OpenAI's finish_reason to stop | stop_string | length. vLLM reports ``stop_reason``
    (the matched stop string, or None for EOS); otherwise a stop string is recognised in the
    generated tokens past the returned text."""
    fr = _get(choice, "finish_reason")
    if fr == "length":
        return "length"
    if fr != "stop":
        raise InvalidReplyError(f"server returned finish_reason={fr!r}")
    sr = _get(choice, "stop_reason")
    if isinstance(sr, str):
        return "stop_string"
    if stop and sr is None and any(s in tail for s in stop):
        return "stop_string"
    return "stop"


def _usage_tokens(usage: Any, max_tokens: int | None) -> int | None:
    """``usage.completion_tokens`` when the server reports it, checked: a non-negative integer, at
    most the request's ``max_tokens`` (+ MAX_TOKENS_SLACK)."""
    n = _get(usage, "completion_tokens") if usage is not None else None
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 0:
        raise InvalidReplyError(f"usage.completion_tokens={n!r} is not a token count")
    if max_tokens is not None and n > max_tokens + MAX_TOKENS_SLACK:
        raise InvalidReplyError(f"usage.completion_tokens={n} is more than the max_tokens={max_tokens} asked for")
    return int(n)


def _text_tokens_logprobs(choice: Any, api: str) -> tuple[str, list[str], list[float], list[list[float]]]:
    if api == "chat":
        msg = _get(choice, "message")
        text = _get(msg, "content")
        if not isinstance(text, str):
            raise InvalidReplyError(f"no message content in the reply's choice (content={text!r}; a reasoning "
                                    "parser on the server moves the answer out of `content`)")
        content = _get(_get(choice, "logprobs"), "content") or []
        tokens = [_get(t, "token") or "" for t in content]
        chosen = [float(_get(t, "logprob")) for t in content]
        tops = [[float(_get(x, "logprob")) for x in (_get(t, "top_logprobs") or [])] or [float(_get(t, "logprob"))]
                for t in content]
    else:
        text = _get(choice, "text")
        if not isinstance(text, str):
            raise InvalidReplyError(f"no text in the reply's choice (text={text!r})")
        lp = _get(choice, "logprobs")
        tokens = list(_get(lp, "tokens") or [])
        chosen = [float(x) for x in (_get(lp, "token_logprobs") or [])]
        tops = [[float(v) for v in (d or {}).values()] for d in (_get(lp, "top_logprobs") or [])]
    if not all(isinstance(t, str) for t in tokens):
        raise InvalidReplyError("the reply's log-prob tokens are not all strings")
    return text, tokens, chosen, tops


def completion_from_choice(choice: Any, usage: Any, seed: int, stop: Sequence[str], top_k: int,
                           api: str = "completions", max_tokens: int | None = None) -> Completion:
    """One OpenAI ``choice`` (+ ``usage``) to a :class:`Completion`.

    ``completions`` API: ``choice.logprobs`` has ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (one ``{token: logprob}`` per token). ``chat`` API:
    ``choice.logprobs.content`` is a list of ``{token, logprob, top_logprobs: [{token, logprob}]}``.
    A choice without text, with log-probs that are not numbers, or with a ``usage`` count that is
    negative, not an integer or above ``max_tokens`` (the request's cap, when given) raises
    :class:`~optscale.sampling.base.InvalidReplyError`. The values themselves are checked by
    :func:`~optscale.sampling.base.validate_completion`.
    """
    try:
        text, tokens, chosen, tops = _text_tokens_logprobs(choice, api)
    except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong type in the reply
        raise InvalidReplyError(f"malformed choice in the reply ({type(e).__name__}: {e})") from None
    if len(chosen) != len(tokens) or len(tops) != len(tokens):
        raise InvalidReplyError(f"server returned {len(tokens)} tokens, {len(chosen)} log-probs, "
                                f"{len(tops)} top-k lists")
    # As in the CPU sampler, every generated token counts (a stop string's tokens included,
    # EOS excluded); the text ends before the stop string and the token ends are clipped to it.
    tail = "".join(tokens)[len(text):]
    n_usage = _usage_tokens(usage, max_tokens)
    n_tokens = len(tokens) if tokens else (n_usage or 0)
    return Completion(
        text=text,
        n_tokens=int(n_tokens),
        finish_reason=_finish(choice, stop, tail),
        seed=int(seed),
        token_logprobs=chosen,
        token_confidence=[topk_mean(t, top_k) for t in tops],
        token_char_ends=char_ends_from_tokens(tokens, text),
    )


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` or ``http://host:8000/v1/`` -> ``http://host:8000/v1``."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SamplerError(f"endpoint {url!r}: expected an http(s):// base URL such as http://127.0.0.1:8000/v1")
    return url if url.endswith("/v1") else url + "/v1"


def load_chat_tokenizer(model: str) -> Any:
    """The tokenizer whose chat template formats prompts for ``model``: the embedded CPU model's
    (from its converted cache or its GGUF), else a local directory or hub id."""
    from transformers import AutoTokenizer

    from .hf_models import EMBEDDED_MODELS
    from .model_files import assemble_gguf, cache_dir

    if model in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[model]
        for d in sorted(cache_dir().glob(f"{spec.name}-*-hf-{(spec.sha256 or '')[:12]}")):
            if (d / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(str(d))
        gguf = assemble_gguf(spec)
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        return AutoTokenizer.from_pretrained(model)
    except Exception as e:
        raise SamplerError(
            f"openai sampler (api='completions') formats prompts with {model!r}'s chat template but "
            f"cannot load its tokenizer ({type(e).__name__}: {e}). Give a local model directory as "
            "sampling.model, or use api='chat'."
        ) from None
