"""The sampler contract: requests in, plain completion records out.

Every backend (transformers on CPU, llama.cpp, vLLM in-process, OpenAI-compatible endpoints)
implements :meth:`Sampler.generate`. A request asks for ``n`` samples of one prompt; the
sampler returns ``n`` :class:`Completion` records with the text, token count, per-token
log-probabilities of the chosen tokens under the model's untempered distribution, the mean of
the top-k log-probabilities per token (DeepConf's token confidence), character offsets of token
ends (so scorers can align tokens with reasoning steps), the finish reason and the seed used.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Callable, Sequence

__all__ = ["run_coroutine_sync", "SampleRequest", "Completion", "Sampler", "derive_seed", "load_prompt_template",
           "SamplerError", "chat_messages"]


class SamplerError(RuntimeError):
    """A backend that cannot serve a request (missing dependency, dead endpoint, ...)."""


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
