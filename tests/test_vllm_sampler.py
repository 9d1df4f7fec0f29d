"""The vLLM sampler: request/output conversion on CPU with vLLM-shaped fakes; a real run on GPU.

The fakes mirror vLLM's objects: ``RequestOutput.outputs`` is a list of ``CompletionOutput``
(``text``, ``token_ids``, ``logprobs`` = one ``{token_id: Logprob(logprob, rank,
decoded_token)}`` per generated token, ``finish_reason``, ``stop_reason``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from optscale.config import load_config
from optscale.sampling import SAMPLERS, SampleRequest, SamplerError
from optscale.sampling.vllm import VLLMSampler, completions_from_vllm_output, require_vllm, sampling_params_kwargs


@dataclass
class FakeSamplingParams:
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    logprobs: int
    seed: int
    skip_special_tokens: bool = True
    stop: list | None = None
    include_stop_str_in_output: bool = False


class FakeTokenizer:
    """Character-level 'tokenizer' with a Qwen-like chat template and a BOS inside the template."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "^" + "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(ch) for ch in text]
        return {"input_ids": ([ord("^")] if add_special_tokens else []) + ids}


VOCAB = {1: " The", 2: " answer", 3: " is", 4: " 5", 5: ".", 6: "\n\n", 7: " six"}


def _logprob_entry(chosen: int, k: int):
    """vLLM's per-token dict: the top-k tokens plus the chosen one (ranks from 1)."""
    top = {tid: SimpleNamespace(logprob=-0.2 * r, rank=r, decoded_token=VOCAB[tid]) for r, tid in
           enumerate([4, 1, 2, 3, 5, 6, 7][:k], start=1)}
    if chosen not in top:
        top[chosen] = SimpleNamespace(logprob=-4.0, rank=9, decoded_token=VOCAB[chosen])
    return top


def _output(token_ids, finish, stop_reason=None, k=3, cut=None):
    text = "".join(VOCAB[t] for t in token_ids)
    if cut:
        text = text[: text.find(cut)]
    return SimpleNamespace(text=text, token_ids=tuple(token_ids), logprobs=[_logprob_entry(t, k) for t in token_ids],
                           finish_reason=finish, stop_reason=stop_reason, cumulative_logprob=None)


class FakeLLM:
    """Records what it was asked and answers with scripted outputs (one RequestOutput per prompt)."""

    def __init__(self, scripted):
        self.scripted = scripted
        self.calls = []

    def get_tokenizer(self):
        return FakeTokenizer()

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append((prompts, params))
        return [SimpleNamespace(request_id=str(i), outputs=self.scripted[i][: p.n]) for i, p in enumerate(params)]


def _cfg(**over):
    return load_config("cpu", {"sampling.backend": "vllm", "sampling.top_k_logprobs": 3, **over}).sampling


def test_sampling_params_follow_config_and_request():
    cfg = _cfg(**{"sampling.temperature": 0.7, "sampling.top_p": 0.95})
    req = SampleRequest(prompt="q", n=64, max_new_tokens=100, seed=42, stop=("\n\n",))
    kw = sampling_params_kwargs(req, cfg)
    assert kw == {"n": 64, "temperature": 0.7, "top_p": 0.95, "max_tokens": 100, "logprobs": 3, "seed": 42,
                  "skip_special_tokens": True, "stop": ["\n\n"], "include_stop_str_in_output": False}
    assert "stop" not in sampling_params_kwargs(SampleRequest(prompt="q", n=1, max_new_tokens=5, seed=0), cfg)


def test_output_conversion_fields():
    req = SampleRequest(prompt="q", n=3, max_new_tokens=5, seed=9, key="math500/1", stop=("\n\n",))
    ro = SimpleNamespace(outputs=[
        _output([1, 2, 3, 4, 5], "length"),
        _output([1, 7], "stop", stop_reason=None),  # EOS
        _output([1, 2, 6], "stop", stop_reason="\n\n", cut="\n\n"),  # stop string, cut from the text
    ])
    a, b, c = completions_from_vllm_output(ro, req, top_k=3)
    assert a.text == " The answer is 5." and a.n_tokens == 5 and a.finish_reason == "length" and a.seed == 9
    assert a.token_logprobs == pytest.approx([-0.4, -0.6, -4.0, -0.2, -4.0])  # 3 and 5 are off the top-3
    assert a.token_confidence == pytest.approx([-0.4] * 5)  # mean of the top-3: -0.2, -0.4, -0.6
    assert a.token_char_ends == [4, 11, 14, 16, 17] and a.token_char_ends[-1] == len(a.text)
    assert b.finish_reason == "stop" and b.token_logprobs == pytest.approx([-0.4, -4.0])
    assert b.token_confidence == pytest.approx([-0.4, -0.4])  # an off-top-k chosen token is not in the mean
    assert c.finish_reason == "stop_string" and c.text == " The answer" and c.n_tokens == 3
    assert c.token_char_ends == [4, 11, 11]
    assert len(c.token_logprobs) == c.n_tokens  # the pool's invariant


