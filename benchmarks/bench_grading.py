"""Grading speed: parse once per distinct answer, compare once per pair of distinct forms (CPU-time
budget) vs the approach before issue 17 (math-verify with a 5 s wall-clock SIGALRM per call,
memoised per string pair, every answer compared with every class representative).

Both approaches grade the same pool — every sample against its gold answer, and the answer
classes of every question — each in a fresh process (cold caches). Printed: answers per second,
math-verify comparisons made, the all-pairs count (every pair of samples in a question plus every
sample vs gold), parses, timeouts, and whether correctness and classes agree.

Pools: ``--source pools`` (default) is every committed pool of the profile (data/pools/, stored
answers, 2,848 samples); ``--source math500-gold`` builds ``--questions`` questions of
``--samples`` answers drawn (seeded) from the 500 real MATH-500 gold answers, each graded against
one of them — symbolic, mostly distinct answers, the worst case for comparisons.
``--pathological K`` appends the answer ``9^{9^{9}}`` (which math-verify tries to evaluate exactly,
so every comparison with it times out) to the first K questions: synthetic, it shows the cost of
one pathological answer, the failure mode of issue 17 (189 timeouts in a 768-sample pool).

    nice -n 19 python benchmarks/bench_grading.py [--source pools|math500-gold] [--profile cpu] [--pathological K]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from functools import lru_cache

import numpy as np


# -- the approach before issue 17 (optscale/data/grading.py at c3b8750), kept here as the baseline ----
class Legacy:
    def __init__(self) -> None:
        import threading

        from math_verify import parse, verify

        self.compares = 0
        self.parses = 0
        self.timeouts = 0
        main = lambda: threading.current_thread() is threading.main_thread()  # noqa: E731

        @lru_cache(maxsize=200_000)
        def _parse(ans):
            self.parses += 1
            timeout = 5 if main() else None
            text = ans if "$" in ans or "\\boxed" in ans else f"${ans}$"
            parsed = parse(text, parsing_timeout=timeout)
            if not parsed:
                parsed = parse(ans, parsing_timeout=timeout)
            return parsed

        @lru_cache(maxsize=500_000)
        def is_equivalent(gold, pred):
            if pred is None or gold is None:
                return False
            g, p = gold.strip(), pred.strip()
            if not p:
                return False
            if g == p:
                return True
            pg, pp = _parse(g), _parse(p)
            if not pg or not pp:
                return False
            self.compares += 1
            t = time.perf_counter()
            res = bool(verify(pg, pp, timeout_seconds=5 if main() else None))
            if not res and time.perf_counter() - t >= 4.9:
                self.timeouts += 1
            return res

        self.is_equivalent = is_equivalent

    def classes(self, answers):
        reps, labels = [], []
        for i, a in enumerate(answers):
            if a is None or not str(a).strip():
                labels.append(-1)
                continue
            for j, rep in reps:
                if rep == a or self.is_equivalent(rep, a):
                    labels.append(j)
                    break
            else:
                reps.append((i, a))
                labels.append(i)
        return labels


def load_pool(source: str, profile: str, questions: int, samples: int, seed: int):
    """[(gold, [answer, ...]), ...] per question."""
    from optscale.config import load_config
    from optscale.data.benchmarks import load_benchmark
    from optscale.data.pools import pool_path, read_pool

    cfg = load_config(profile)
    if source == "pools":
        out = []
        for ds in cfg.data.benchmarks:
            pool = read_pool(pool_path(cfg, ds))
            gold, ans = pool.matrix("gold"), pool.answers()
            out += [(str(g[0]), list(a)) for g, a in zip(gold, ans)]
        return out
    golds = [p.answer for p in load_benchmark("math500", cfg.data.data_dir)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(questions):
        idx = rng.choice(len(golds), size=samples, replace=True)
        out.append((golds[int(idx[0])], [golds[int(i)] for i in idx]))
    return out


def run(approach: str, pool) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    if approach == "legacy":
        g = Legacy()
        correct = [[g.is_equivalent(gold, a) for a in ans] for gold, ans in pool]
        classes = [g.classes(ans) for _, ans in pool]
        stats = {"parses": g.parses, "compares": g.compares, "timeouts": g.timeouts}
    else:
        from optscale.data.grading import Grader

        g = Grader()
        correct = [[g.equivalent(gold, a) for a in ans] for gold, ans in pool]
        classes = [g.classes(ans) for _, ans in pool]
        stats = {"parses": g.stats.parses, "compares": g.stats.compares, "timeouts": g.stats.timeouts}
    return {**stats, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "correct": correct, "classes": classes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=("pools", "math500-gold"), default="pools")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pathological", type=int, default=0, help="questions that get the answer 9^{9^{9}}")
    a = ap.parse_args()
    pool = load_pool(a.source, a.profile, a.questions, a.samples, a.seed)
    pool = [(gold, ans + ["9^{9^{9}}"] if i < a.pathological else ans) for i, (gold, ans) in enumerate(pool)]
    n = sum(len(ans) for _, ans in pool)
    all_pairs = sum(len(ans) * (len(ans) - 1) // 2 + len(ans) for _, ans in pool)
    distinct = sum(len({str(x).strip() for x in ans if x is not None}) for _, ans in pool)
    extra = f" + 9^{{9^{{9}}}} in {a.pathological} question(s)" if a.pathological else ""
    print(f"pool: {a.source}{extra}, {len(pool)} questions, {n} samples, {distinct} distinct answers (per question, "
          f"summed); all-pairs compares (pairs within a question + each vs gold): {all_pairs}")
    ctx = mp.get_context("spawn")
    res = {}
    for approach in ("legacy", "new"):
        with ctx.Pool(1) as p:
            res[approach] = p.apply(run, (approach, pool))
        r = res[approach]
        print(f"{approach:>6}: {n / r['wall_s']:8.1f} answers/s ({r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU), "
              f"{r['parses']} parses, {r['compares']} compares ({r['compares'] / all_pairs:.3f} of all pairs), "
              f"{r['timeouts']} timeouts")
    old, new = res["legacy"], res["new"]
    same_correct = old["correct"] == new["correct"]
    same_classes = old["classes"] == new["classes"]
    print(f"speed ratio new/legacy: {old['wall_s'] / new['wall_s']:.1f}x; compares legacy/new: "
          f"{old['compares'] / max(new['compares'], 1):.1f}x; "
          f"all pairs/new: {all_pairs / max(new['compares'], 1):.1f}x")
    print(f"same correctness: {same_correct}; same classes: {same_classes}")
    if not (same_correct and same_classes):
        diff = [i for i, (x, y) in enumerate(zip(old["classes"], new["classes"])) if x != y]
        diffc = [i for i, (x, y) in enumerate(zip(old["correct"], new["correct"])) if x != y]
        print(f"  questions with different classes: {diff[:10]}; different correctness: {diffc[:10]}")


if __name__ == "__main__":
    main()
