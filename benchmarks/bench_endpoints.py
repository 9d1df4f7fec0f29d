"""Scale-out of the endpoint path: samples/s through ``python -m optscale.generate pools`` against
1, 2 and 4 fake OpenAI-compatible replicas (separate processes on 127.0.0.1, each serving
``--slots`` requests at once with ``--latency`` seconds per request).

The replicas are ``optscale.sampling.fake_server`` (canned completions, no model), so the figure
is what the pool path itself can drive: dispatching, streaming questions through the replicas,
grading, scoring (self-certainty), checkpointing and writing Parquet; "pool run" is the
``generate_pool`` call's duration from the pool's ``run_summary`` (model-free setup such as
loading the chat template's tokenizer is not in it). Linear scaling is the
1-replica rate times the number of replicas; the ideal rate is replicas x slots / latency.

    python benchmarks/bench_endpoints.py [--questions 64] [--samples 4] [--latency 0.2] [--slots 4]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_replicas(k: int, latency: float, slots: int) -> tuple[list[subprocess.Popen], list[str]]:
    import httpx

    procs, urls = [], []
    for _ in range(k):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "optscale.sampling.fake_server", "--port", str(port),
                                       "--latency", str(latency), "--slots", str(slots), "--max-seconds", "900"],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}/v1")
    t_end = time.monotonic() + 60
    for u in urls:
        while True:
            try:
                if httpx.get(u + "/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > t_end:
                raise TimeoutError(f"fake replica {u} did not start")
            time.sleep(0.1)
    return procs, urls


def run_pools(urls: list[str], pool_dir: str, questions: int, samples: int) -> dict:
    from optscale.generate import main

    overrides = ("{sampling.endpoints: [%s], sampling.model: qwen2.5-coder-0.5b-instruct-q4, "
                 "sampling.n_samples.gsm8k: %d, sampling.max_new_tokens.gsm8k: 16, data.max_questions.gsm8k: %d, "
                 "scoring.scorers: [self-certainty], scoring.primary: self-certainty, pools.pool_dir: %s, pools.pool_name: bench}" % (", ".join(urls), samples, questions, pool_dir))
    rc = main(["pools", "--profile", "endpoint", "--datasets", "gsm8k", "--online", "self-certainty",
               "--overrides", overrides])
    if rc != 0:
        raise RuntimeError(f"generate pools exited with {rc}")
    path = Path(pool_dir) / "bench" / "gsm8k.parquet"
    meta = json.loads(pq.read_schema(path).metadata[b"optscale"])
    run = meta["run_summary"]
    n = pq.read_table(path).num_rows
    return {"rows": n, "seconds": run["seconds"], "served": [r["served"] for r in run["replicas"]],
            "texts": pq.read_table(path, columns=["text"]).column("text").to_pylist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=64, help="GSM8K questions (the first k)")
    ap.add_argument("--samples", type=int, default=4, help="samples per question")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per request at each replica")
    ap.add_argument("--slots", type=int, default=4, help="requests each replica serves at once")
    ap.add_argument("--replicas", default="1,2,4")
    a = ap.parse_args()
    from optscale.config import load_config
    from optscale.sampling import get_sampler

    # the chat template's tokenizer: load (and cache) it once before timing anything
    get_sampler("openai", load_config("endpoint", "{sampling.endpoints: [http://127.0.0.1:9/v1], "
                                                  "sampling.model: qwen2.5-coder-0.5b-instruct-q4}").sampling).tokenizer
    rows, texts, base = [], None, None
    for k in [int(x) for x in a.replicas.split(",")]:
        procs, urls = start_replicas(k, a.latency, a.slots)
        try:
            with tempfile.TemporaryDirectory() as d:
                r = run_pools(urls, d, a.questions, a.samples)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        rate = r["rows"] / r["seconds"]
        base = base or rate / k
        if texts is None:
            texts = r["texts"]
        rows.append((k, r["rows"], r["seconds"], rate, rate / (base * k),
                     rate / (k * a.slots / a.latency), r["served"], r["texts"] == texts))
    print(f"\n{a.questions} GSM8K questions x {a.samples} samples, replicas of {a.slots} slots at {a.latency} s per "
          f"request, `python -m optscale.generate pools --profile endpoint` (self-certainty online)\n")
    print("| replicas | samples | pool run (s) | samples/s | vs linear | vs ideal | served per replica | same texts |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    for k, n, sec, rate, lin, ideal, served, same in rows:
        print(f"| {k} | {n} | {sec:.2f} | {rate:.1f} | {lin:.2f} | {ideal:.2f} | {served} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
