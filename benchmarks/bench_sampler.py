"""CPU generation throughput of the embedded model, measured in one run (ratios, not asserts).

Compares, on the same prompt and token budget: transformers ``model.generate`` in float32 and
bfloat16, and the project's decoding loop (:class:`optscale.samplers.hf_cpu.HFSampler`) in
bfloat16, which prefills once and drops finished sequences. Prints tokens/s and ratios.

    python benchmarks/bench_sampler.py [--n 16] [--tokens 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from optscale.config import SamplingConfig
from optscale.data import load_benchmark
from optscale.hf_models import load_causal_lm
from optscale.samplers import SampleRequest, get_sampler


def bench_generate(model, tok, prompt_ids, n, tokens):
    inp = prompt_ids.repeat(n, 1)
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=True, temperature=0.7,
                             top_p=0.95, max_new_tokens=tokens, pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t
    new = out[:, inp.shape[1]:]
    produced = int((new != tok.pad_token_id).sum())
    return produced / dt, produced, dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    q = load_benchmark("gsm8k")[0].question
    results = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_causal_lm("qwen2.5-coder-0.5b-instruct-q4", dtype)
        s = get_sampler("hf-cpu", SamplingConfig(dtype=dtype, batch_size=args.n), model=model, tokenizer=tok)
        req = SampleRequest(prompt=s.format_prompt(q), n=args.n, max_new_tokens=args.tokens, seed=0)
        ids = s.prompt_ids(req)
        results[f"generate/{dtype}"] = bench_generate(model, tok, ids, args.n, args.tokens)
        t = time.perf_counter()
        comps = s.generate([req])[0]
        dt = time.perf_counter() - t
        produced = sum(c.n_tokens for c in comps)
        results[f"optscale-loop/{dtype}"] = (produced / dt, produced, dt)
    print(f"{'method':28s} {'tok/s':>8s} {'tokens':>7s} {'seconds':>8s}")
    for k, (rate, n, dt) in results.items():
        print(f"{k:28s} {rate:8.1f} {n:7d} {dt:8.1f}")
    base = results["generate/float32"][0]
    for k, (rate, _, _) in results.items():
        print(f"ratio {k} / generate-float32: {rate / base:.2f}x")


if __name__ == "__main__":
    main()
