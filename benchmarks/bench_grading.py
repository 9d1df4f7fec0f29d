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
``--source math500-forms`` (issue 29) is a foreign pool's shape: per question 256 answers
(``--samples``) of 50+ distinct forms — a LaTeX-heavy MATH-500 gold and 30 wrong answers (other
golds and perturbed numbers), each written in several ways a model writes the same answer
(``\\frac{a}{b}`` / ``\\dfrac`` / ``a/b`` / a decimal, spacing, ``\\left( \\right)``, ``$..$``,
``\\boxed{}``, ``x = ..``, ``.0``, reordered sums, ``\\sqrt5``, ``(E)``); semi-synthetic (real
golds, generated rewritings). There the reference ("legacy": every answer against every class
representative through math-verify) and the grader must give the same classes and correctness,
or the run fails.
``--pathological K`` appends the answer ``9^{9^{9}}`` (which math-verify tries to evaluate exactly,
so every comparison with it times out) to the first K questions: synthetic, it shows the cost of
one pathological answer, the failure mode of issue 17 (189 timeouts in a 768-sample pool).

    nice -n 19 python benchmarks/bench_grading.py [--source pools|math500-gold|math500-forms] [--profile cpu] [--pathological K]
    nice -n 19 python benchmarks/bench_grading.py --source math500-forms --questions 3 --samples 256
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import time
from fractions import Fraction
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


# -- math500-forms: equivalent rewritings of real MATH-500 gold answers ------------------------
_SIMPLE_FRAC = re.compile(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}")


def _top_level_terms(s: str) -> list[str]:
    """``s`` split at the ``+`` signs outside any bracket."""
    terms, depth, cur = [], 0, ""
    for ch in s:
        depth += (ch in "{([") - (ch in "})]")
        if ch == "+" and depth == 0:
            terms.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return terms + [cur.strip()]


