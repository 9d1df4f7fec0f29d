"""The sampler contract: requests in, plain completion records out.

Every backend (transformers on CPU, llama.cpp, vLLM in-process, OpenAI-compatible endpoints)
implements :meth:`Sampler.generate`. A request asks for ``n`` samples of one prompt; the
sampler returns ``n`` :class:`Completion` records with the text, token count, per-token
log-probabilities of the chosen tokens under the model's untempered distribution, the mean of
the top-k log-probabilities per token (DeepConf's token confidence), character offsets of token
ends (so scorers can align tokens with reasoning steps), the finish reason and the seed used.

Every backend passes each completion through :func:`validate_completion` before returning it, so
a broken server reply or a backend bug never reaches a pool: the text is present, the token
count is >= 1 (0 only for an empty completion ended by EOS at once), at most the request's
``max_new_tokens`` and plausible for the text, there is one log-prob, token confidence and end
offset per token, every log-prob is finite and <= 0, and the offsets rise within the text. The
endpoint sampler treats a reply that fails it as a fault of the replica that sent it (retried on
another one); an in-process backend raises :class:`InvalidReplyError` at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import operator
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from importlib import resources
from numbers import Integral, Real
from typing import Any, Callable, Sequence

__all__ = ["run_coroutine_sync", "SampleRequest", "Completion", "Sampler", "derive_seed", "load_prompt_template",
           "SamplerError", "InvalidReplyError", "chat_messages", "validate_completion", "completion_problems",
           "FINISH_REASONS", "LOGPROB_TOLERANCE", "MAX_TOKENS_SLACK", "TOKENS_PER_CHAR", "TOKEN_SLACK"]

FINISH_REASONS = ("stop", "stop_string", "length")
# A log-prob may exceed 0 by float rounding of a log-softmax (float32: ~1e-6 for logits near 30),
# never by more; 5.0 (a probability of 148) is a broken reply.
LOGPROB_TOLERANCE = 1e-3
# Tokens beyond ``max_new_tokens`` a reply may count: a server that counts the end-of-sequence token.
MAX_TOKENS_SLACK = 1
# A byte-level tokenizer's token (other than a special one) decodes to >= 1 byte and a character is
# <= 4 UTF-8 bytes, so n tokens of text need >= n / 4 characters; TOKEN_SLACK tokens more cover special
# tokens that decode to nothing and the tokens of a stop string cut from the text (plus
# TOKENS_PER_CHAR per character of the longest stop string).
TOKENS_PER_CHAR = 4
TOKEN_SLACK = 16


class SamplerError(RuntimeError):
    """A backend that cannot serve a request (missing dependency, dead endpoint, ...)."""


class InvalidReplyError(SamplerError):
    """A completion, or a server's reply, that breaks the sampler contract (no text, no or
    impossible log-probs, a token count that cannot be): never written to a pool. The endpoint
    sampler retries it on another replica; in-process backends raise it."""


@dataclass(frozen=True)
class SampleRequest:
    prompt: str  # the user message (already formatted from the prompt template)
    n: int
    max_new_tokens: int
    seed: int
    key: str = ""  # caller's id for logs and sharding, e.g. "gsm8k/12"
    prefix: str = ""  # assistant text to continue from (particle filtering, revisions)
    stop: tuple[str, ...] = ()  # stop strings; the stop string is kept out of the text


@dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (EOS), "stop_string", "length"
    seed: int
    token_logprobs: list[float] = field(default_factory=list)
    token_confidence: list[float] = field(default_factory=list)  # mean top-k log-prob per token
    token_char_ends: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bad_logprob(v: Any) -> bool:
    return isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v > LOGPROB_TOLERANCE


def _logprob_problem(name: str, values: Sequence[Any]) -> str | None:
    """None when every value is a finite log-probability <= 0 (within LOGPROB_TOLERANCE), else
    the first bad one and how many there are."""
    try:  # fast path (C loops; a NaN or infinity makes the sum non-finite); any doubt: the scan below
        if not values or (math.isfinite(sum(values)) and max(values) <= LOGPROB_TOLERANCE):
            return None
    except TypeError:
        pass
    bad = [i for i, v in enumerate(values) if _bad_logprob(v)]
    if not bad:
        return None
    return (f"{name}[{bad[0]}] = {values[bad[0]]!r} is not a finite log-probability <= 0 "
            f"({len(bad)} of {len(values)} bad)")


def completion_problems(completion: Completion, request: SampleRequest, logprobs: bool = True) -> list[str]:
    """What is wrong with ``completion`` as an answer to ``request`` (empty: nothing). See
    :func:`validate_completion` for the rules; ``logprobs``: whether per-token log-probs were
    asked for (every backend asks)."""
    c, problems = completion, []
    text = c.text if isinstance(c.text, str) else None
    if text is None:
        problems.append(f"no text (text={c.text!r})")
    if c.finish_reason not in FINISH_REASONS:
        problems.append(f"finish_reason={c.finish_reason!r} (expected one of {', '.join(FINISH_REASONS)})")
    if isinstance(c.seed, bool) or not isinstance(c.seed, Integral):
        problems.append(f"seed={c.seed!r} is not an integer")
    n = c.n_tokens
    if isinstance(n, bool) or not isinstance(n, Integral):
        problems.append(f"n_tokens={n!r} is not an integer")
        n = None
    elif n < 0:
        problems.append(f"n_tokens={n} is negative")
    elif n > request.max_new_tokens + MAX_TOKENS_SLACK:
        problems.append(f"n_tokens={n} is more than the request's max_new_tokens={request.max_new_tokens}")
    elif n == 0 and not (text == "" and (c.finish_reason == "stop" or request.max_new_tokens == 0)):
        problems.append(f"n_tokens=0 for a completion with {len(text or '')} characters of text and finish_reason "
                        f"{c.finish_reason!r} (zero tokens means an empty text ended by EOS at once)")
    elif text is not None:
        stop_chars = max((len(x) for x in request.stop), default=0)
        limit = TOKENS_PER_CHAR * (len(text) + stop_chars) + TOKEN_SLACK
        if n > limit:
            problems.append(f"n_tokens={n} is implausible for {len(text)} characters of text (at most {limit}: "
                            f"{TOKENS_PER_CHAR} per character + {TOKEN_SLACK})")
    per_token = {"token_logprobs": c.token_logprobs, "token_confidence": c.token_confidence,
                 "token_char_ends": c.token_char_ends}
    for name, values in per_token.items():
        if not isinstance(values, (list, tuple)):
            problems.append(f"{name} is a {type(values).__name__}, not a list")
            continue
        if n is not None and len(values) != n and (logprobs or values):
            hint = " (did the server ignore `logprobs`?)" if not values and name != "token_char_ends" else ""
            problems.append(f"{len(values)} {name} for {n} tokens{hint}")
        if name != "token_char_ends":
            why = _logprob_problem(name, values)
            if why:
                problems.append(why)
    ends = c.token_char_ends
    if isinstance(ends, (list, tuple)) and ends and text is not None:
        try:
            plain_ints = type(sum(ends)) is int  # fast path: a sum of ints is an int
        except TypeError:
            plain_ints = False
        if not plain_ints and not all(isinstance(e, Integral) and not isinstance(e, bool) for e in ends):
            problems.append("token_char_ends holds a value that is not an integer")
        elif ends[0] < 0 or max(ends) > len(text) or not all(map(operator.le, ends, ends[1:])):
            problems.append(f"token_char_ends do not rise within the text's {len(text)} characters "
                            f"(first {list(ends[:3])}, last {ends[-1]})")
    return problems


def validate_completion(completion: Completion, request: SampleRequest, source: str = "",
                        logprobs: bool = True) -> Completion:
    """``completion`` unchanged when it is a valid answer to ``request``, else an
    :class:`InvalidReplyError` that names ``source`` (a replica's URL, a backend), the request
    and every problem. Valid means:

    - ``text`` is a string and ``finish_reason`` one of :data:`FINISH_REASONS`;
    - ``n_tokens`` is an integer >= 1, at most ``request.max_new_tokens`` (+ :data:`MAX_TOKENS_SLACK`)
      and at most :data:`TOKENS_PER_CHAR` per character of text (+ :data:`TOKEN_SLACK`); 0 only for an
      empty text that ended with EOS at once;
    - with ``logprobs`` (asked for), one chosen-token log-prob, one token confidence and one end
      offset per token; every log-prob and confidence finite and <= 0 (+ :data:`LOGPROB_TOLERANCE`);
      the end offsets integers rising within the text.
    """
    problems = completion_problems(completion, request, logprobs=logprobs)
    if problems:
        where = f"{source}: " if source else ""
        raise InvalidReplyError(f"{where}invalid completion for request {request.key!r} (seed {completion.seed!r}): "
                                + "; ".join(problems))
    return completion


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (run seed, dataset, question id, batch index)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def chat_messages(config: Any, prompt: str) -> list[dict[str, str]]:
    """The chat a backend formats with the model's template: ``sampling.system_prompt`` as the
    system message when it is set (else the template's own default), then the user prompt."""
    system = getattr(config, "system_prompt", "") or ""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def load_prompt_template(name: str) -> str:
    return resources.files("optscale.prompts").joinpath(name).read_text()


class Sampler(ABC):
    """Base class. Subclasses set ``name`` and implement :meth:`generate`."""

    name: str = "base"

    @abstractmethod
    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        """One list of ``request.n`` completions per request, in request order."""

    def describe(self) -> dict[str, Any]:
        """Metadata stored once per pool (model, backend, decoding settings). Subclasses add
        their own keys to this dict."""
        meta: dict[str, Any] = {"backend": self.name}
        c = getattr(self, "config", None)
        if c is not None:
            meta.update(model=c.model, dtype=c.dtype, temperature=c.temperature, top_p=c.top_p,
                        prompt_template=getattr(self, "template", c.prompt_template))
        return meta

    def close(self) -> None:  # pragma: no cover - default no-op
        pass


def run_coroutine_sync(make_coro: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from synchronous code, also where an event loop is already
    running in this thread (Jupyter): then in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = asyncio.run(make_coro())
        except BaseException as e:  # re-raised in the caller's thread
            box["err"] = e

    t = threading.Thread(target=target, name="optscale-event-loop")
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["out"]
