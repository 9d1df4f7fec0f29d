"""Pool generation and scoring over a Ray cluster (``pip install -e ".[ray]"``).

Ray does the cluster work (placement, worker processes, object transfer, restarting a worker
that died); this module only decides what each worker does. A :class:`RayPoolSampler` starts
``num_workers`` Ray actors, each holding one sampler built from the run's config (vLLM on a GPU
node, llama.cpp or transformers on a CPU node, or the ``openai`` backend calling endpoints) and
the online scorers (the PRM on a GPU worker). The driver hands questions out in batches of
``questions_per_call`` (a batching backend samples them together), at most two batches queued
per worker so a slow worker does not hoard work, and gets back each question's completions and
scores. :func:`optscale.data.generation.generate_pool` writes them exactly as it writes a local run: the
same rows (each question is sampled with its own seed, so the pool does not depend on which
worker sampled it or when), the same checkpoint after every question, the same resume.

    from optscale.sampling.distributed import RayPoolSampler
    runner = RayPoolSampler(cfg, address="auto", scorers=["prm"])  # or "local", "ray://head:10001"
    generate_pool(cfg, "math500", problems, runner)                  # or: generate pools --ray auto

:func:`score_pool_ray` adds a scorer's column to an existing pool the same way (questions spread
over workers that hold the scorer). ``docs/gpu_and_cluster.md`` has the cluster commands.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..config import RunConfig
from ..data.benchmarks import Problem
from .base import Completion, SampleRequest, SamplerError

__all__ = ["RayPoolSampler", "score_pool_ray", "require_ray"]


def require_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise SamplerError(f"the Ray path needs ray: pip install -e \".[ray]\" (import failed: {e})") from None
    return ray


def _init_ray(address: str, num_cpus: int | None = None) -> bool:
    """Connect to (or, for ``address='local'``, start) a cluster; True if this call started Ray."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in ("OPTSCALE_DATA_DIR", "OPTSCALE_TORCH_THREADS", "OMP_NUM_THREADS",
                                      "MKL_NUM_THREADS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ}
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address == "local":
        # a single-node cluster started here (tests, trying the path on one machine)
        ray.init(num_cpus=num_cpus, object_store_memory=256 * 1024**2, **kw)
    else:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, **kw)
    return True


class _PoolWorker:
    """A Ray actor: one sampler and the online scorers, built on the worker's node."""

    def __init__(self, config: RunConfig, scorer_names: Sequence[str], sampler_kwargs: dict[str, Any]):
        from . import get_sampler
        from ..scoring.scorers import build_scorers

        self.sampler = get_sampler(config.sampling.backend, config.sampling, **sampler_kwargs)
        self.scorers = build_scorers(config, self.sampler, list(scorer_names))
        self.by_name = {sc.name: sc for sc in self.scorers}
        self.questions = 0

    def served(self) -> int:
        """Questions this worker has sampled."""
        return self.questions

    def describe(self) -> dict[str, Any]:
        import platform

        return {"generator": self.sampler.describe(), "scorers": {sc.name: sc.describe() for sc in self.scorers},
                "questions_in_flight": int(getattr(self.sampler, "questions_in_flight", 1) or 1),
                "node": platform.node()}

    def run(self, items: list[tuple[str, SampleRequest]]) -> list[tuple[list[Completion], dict[str, list]]]:
        outs = self.sampler.generate([req for _, req in items])
        self.questions += len(items)
        return [(comps, {sc.name: sc.score(q, comps) for sc in self.scorers}) for (q, _), comps in zip(items, outs)]

    def score(self, scorer: str, items: list[tuple[str, list[Completion]]]) -> list[list]:
        sc = self.by_name[scorer]
        return [sc.score(q, comps) for q, comps in items]