def _rational(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", s.strip())
    if m and int(m[3]):
        return Fraction(int(m[2]), int(m[3])) * (-1 if m[1] else 1)
    return Fraction(int(s)) if re.fullmatch(r"-?\d+", s.strip()) else None


def rewritings(answer: str) -> list[str]:
    """``answer`` and ways a model writes the same answer (math-verify decides whether they are)."""
    out = [answer, answer.replace(" ", ""), re.sub(r"\s*([,+=])\s*", r"\1 ", answer).strip()]
    if "\\frac" in answer:
        out += [answer.replace("\\frac", "\\dfrac"), answer.replace("\\frac", "\\tfrac"),
                _SIMPLE_FRAC.sub(lambda m: f"{m[1]}/{m[2]}", answer),
                re.sub(r"\\frac\{(\d)\}\{(\d)\}", r"\\frac\1\2", answer)]
    v = _rational(answer)
    if v is not None and v.denominator == 1:
        out += [f"{v.numerator}.0", f"{v.numerator}.00"]
    elif v is not None:
        d = v.denominator
        while d % 2 == 0:
            d //= 2
        while d % 5 == 0:
            d //= 5
        out += [f"{float(v):g}"] if d == 1 else []
        out += [f"{v.numerator}/{v.denominator}", f"\\frac{{{v.numerator}}}{{{v.denominator}}}"]
    if any(c in answer for c in "()[]") and "\\left" not in answer:
        out.append(answer.replace("(", "\\left(").replace("[", "\\left[").replace(")", "\\right)")
                   .replace("]", "\\right]"))
    if "\\left" in answer:
        out.append(answer.replace("\\left", "").replace("\\right", ""))
    out += [f"\\boxed{{{answer}}}", f"${answer}$"]
    terms = _top_level_terms(answer)
    if len(terms) > 1 and all(terms):
        out.append(" + ".join(reversed(terms)))
    if "\\sqrt{" in answer:
        out.append(re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt\1", answer))
    m = re.fullmatch(r"\\text\{\((\w)\)\}", answer)
    if m:
        out += [m[1], f"({m[1]})"]
    if v is not None or re.fullmatch(r"[\d\\{}a-z ]+", answer):
        out.append(f"x = {answer}")
    return list(dict.fromkeys(x for x in out if x.strip()))


def _wrong_answer(answer: str, rng) -> str | None:
    """A nearby wrong answer: the rational +-1, negated, doubled or + 1/2; else one number bumped."""
    v = _rational(answer)
    if v is not None:
        w = [v + 1, v - 1, -v, 2 * v, v + Fraction(1, 2)][int(rng.integers(5))]
        return str(w.numerator) if w.denominator == 1 else f"\\frac{{{w.numerator}}}{{{w.denominator}}}"
    m = re.search(r"\d+", answer)
    return answer[:m.start()] + str(int(m[0]) + 1 + int(rng.integers(3))) + answer[m.end():] if m else None


def math500_forms_pool(golds: list[str], questions: int, samples: int, seed: int, wrong: int = 30):
    """[(gold, [answer, ...]), ...]: per question a LaTeX-heavy gold (35% of the samples, all its
    rewritings) and ``wrong`` wrong answers (other golds and perturbations, 1-4 rewritings each,
    Zipf-like frequencies); every form appears at least once."""
    rng = np.random.default_rng(seed)
    latex = [g for g in golds if not re.fullmatch(r"-?\d+", g)]
    out = []
    for _ in range(questions):
        gold = latex[int(rng.integers(len(latex)))]
        bases = [gold]
        while len(bases) < wrong + 1:
            b = golds[int(rng.integers(len(golds)))] if rng.random() < 0.5 else \
                _wrong_answer(bases[int(rng.integers(len(bases)))], rng)
            if b and b not in bases:
                bases.append(b)
        forms: list[tuple[int, str]] = []
        for j, b in enumerate(bases):
            rw = rewritings(b)
            if j:
                keep = 1 + int(rng.integers(min(4, len(rw))))
                rw = rw[:1] + [str(x) for x in rng.choice(rw[1:], size=keep - 1, replace=False)]
            forms += [(j, f) for f in rw]
        forms = list(dict.fromkeys(forms))
        if len(forms) > samples:
            raise SystemExit(f"{len(forms)} forms do not fit in {samples} samples")
        is_gold = np.array([j == 0 for j, _ in forms])
        w = np.where(is_gold, 0.35 / is_gold.sum(), [1.0 / (j + 1) for j, _ in forms])
        w[~is_gold] *= 0.65 / w[~is_gold].sum()
        idx = np.concatenate([np.arange(len(forms)), rng.choice(len(forms), size=samples - len(forms), p=w / w.sum())])
        out.append((gold, [forms[int(i)][1] for i in rng.permutation(idx)]))
    return out


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
    if source == "math500-forms":
        return math500_forms_pool(golds, questions, samples, seed)
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
    ap.add_argument("--source", choices=("pools", "math500-gold", "math500-forms"), default="pools")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--questions", type=int, default=None, help="default 50 (math500-gold), 3 (math500-forms)")
    ap.add_argument("--samples", type=int, default=None, help="default 16 (math500-gold), 256 (math500-forms)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pathological", type=int, default=0, help="questions that get the answer 9^{9^{9}}")
    a = ap.parse_args()
    forms = a.source == "math500-forms"
    a.questions = a.questions or (3 if forms else 50)
    a.samples = a.samples or (256 if forms else 16)
    pool = load_pool(a.source, a.profile, a.questions, a.samples, a.seed)
    pool = [(gold, ans + ["9^{9^{9}}"] if i < a.pathological else ans) for i, (gold, ans) in enumerate(pool)]
    n = sum(len(ans) for _, ans in pool)
    all_pairs = sum(len(ans) * (len(ans) - 1) // 2 + len(ans) for _, ans in pool)
    per_q = [len({str(x).strip() for x in ans if x is not None}) for _, ans in pool]
    distinct = sum(per_q)
    extra = f" + 9^{{9^{{9}}}} in {a.pathological} question(s)" if a.pathological else ""
    print(f"pool: {a.source}{extra}, {len(pool)} questions, {n} samples, {distinct} distinct answers (per question, "
          f"summed; {min(per_q)}-{max(per_q)} a question); all-pairs compares (pairs within a question + each vs gold): {all_pairs}")
    ctx = mp.get_context("spawn")
    res = {}
    for approach in ("legacy", "new"):
        with ctx.Pool(1) as p:
            res[approach] = p.apply(run, (approach, pool))
        r = res[approach]
        print(f"{approach:>6}: {n / r['wall_s']:8.1f} answers/s ({n / r['cpu_s']:.1f} per CPU second; "
              f"{r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU), "
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
        if not (old["timeouts"] or new["timeouts"]):  # not explained by an unresolved comparison
            raise SystemExit("MISMATCH: the grader's classes / correctness differ from math-verify's")
    if forms:
        rate = n / new["wall_s"]
        print(f"goal >= 100 answers/s on 256-sample questions of >= 50 forms: {rate:.0f} answers/s wall "
              f"({n / new['cpu_s']:.0f} per CPU second): {'met' if rate >= 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