def test_output_conversion_errors_name_the_request():
    req = SampleRequest(prompt="q", n=2, max_new_tokens=5, seed=0, key="gsm8k/7")
    with pytest.raises(SamplerError, match="1 samples for request 'gsm8k/7', expected 2"):
        completions_from_vllm_output(SimpleNamespace(outputs=[_output([1], "length")]), req, 3)
    no_lp = _output([1], "length")
    no_lp.logprobs = None
    with pytest.raises(SamplerError, match="logprobs must be set"):
        completions_from_vllm_output(SimpleNamespace(outputs=[no_lp, no_lp]), req, 3)
    with pytest.raises(SamplerError, match="abort"):
        completions_from_vllm_output(SimpleNamespace(outputs=[_output([1], "abort")] * 2), req, 3)


def test_sampler_with_fake_llm_prompts_prefix_and_batching():
    llm = FakeLLM([[_output([1, 2], "length"), _output([3], "stop")], [_output([4, 5], "stop")]])
    s = VLLMSampler(_cfg(), llm=llm, sampling_params_cls=FakeSamplingParams)
    reqs = [SampleRequest(prompt="What is 2+3?", n=2, max_new_tokens=2, seed=1, key="a"),
            SampleRequest(prompt="Go on", n=1, max_new_tokens=4, seed=2, key="b", prefix="Step 1:")]
    out = s.generate(reqs)
    assert [len(x) for x in out] == [2, 1] and out[1][0].text == " 5."
    assert len(llm.calls) == 1  # one batched call for all requests
    prompts, params = llm.calls[0]
    ids0 = prompts[0]["prompt_token_ids"]
    assert "".join(map(chr, ids0)) == "^<user>What is 2+3?<assistant>"  # template, one BOS only
    assert "".join(map(chr, prompts[1]["prompt_token_ids"])).endswith("<assistant>Step 1:")
    assert params[0] == FakeSamplingParams(n=2, temperature=0.7, top_p=0.95, max_tokens=2, logprobs=3, seed=1)
    assert s.describe()["backend"] == "vllm" and s.generate([]) == []


def test_registered_and_clear_error_without_vllm_or_cuda():
    assert SAMPLERS.get("vllm") is VLLMSampler
    try:
        import vllm  # noqa: F401
        import torch

        if torch.cuda.is_available():
            pytest.skip("vLLM and CUDA are present: nothing is missing")
    except ImportError:
        pass
    with pytest.raises(SamplerError, match="vLLM|CUDA"):
        require_vllm()
    with pytest.raises(SamplerError, match="'openai'"):
        VLLMSampler(_cfg())


@pytest.mark.gpu
def test_real_vllm_on_gpu():
    pytest.importorskip("vllm", reason="vLLM is not installed")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import os

    model = os.environ.get("OPTSCALE_VLLM_TEST_MODEL")
    if not model:
        from optscale.sampling.model_files import assemble_gguf

        model = str(assemble_gguf())  # vLLM loads GGUF files (tokenizer from the GGUF metadata)
    cfg = _cfg(**{"sampling.model": model, "sampling.gpu_memory_utilization": 0.5})
    s = VLLMSampler(cfg, max_model_len=2048)
    reqs = [SampleRequest(prompt="What is 2+3? Put the answer in \\boxed{}.", n=4, max_new_tokens=32, seed=3, key="a")]
    out = s.generate(reqs)
    again = s.generate(reqs)
    assert [c.text for c in out[0]] == [c.text for c in again[0]]  # seeded
    for c in out[0]:
        assert 1 <= c.n_tokens <= 32 and len(c.token_logprobs) == c.n_tokens
        assert all(lp <= 0 and math.isfinite(lp) for lp in c.token_logprobs)
