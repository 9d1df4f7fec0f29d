"""Command line for pools: ``python -m optscale.generate {pools,score,combine,merge,info,regrade}``.

``pools`` samples (and scores) every configured benchmark, round-robin in chunks of
``--chunk`` questions so that every benchmark fills up evenly; it is resumable at any point.
``score`` adds a scorer's column to existing pools. ``combine`` adds the column of a fitted
verifier combination (``optscale.study combine`` writes ``data/study/<arm>/combined.json``) once
every feature it uses is scored. ``merge`` folds the checkpoint of a stopped
``pools`` run into the Parquet files without loading a model. ``info`` prints what a pool holds.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time

from .config import BENCHMARKS, DEFAULT_PROFILE, ConfigError, load_config
from .data.benchmarks import load_benchmark
from .data.generation import generate_pool, merge_checkpoint, pool_needs_sampling
from .data.pools import PoolError, pool_path, read_pool, score_pool
from .data.selection import config_problems
from .sampling import get_sampler
from .scoring.scorers import build_scorers, get_scorer


def _problems(cfg, ds):
    return config_problems(cfg, ds)


def _pools_sampler(cfg, args):
    """The sampler and the scorers that run on this machine: a Ray runner (``--ray``) samples and
    scores on its workers, so nothing is loaded here."""
    online = args.online.split(",") if args.online else []
    if args.ray:
        from .sampling.distributed import RayPoolSampler

        return RayPoolSampler(cfg, address=args.ray, num_workers=args.ray_workers or None,
                              scorers=online, questions_per_call=args.questions_in_flight or None), []
    sampler = get_sampler(cfg.sampling.backend, cfg.sampling)
    return sampler, build_scorers(cfg, sampler, online)


def _print_summary(sampler, t0, n0) -> None:
    if hasattr(sampler, "format_summary"):
        served = sum(r["served"] for r in sampler.run_summary()) - n0
        dt = time.time() - t0
        print(f"replicas after {dt:.1f} s ({served} samples, {served / max(dt, 1e-9):.1f} samples/s):\n"
              f"{sampler.format_summary()}", file=sys.stderr)


class UsageError(ValueError):
    """A command-line value that names nothing (printed as one line; exit status 2)."""


def _datasets(args, cfg) -> list[str]:
    """``--datasets`` (comma-separated), else every benchmark of the profile; a name that is not
    one of the profile's benchmarks is a UsageError (with "did you mean")."""
    if not args.datasets:
        return list(cfg.data.benchmarks)
    names = list(dict.fromkeys(d.strip() for d in args.datasets.split(",") if d.strip()))
    for name in names:
        if name in cfg.data.benchmarks:
            continue
        if name in BENCHMARKS:
            raise UsageError(f"--datasets {name!r}: not among profile {cfg.profile!r}'s data.benchmarks "
                             f"{list(cfg.data.benchmarks)} (add it there, or with --overrides)")
        close = difflib.get_close_matches(name, BENCHMARKS, n=2)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UsageError(f"--datasets {name!r}: unknown benchmark (known: {', '.join(BENCHMARKS)}){hint}")
    if not names:
        raise UsageError(f"--datasets {args.datasets!r}: names no benchmark")
    return names


