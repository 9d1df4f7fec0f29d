"""Live token use vs replay of the same sample stream (goal: within 5%).

Uses the deterministic fake sampler (no model): for each question the stream of max_N samples is
generated once (chunk seeds as in live mode) and replayed (order 0), then the same policy runs
live with chunk sizes 1 and 4. Prints mean tokens per question for replay, live-generated and
live-charged, and the relative gap.

    nice -n 19 python benchmarks/bench_live_vs_replay.py [--questions 40] [--max-n 16]
"""

import argparse
import time

import numpy as np

from optscale.data.benchmarks import Problem
from optscale.evaluation.replay import PoolArrays, replay
from optscale.data.grading import answer_classes, extract_answer, is_equivalent
from optscale.evaluation.live import question_samples, run_live
from optscale.policies import make_policy
from optscale.sampling import get_sampler
from optscale.sampling.fake import FAKE_GOLD


def score_fn(question, comps):
    return [float(np.exp(np.mean(c.token_logprobs))) for c in comps]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--max-n", type=int, default=16)
    args = ap.parse_args()
    probs = [Problem("fake", f"q{i}", f"question {i}", FAKE_GOLD, i) for i in range(args.questions)]
    sampler = get_sampler("fake", None)
    comps = [question_samples(sampler, p, p.question, args.max_n, 1, 0, 256) for p in probs]
    ans = np.array([[extract_answer(c.text) for c in cs] for cs in comps], object)
    data = PoolArrays("fake", np.array([p.id for p in probs], object), np.array([score_fn("", cs) for cs in comps]),
                      np.array([[is_equivalent(FAKE_GOLD, a) for a in row] for row in ans]),
                      np.array([[c.n_tokens for c in cs] for cs in comps], float),
                      np.array([answer_classes(list(row)) for row in ans]), ans)
    identity = np.arange(args.max_n)[None, None, :].repeat(len(probs), 1)
    print(f"{'policy':28s} {'chunk':>5s} {'replay':>9s} {'live gen':>9s} {'live chg':>9s} {'gap':>7s}")
    for name, kw in (("asc", {"threshold": 0.95}), ("esc", {"window": 4}), ("optscale-0", {"target": 0.85, "delta": 0.1, "k": 3}),
                     ("consol", {}), ("bon", {"N": 8})):
        rep = replay(make_policy(name, **kw), data, identity, args.max_n).tokens[0].mean()
        for chunk in (1, 4):
            t0 = time.time()
            live = run_live(make_policy(name, **kw), sampler, probs, score_fn, args.max_n, chunk=chunk, max_new_tokens=256)
            g = live["tokens_generated"].mean()
            print(f"{make_policy(name, **kw).label():28s} {chunk:5d} {rep:9.1f} {g:9.1f} {live['tokens_charged'].mean():9.1f} "
                  f"{100 * (g / rep - 1):6.1f}%  ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
