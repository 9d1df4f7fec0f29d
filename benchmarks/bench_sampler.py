"""CPU generation throughput of the shipped models, measured in one run (ratios, not asserts).

First, this CPU's torch matmul speed in bfloat16 and float32 (GFLOP/s of a (64 x 1536) @ (1536 x 8960)
matmul, the 1.5B model's MLP shape, on one thread and on all threads), the CPU's model name and flags,
and what ``sampling.dtype: auto`` chooses here: on a CPU without AVX512_BF16 / AMX, bfloat16 is
emulated and far slower than float32. Then, on the same GSM8K prompt, number of sequences and token
budget, for one model:

- ``hf-generate/<dtype>``: transformers ``model.generate`` (the reference loop), in ``--dtype``
  (default ``auto``: :func:`optscale.sampling.hf_models.resolve_dtype`);
- ``hf-cpu/<dtype>``: the project's transformers sampler (prefill once, drop finished sequences,
  records log-probs);
- ``llama-cpp``: the project's llama.cpp sampler (one batch, the prompt's KV cells shared by all
  sequences, llama.cpp's sampler chain, records raw log-probs and top-k confidences);
- ``llama-cpp-raw``: the same llama.cpp batch decoding with nothing else: the same context
  settings, seeds and sampler chains, but no log-prob extraction and no completion records. It
  draws the same tokens as ``llama-cpp`` (checked), so the ratio is the cost of the sampler's
  bookkeeping (goal: the sampler at >= 80% of raw).

    python benchmarks/bench_sampler.py --model qwen2.5-coder-1.5b-instruct [--n 16] [--tokens 128]
    python benchmarks/bench_sampler.py --backends llama-cpp,llama-cpp-raw   # skip transformers
    python benchmarks/bench_sampler.py --backends matmul                   # only the dtype speeds (~5 s)

Run it alone: a second process on the two cores makes every number meaningless.
"""

from __future__ import annotations

import argparse
import os
import time

from optscale.config import SamplingConfig
from optscale.data.benchmarks import load_benchmark
from optscale.sampling import SampleRequest, get_sampler
from optscale.sampling.base import derive_seed, load_prompt_template


MATMUL_SHAPE = (64, 1536, 8960)