def cmd_pools(args) -> int:
    cfg = load_config(args.profile, args.overrides)
    datasets = _datasets(args, cfg)
    sampler, scorers = _pools_sampler(cfg, args)
    problems = {ds: _problems(cfg, ds) for ds in datasets}
    deadline = time.time() + args.hours * 3600 if args.hours else None
    chunk = args.chunk
    if chunk is None:  # questions per benchmark per round
        chunk = 8
        width = getattr(sampler, "parallel_slots", 0)  # samples in flight at once across replicas
        if width:  # long rounds, so the replicas rarely wait for a round's last question
            chunk = max(chunk, 8 * -(-width // max(min(cfg.sampling.n_samples[ds] for ds in datasets), 1)))
    if getattr(sampler, "api", None) == "completions":
        sampler.tokenizer  # the chat template's tokenizer loads once, before the clock starts
    t0 = time.time()
    n0 = sum(r["served"] for r in sampler.run_summary()) if hasattr(sampler, "run_summary") else 0
    try:
        while True:
            progressed = False
            left = [ds for ds in datasets if pool_needs_sampling(pool_path(cfg, ds), problems[ds])]  # ids, not counts
            for ds in left:
                generate_pool(cfg, ds, problems[ds], sampler, scorers,
                              max_questions=chunk if len(left) > 1 else None, flush_every=args.flush_every,
                              deadline=deadline, questions_in_flight=args.questions_in_flight or None)
                progressed = True
                if deadline is not None and time.time() >= deadline:
                    print(f"stopping after {args.hours} h; rerun the same command to continue", file=sys.stderr)
                    return 0
            if not progressed:
                return 0
    finally:
        _print_summary(sampler, t0, n0)
        sampler.close()


def cmd_score(args) -> int:
    cfg = load_config(args.profile, args.overrides)
    datasets = _datasets(args, cfg)
    # a running generation flushes the pool from memory and would drop the new column: refuse
    # before loading the scorer
    if any([_checkpoint_in_the_way(ds, pool_path(cfg, ds), "score") for ds in datasets]):
        return 1
    if args.scorer == "probe":  # a learned verifier: cross-fitted over the pool's questions, not per sample
        return _score_with_probe(cfg, datasets, args)
    if args.ray:  # the scorer (e.g. the PRM) runs on the Ray workers, not here
        from .sampling.distributed import RayPoolSampler, score_pool_ray

        runner = RayPoolSampler(cfg, address=args.ray, num_workers=args.ray_workers or None, scorers=[args.scorer])
    else:
        scorer = get_scorer(args.scorer, cfg.scoring)
    try:
        for ds, path, questions in _existing_pools(cfg, datasets):
            if args.ray:
                score_pool_ray(path, args.scorer, questions, cfg, runner=runner)
            else:
                score_pool(path, scorer, questions)
    finally:
        if args.ray:
            runner.close()
    return 0


def _existing_pools(cfg, datasets):
    """(benchmark, pool path, {question id: question}) for each of ``datasets`` that has a pool yet
    (the others are named as skipped): what a scorer needs."""
    for ds in datasets:
        path = pool_path(cfg, ds)
        if not path.is_file():
            print(f"{path}: no pool yet, skipped", file=sys.stderr)
            continue
        yield ds, path, {p.id: p.question for p in load_benchmark(ds, cfg.data.data_dir)}


def _score_with_probe(cfg, datasets, args) -> int:
    """``score --scorer probe``: features through llama.cpp (cached outside git, resumable with
    ``--hours``), then K-fold cross-fitting by question; writes ``score__probe`` and the heads
    (``data/probe/<pool>/<benchmark>/``) once every question has features."""
    from .scoring.probe import external_training_set, score_pool_with_probe

    rc = 0
    layers = [int(x) for x in args.probe_layers.split(",") if x.strip()] or None
    names = [x.strip() for x in args.probe_external.split(",") if x.strip()]
    for ds, path, questions in _existing_pools(cfg, datasets):
        if ds in names:
            print(f"--probe-external {ds}: the pool being scored cannot also be its external training set", file=sys.stderr)
            return 2
        try:
            external = [external_training_set(pool_path(cfg, name), {p.id: p.question for p in load_benchmark(
                name, cfg.data.data_dir)}, layers) for name in names]
        except (ValueError, FileNotFoundError) as err:
            print(f"--probe-external: {err}", file=sys.stderr)
            return 2
        out = score_pool_with_probe(path, cfg, questions, k=args.probe_folds, layers=layers,
                                    hours=args.hours or None, external=external)
        if out["written"]:
            print(f"{ds}: wrote score__probe ({out['questions']} questions, {args.probe_folds} folds, "
                  f"{out['cpu_seconds_per_sample']:.2f} s per sample to extract) into {path}")
        else:
            print(f"{ds}: features for {out['with_features']} of {out['questions']} questions (time box); "
                  "run again to resume", file=sys.stderr)
            rc = 3
    return rc


def _checkpoint_in_the_way(ds: str, path, then: str) -> bool:
    """True (and says so) when a generation's checkpoint sits beside the pool: a generation is
    running or stopped unmerged, and rewriting the Parquet file now could lose or be lost."""
    ckpt = path.with_suffix(".checkpoint.jsonl")
    if ckpt.is_file():
        print(f"{ds}: {ckpt} exists (a generation running or stopped); run `merge` once it has stopped, "
              f"then {then}", file=sys.stderr)
    return ckpt.is_file()


def cmd_combine(args) -> int:
    """Write ``score__<name>``: a fitted logistic-regression combination of per-sample features
    (``scoring.combinations[<name>]``, or ``--model``; ``python -m optscale.study combine`` fits
    them on study questions) applied to every sample. Run it once ``score`` has scored every
    feature the combination uses, and again after a pool grows."""
    import json
    from pathlib import Path

    from .config import PROJECT_ROOT
    from .scoring.combinations import add_combined_score

    cfg = load_config(args.profile, args.overrides)
    datasets = _datasets(args, cfg)
    combos = cfg.scoring.combinations
    if args.model:
        model_path = Path(args.model)
    elif args.name in combos:
        model_path = cfg.scoring.combination_path(args.name)
    else:
        print(f"combine: no --model and no scoring.combinations.{args.name} in profile {args.profile!r} "
              f"(it has {list(combos)})", file=sys.stderr)
        return 2
    try:
        features = json.loads(model_path.read_text())["features"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"combine: {model_path}: not a fitted combination with a 'features' list ({e!r})", file=sys.stderr)
        return 2
    # the pools' metadata names the file relative to the project, not this machine's path
    source = str(model_path.relative_to(PROJECT_ROOT) if model_path.is_relative_to(PROJECT_ROOT) else model_path)
    for ds in datasets:
        path = pool_path(cfg, ds)
        if not path.is_file():
            print(f"{ds}: no pool at {path}, skipped", file=sys.stderr)
            continue
        if _checkpoint_in_the_way(ds, path, "combine"):  # a running generation would overwrite the column
            return 1
        try:
            add_combined_score(path, model_path, args.name, source=source)
        except (KeyError, ValueError) as e:
            print(f"{ds}: {e.args[0] if e.args else e}; nothing written", file=sys.stderr)
            return 1
        print(f"{ds}: wrote score__{args.name} ({', '.join(features)}; {model_path}) into {path}")
    return 0


def cmd_merge(args) -> int:
    cfg = load_config(args.profile, args.overrides)
    datasets = _datasets(args, cfg)
    for ds in datasets:
        path = pool_path(cfg, ds)
        merged = merge_checkpoint(path)
        size = read_pool(path, allow_partial_scores=True).n_questions if path.is_file() else 0
        print(f"{ds}: merged {merged} question(s) from the checkpoint; {path} has {size}")
    return 0


def cmd_regrade(args) -> int:
    """Re-extract the answers and regrade the correctness of existing pools from their stored
    text, finish reason and gold answer by the current grading rule (no model), rewrite each
    Parquet file atomically, and print per benchmark how many answers / correct flags changed."""
    from .data.generation import regrade_pool

    cfg = load_config(args.profile, args.overrides)
    datasets = _datasets(args, cfg)
    for ds in datasets:
        path = pool_path(cfg, ds)
        if not path.is_file():
            print(f"{ds}: no pool at {path}", file=sys.stderr)
            continue
        if _checkpoint_in_the_way(ds, path, "regrade"):
            return 1
        r = regrade_pool(path)
        g = r["grading"]
        print(f"{ds}: {r['samples']} samples, grading rule {r['grading_before']} -> {g['version']}: "
              f"{r['answers_changed']} answers and {r['correct_changed']} correct flags changed; single-sample "
              f"accuracy {r['accuracy_before']:.4f} -> {r['accuracy_after']:.4f}; grading unresolved "
              f"(CPU budget) for {g['unresolved_samples']} samples")
    return 0


def cmd_info(args) -> int:
    """Per pool: size, single-sample accuracy, truncation rate, majority@n; for every scorer
    the AUROC pooled over all samples and within questions (mean over the questions that have a
    correct and a wrong sample, with a 95% bootstrap CI and their number), Best-of-n and
    Best-of-n minus single-sample accuracy (averaged over the profile's replay orders, 95%
    bootstrap CI over questions); and the same AUROCs for the token count alone (a shorter
    sample predicted correct), the baseline a verifier must beat. ``--format markdown`` prints
    the status table of ``data/pools/README.md`` (every scorer); ``csv`` every field."""
    import pandas as pd

    from .evaluation.curves import TOKENS_SCORER, pool_status, pool_status_markdown
    from .data.pools import replay_orders

    cfg = load_config(args.profile, args.overrides)
    datasets = _datasets(args, cfg)
    rows = []
    for ds in datasets:
        path = pool_path(cfg, ds)
        if not path.is_file():
            print(f"{ds}: no pool at {path}", file=sys.stderr)
            continue
        pool = read_pool(path, allow_partial_scores=True)
        orders = replay_orders(pool.n_questions, pool.n_per_question, cfg.pools.replay_orders, cfg.pools.replay_seed)
        r = pool_status(pool, orders, reps=cfg.evaluation.bootstrap_reps, seed=cfg.evaluation.seed)
        rows.append(r)
        if args.format == "text":
            n = pool.n_per_question
            ci = lambda k: f"{r[k]:.3f} [{r[k + '_lo']:.3f}, {r[k + '_hi']:.3f}]"  # noqa: E731
            print(f"{pool.describe()}\n  single-sample accuracy {r['single_sample_accuracy']:.3f}, pass@{n} "
                  f"{r[f'pass@{n}']:.3f}, mean tokens {r['mean_tokens']:.0f}, truncated {r['truncated_rate']:.2f}")
            print(f"  majority@{n}: {ci('majority')}")
            for sc in pool.scorers + [TOKENS_SCORER]:
                label = "token count alone (shorter = predicted correct)" if sc == TOKENS_SCORER else sc
                print(f"  {label}: AUROC pooled {r[f'auroc_{sc}']:.3f}, within questions {ci(f'auroc_within_{sc}')} "
                      f"over {r[f'auroc_within_questions_{sc}']} questions with a correct and a wrong sample")
                if sc == TOKENS_SCORER:
                    continue
                about = pool.meta.get("scorers", {}).get(sc, {})
                if about.get("k_folds"):
                    print(f"    cross-fitted: {about['k_folds']} folds by question (no question scored by a head "
                          "trained on it; metadata lists each fold's questions)")
                timing = about.get("extraction_timing") or {}
                if timing.get("wall_seconds_per_sample") is not None:
                    print(f"    scoring cost: {timing['wall_seconds_per_sample']:.2f} s wall per sample "
                          f"({timing.get('core_seconds_per_sample', float('nan')):.2f} core-seconds), as recorded")
                if sc in r["incomplete"]:
                    print("    scores incomplete: Best-of-n skipped")
                    continue
                for method in ("best-of-n", "weighted-majority"):
                    print(f"    {method}@{n}: {ci(f'{method}__{sc}')}")
                print(f"    best-of-n@{n} minus single-sample accuracy: {ci(f'bon_gain__{sc}')}")
    if not rows:
        print(f"info: no pool for {', '.join(datasets)} in {pool_path(cfg, datasets[0]).parent}; make them with "
              f"`python -m optscale.generate pools --profile {args.profile}`", file=sys.stderr)
        return 1
    if args.format == "markdown":
        print(pool_status_markdown(rows))
    elif args.format == "csv":
        df = pd.DataFrame(rows).drop(columns=["incomplete", "scorers"])
        print(df.to_csv(index=False), end="")
    return 0


def _number(kind: type, least: float):
    """An argparse ``type``: a ``kind`` (int / float) of at least ``least``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not value >= least:  # NaN too
            raise argparse.ArgumentTypeError(f"{text!r}: must be >= {least}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m optscale.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("pools", "score", "combine", "merge", "info", "regrade"):
        p = sub.add_parser(name)
        p.add_argument("--profile", default=DEFAULT_PROFILE)
        p.add_argument("--overrides", default="", help='e.g. "sampling.seed=1,data.max_questions.gsm8k=8"')
        p.add_argument("--datasets", default="", help="comma-separated subset of the profile's benchmarks")
        if name == "pools":
            p.add_argument("--chunk", type=_number(int, 1), default=None,
                           help="questions per benchmark per round (default 8; more with many replicas)")
            p.add_argument("--questions-in-flight", type=_number(int, 0), default=0,
                           help="questions sampled at once (default: the backend's; requests per call in-process)")
            p.add_argument("--ray", default="", metavar="ADDRESS",
                           help="sample on a Ray cluster: 'auto' (this node's cluster), ray://host:10001, or "
                                "'local' (a cluster started here); see docs/gpu_and_cluster.md")
            p.add_argument("--ray-workers", type=_number(int, 0), default=0,
                           help="Ray workers (actors) holding a sampler (default: one per GPU, else per CPU)")
            p.add_argument("--flush-every", type=_number(int, 1), default=4,
                           help="questions sampled between two checkpoint merges into the Parquet file")
            p.add_argument("--online", default="self-certainty",
                           help="scorers to run while sampling (others: `score` afterwards)")
            p.add_argument("--hours", type=_number(float, 0), default=0, help="start no new question after this many hours (0 = run to the end)")
        if name == "score":
            p.add_argument("--scorer", required=True)
            p.add_argument("--ray", default="", metavar="ADDRESS", help="score on a Ray cluster (as for pools)")
            p.add_argument("--ray-workers", type=_number(int, 0), default=0, help="Ray workers holding the scorer")
            p.add_argument("--hours", type=_number(float, 0), default=0,
                           help="probe: extract features for at most this many hours, then stop (resumable)")
            p.add_argument("--probe-folds", type=_number(int, 2), default=5, help="probe: K folds by question")
            p.add_argument("--probe-external", default="",
                           help="probe: comma-separated benchmarks of the same pool set whose (cached) features "
                                "and correctness train every fold too, e.g. gsm8k when scoring math500")
            p.add_argument("--probe-layers", default="",
                           help="probe: comma-separated block counts to read hidden states after (default: all)")
        if name == "combine":
            p.add_argument("--name", default="combined",
                           help="the combination: a key of scoring.combinations, stored as score__<name>")
            p.add_argument("--model", default="",
                           help="a fitted combination's JSON instead of scoring.combinations[<name>] "
                                "(e.g. data/study/cpu-1.5b/combined.json, from optscale.study combine)")
        if name == "info":
            p.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"pools": cmd_pools, "score": cmd_score, "combine": cmd_combine, "merge": cmd_merge, "info": cmd_info,
                "regrade": cmd_regrade}[args.cmd](args)
    except (ConfigError, UsageError) as e:  # a bad profile, override or --datasets: one line, nothing done
        print(f"python -m optscale.generate {args.cmd}: {e}", file=sys.stderr)
        return 2
    except PoolError as e:  # a pool, checkpoint or lock refused (it names the file and what): one line
        print(f"python -m optscale.generate {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