def _make_workers(config: RunConfig, address: str, num_workers: int | None, scorer_names: Sequence[str],
                  sampler_kwargs: dict[str, Any] | None, num_gpus_per_worker: float | None,
                  num_cpus_per_worker: float) -> tuple[list[Any], bool]:
    ray = require_ray()
    started = _init_ray(address, num_cpus=num_workers and int(num_workers * num_cpus_per_worker))
    res = ray.cluster_resources()
    gpu = num_gpus_per_worker
    if gpu is None:  # GPU backends take one GPU per worker when the cluster has GPUs
        gpu = 1.0 if res.get("GPU", 0) >= 1 and config.sampling.backend in ("vllm", "hf-cpu") else 0.0
    if num_workers is None:
        num_workers = int(res.get("GPU", 0) // gpu) if gpu else int(res.get("CPU", 1) // num_cpus_per_worker)
    if num_workers < 1:
        raise SamplerError(f"the Ray cluster ({res}) has room for no worker of {num_cpus_per_worker} CPU / {gpu} GPU")
    actor = ray.remote(_PoolWorker).options(num_cpus=num_cpus_per_worker, num_gpus=gpu, max_restarts=1,
                                            max_task_retries=1)
    workers = [actor.remote(config, list(scorer_names), dict(sampler_kwargs or {})) for _ in range(num_workers)]
    return workers, started


class RayPoolSampler:
    """Questions of a pool spread over Ray workers that each hold a sampler (and the online scorers).

    Pass it to :func:`~optscale.data.generation.generate_pool` as the sampler. ``address``: ``"auto"`` (the
    cluster this node joined with ``ray start``), ``"ray://head:10001"`` (Ray Client), or
    ``"local"`` (start a one-node cluster here). ``num_workers``: default one per GPU for GPU
    backends, else one per CPU. ``questions_per_call``: questions per ``generate()`` call on a
    worker (default: the worker sampler's ``questions_in_flight``)."""

    name = "ray"

    def __init__(self, config: RunConfig, address: str = "auto", num_workers: int | None = None,
                 scorers: Sequence[str] = (), questions_per_call: int | None = None,
                 sampler_kwargs: dict[str, Any] | None = None, num_gpus_per_worker: float | None = None,
                 num_cpus_per_worker: float = 1.0):
        self.config = config
        self.scorer_names = [s for s in scorers if s]
        self.workers, self._started = _make_workers(config, address, num_workers, self.scorer_names, sampler_kwargs,
                                                    num_gpus_per_worker, num_cpus_per_worker)
        ray = require_ray()
        self._info = ray.get(self.workers[0].describe.remote())
        self.questions_per_call = int(questions_per_call or self._info["questions_in_flight"])
        self.questions_in_flight = self.questions_per_call * len(self.workers)

    def describe(self) -> dict[str, Any]:
        # the workers' generator, so the pool's metadata reads as a local run's; the cluster is an extra key
        return {**self._info["generator"], "distributed": {"engine": "ray", "workers": len(self.workers),
                                                           "questions_per_call": self.questions_per_call}}

    def scorer_descriptions(self) -> dict[str, Any]:
        return dict(self._info["scorers"])

    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        """Plain sampling spread over the workers (no scores), in request order."""
        ray = require_ray()
        k = max(self.questions_per_call, 1)
        batches = [list(requests[i:i + k]) for i in range(0, len(requests), k)]
        refs = [self.workers[b % len(self.workers)].run.remote([("", r) for r in batch])
                for b, batch in enumerate(batches)]
        return [comps for res in ray.get(refs) for comps, _ in res]

    def iter_questions(self, jobs: Iterable[tuple[Problem, SampleRequest]], questions_in_flight: int | None = None
                       ) -> Iterator[tuple[Problem, list[Completion], dict[str, list]]]:
        """``(problem, completions, scores)`` for each job as its batch comes back. ``jobs`` is read
        lazily, at most two batches ahead per worker (a deadline in it starts nothing new after
        it, overshooting by at most those batches). If a worker fails for good (Ray restarts it
        once), the batches that finished are yielded before the error is raised."""
        ray = require_ray()
        k = max(int(questions_in_flight or self.questions_per_call), 1)
        it = iter(jobs)
        exhausted = False
        pending: dict[Any, tuple[int, list]] = {}
        load = [0] * len(self.workers)
        error: BaseException | None = None
        try:
            while True:
                for w in range(len(self.workers)):
                    while error is None and not exhausted and load[w] < 2:
                        batch = list(islice(it, k))
                        if not batch:
                            exhausted = True
                            break
                        ref = self.workers[w].run.remote([(p.question, req) for p, req in batch])
                        pending[ref] = (w, batch)
                        load[w] += 1
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    w, batch = pending.pop(ref)
                    load[w] -= 1
                    try:
                        results = ray.get(ref)
                    except Exception as e:  # keep collecting the other batches, then raise
                        error = error or e
                        continue
                    for (p, _), (comps, scores) in zip(batch, results):
                        yield p, comps, scores
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
        if error is not None:
            raise error

    def score(self, scorer: str, items: list[tuple[str, list[Completion]]]) -> list[list]:
        """Score ``(question, completions)`` items on the workers (spread round-robin)."""
        ray = require_ray()
        k = max(self.questions_per_call, 1)
        chunks = [items[i:i + k] for i in range(0, len(items), k)]
        refs = [self.workers[c % len(self.workers)].score.remote(scorer, chunk) for c, chunk in enumerate(chunks)]
        return [r for res in ray.get(refs) for r in res]

    def close(self) -> None:
        ray = require_ray()
        for w in self.workers:
            try:
                ray.kill(w)
            except Exception:
                pass
        self.workers = []
        if self._started and ray.is_initialized():
            ray.shutdown()


def score_pool_ray(path: str | os.PathLike, scorer: str, questions: dict[str, str], config: RunConfig,
                   address: str = "auto", num_workers: int | None = None, flush_every: int = 8,
                   runner: RayPoolSampler | None = None) -> Path:
    """Add (or complete) the ``score__<scorer>`` column of a pool with the scorer running on Ray
    workers (e.g. the PRM on GPU nodes); each round scores ``flush_every`` questions per worker
    and rewrites the pool, so an interrupted run resumes. The scores are those a local
    :func:`~optscale.data.pools.score_pool` gives (the same scorer on the same completions)."""

    from ..data.pools import PoolError, open_score_column, pool_lock, question_completions, store_scores, write_pool

    own = runner is None
    if runner is None:
        runner = RayPoolSampler(config, address=address, num_workers=num_workers, scorers=[scorer])
    if scorer not in runner.scorer_names:
        raise SamplerError(f"the Ray workers hold scorers {runner.scorer_names}, not {scorer!r}")
    try:
        with pool_lock(path, f"score {scorer} (Ray)"):  # one writer per pool until the column is written
            df, meta, todo = open_score_column(path, scorer, runner.scorer_descriptions()[scorer])
            for qid in todo:
                if qid not in questions:
                    raise PoolError(f"{path}: question {qid!r} has no question text to score")
            step = max(flush_every, 1) * len(runner.workers)
            for start in range(0, len(todo), step):
                items, where = [], []
                for qid in todo[start:start + step]:
                    index, comps = question_completions(df, qid)
                    items.append((questions[qid], comps))
                    where.append(index)
                for idx, res in zip(where, runner.score(scorer, items)):
                    store_scores(df, idx, res, scorer)
                write_pool(df, meta, path, allow_partial_scores=True)
            write_pool(df, meta, path, allow_partial_scores=True)
            return Path(path)
    finally:
        if own:
            runner.close()