def bench_matmul() -> None:
    """Print bf16 and fp32 matmul GFLOP/s on one thread and on all, and the dtype auto chooses."""
    import torch

    from optscale.sampling.cpu import cpu_summary, matmul_gflops
    from optscale.sampling.hf_models import dtype_choice

    cpu = cpu_summary()
    have = [f for f, on in cpu["flags"].items() if on]
    print(f"CPU {cpu['model_name']} ({cpu['cores']} cores), flags: {', '.join(have) or 'none of interest'}; "
          f"torch kernels {torch.backends.cpu.get_cpu_capability()}")
    m, k, n = MATMUL_SHAPE
    threads = torch.get_num_threads()
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        rate = {name: matmul_gflops(dt, MATMUL_SHAPE, budget_s=1.0, max_reps=20)
                for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
        print(f"matmul ({m} x {k}) @ ({k} x {n}), {t} thread(s): float32 {rate['float32']:.1f} GFLOP/s, "
              f"bfloat16 {rate['bfloat16']:.1f} GFLOP/s (bf16 / fp32 = {rate['bfloat16'] / rate['float32']:.2f})")
    torch.set_num_threads(threads)
    choice = dtype_choice("auto", "cpu")
    print(f"sampling.dtype auto -> {choice['chosen']} ({choice['reason']})")


def bench_hf_generate(model, tok, prompt_ids, n, tokens):
    import torch

    inp = prompt_ids.repeat(n, 1)
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=True, temperature=0.7,
                             top_p=0.95, max_new_tokens=tokens, pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t
    produced = int((out[:, inp.shape[1]:] != tok.pad_token_id).sum())
    return produced, dt, None


def bench_llama_raw(sampler, req):
    """Decode ``req.n`` sequences of ``req``'s prompt in one batch with llama.cpp alone."""
    L, ctx, b = sampler._L, sampler.ctx.ctx, sampler.batch.batch
    prompt = sampler.prompt_tokens(req)
    t = time.perf_counter()
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    b.n_tokens = len(prompt)
    for k, tok in enumerate(prompt):
        b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = tok, k, req.n, k == len(prompt) - 1
        for s in range(req.n):
            b.seq_id[k][s] = s
    assert L.llama_decode(ctx, b) == 0
    chains = [sampler._chain(derive_seed(req.seed, j), prompt) for j in range(req.n)]
    seqs = {s: [int(L.llama_sampler_sample(chains[s], ctx, -1))] for s in range(req.n)}
    live = [s for s in seqs if not L.llama_vocab_is_eog(sampler.lm.vocab, seqs[s][-1])]
    for s in seqs:
        if s not in live:
            seqs[s].pop()
    while live:
        b.n_tokens = len(live)
        for k, s in enumerate(live):
            b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = seqs[s][-1], len(prompt) + len(seqs[s]) - 1, 1, True
            b.seq_id[k][0] = s
        assert L.llama_decode(ctx, b) == 0
        nxt = []
        for k, s in enumerate(live):
            tok = int(L.llama_sampler_sample(chains[s], ctx, k))
            if L.llama_vocab_is_eog(sampler.lm.vocab, tok):
                continue
            seqs[s].append(tok)
            if len(seqs[s]) < req.max_new_tokens:
                nxt.append(s)
        live = nxt
    dt = time.perf_counter() - t
    for c in chains:
        L.llama_sampler_free(c)
    return sum(len(v) for v in seqs.values()), dt, [seqs[s] for s in range(req.n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct-q4")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--backends", default="matmul,hf-generate,hf-cpu,llama-cpp,llama-cpp-raw")
    ap.add_argument("--dtype", default="auto", help="transformers dtype: auto, float32, bfloat16")
    args = ap.parse_args()
    want = args.backends.split(",")
    if "matmul" in want:
        bench_matmul()
        if set(want) == {"matmul"}:
            return
    q = load_benchmark("gsm8k")[0].question
    prompt = load_prompt_template("math_words.txt").replace("{question}", q).strip()
    req = SampleRequest(prompt=prompt, n=args.n, max_new_tokens=args.tokens, seed=0)
    cfg = SamplingConfig(model=args.model, batch_size=args.n, prompt_template="math_words.txt",
                         max_new_tokens={"gsm8k": args.tokens})
    results = {}
    if {"hf-generate", "hf-cpu"} & set(want):
        from optscale.sampling.hf_models import load_causal_lm, resolve_dtype

        dtype = resolve_dtype(args.dtype)
        model, tok = load_causal_lm(args.model, dtype)
        s = get_sampler("hf-cpu", cfg, model=model, tokenizer=tok)
        if "hf-generate" in want:
            results[f"hf-generate/{dtype}"] = bench_hf_generate(model, tok, s.prompt_ids(req), args.n, args.tokens)
        if "hf-cpu" in want:
            t = time.perf_counter()
            comps = s.generate([req])[0]
            results[f"hf-cpu/{dtype}"] = (sum(c.n_tokens for c in comps), time.perf_counter() - t, None)
        del model, s
    if {"llama-cpp", "llama-cpp-raw"} & set(want):
        s = get_sampler("llama-cpp", cfg)
        s.generate([SampleRequest(prompt="Hi", n=1, max_new_tokens=2, seed=1)])  # warm-up
        if "llama-cpp" in want:
            t = time.perf_counter()
            comps = s.generate([req])[0]
            results["llama-cpp"] = (sum(c.n_tokens for c in comps), time.perf_counter() - t,
                                    [s.lm.tokenize(c.text.encode(), add_bos=False, special=False) for c in comps])
        if "llama-cpp-raw" in want:
            results["llama-cpp-raw"] = bench_llama_raw(s, req)
        if "llama-cpp" in want and "llama-cpp-raw" in want:
            same = sum(a == b for a, b in zip(results["llama-cpp"][2], results["llama-cpp-raw"][2]))
            print(f"llama-cpp and llama-cpp-raw drew the same tokens for {same}/{args.n} sequences")
        s.close()
    print(f"model {args.model}, {args.n} sequences x up to {args.tokens} new tokens, "
          f"{os.environ.get('OPTSCALE_TORCH_THREADS', os.cpu_count())} threads")
    print(f"{'method':18s} {'tok/s':>8s} {'tokens':>7s} {'seconds':>8s}")
    for k, (n, dt, _) in results.items():
        print(f"{k:18s} {n / dt:8.1f} {n:7d} {dt:8.1f}")
    rate = {k: n / dt for k, (n, dt, _) in results.items()}
    if "llama-cpp" in rate and "llama-cpp-raw" in rate:
        print(f"ratio llama-cpp / llama-cpp-raw: {rate['llama-cpp'] / rate['llama-cpp-raw']:.2f}")
    hf = next((k for k in rate if k.startswith("hf-cpu/")), None)
    if "llama-cpp" in rate and hf:
        print(f"ratio llama-cpp / {hf}: {rate['llama-cpp'] / rate[hf]:.2f}")


if __name__ == "__main__":
    main()
