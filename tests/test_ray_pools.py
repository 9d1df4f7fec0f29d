"""The Ray path (issue 19): a pool generated and scored over a local 2-worker Ray cluster is the
pool a local run writes, through an interruption and a resume. Skipped only if ray is missing
(.ci/run installs the ``ray`` extra)."""

from __future__ import annotations

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="ray not installed (pip install -e \".[ray]\")")

from optscale.config import load_config  # noqa: E402
from optscale.data.benchmarks import Problem  # noqa: E402
from optscale.sampling.distributed import RayPoolSampler, score_pool_ray  # noqa: E402
from optscale.data.generation import generate_pool  # noqa: E402
from optscale.data.pools import read_pool, score_pool  # noqa: E402
from optscale.sampling.fake import FAKE_GOLD, FakeSampler  # noqa: E402
from optscale.scoring.scorers import get_scorer  # noqa: E402


def _problems(k):
    return [Problem("gsm8k", f"q{i}", f"What is {i}+1?", FAKE_GOLD, i) for i in range(k)]


def _cfg(root, name):
    return load_config("cpu", {"pools.pool_dir": str(root), "pools.pool_name": name, "sampling.backend": "fake",
                               "sampling.n_samples.gsm8k": 4})


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("unused"), "x")
    r = RayPoolSampler(cfg, address="local", num_workers=2, scorers=["self-certainty"], questions_per_call=2)
    yield r
    r.close()


def test_ray_pool_equals_local_pool_through_a_resume(tmp_path, runner):
    problems = _problems(10)
    cfg = _cfg(tmp_path / "ray", "fake")
    generate_pool(cfg, "gsm8k", problems, runner, max_questions=3, progress=False)  # an interrupted run
    assert read_pool(tmp_path / "ray" / "fake" / "gsm8k.parquet").n_questions == 3
    path = generate_pool(cfg, "gsm8k", problems, runner, progress=False)  # resumes with the other 7
    served = ray.get([w.served.remote() for w in runner.workers])
    assert sum(served) == 10 and min(served) >= 2, served  # both workers sampled, nothing twice

    local_cfg = _cfg(tmp_path / "local", "fake")
    local = generate_pool(local_cfg, "gsm8k", problems, FakeSampler(local_cfg.sampling),
                          [get_scorer("self-certainty", local_cfg.scoring)], progress=False)
    got, want = read_pool(path), read_pool(local)
    pd.testing.assert_frame_equal(got.df, want.df)  # texts, seeds, answers, scores
    assert got.meta["generator"]["distributed"]["workers"] == 2
    assert got.meta["scorers"] == want.meta["scorers"]


def test_ray_scoring_equals_local_scoring(tmp_path, runner):
    problems = _problems(5)
    questions = {p.id: p.question for p in problems}
    paths = []
    for name in ("a", "b"):
        cfg = _cfg(tmp_path, name)
        paths.append(generate_pool(cfg, "gsm8k", problems, FakeSampler(cfg.sampling), progress=False))
    score_pool_ray(paths[0], "self-certainty", questions, cfg, runner=runner, flush_every=1)
    score_pool(paths[1], get_scorer("self-certainty", cfg.scoring), questions, progress=False)
    a, b = read_pool(paths[0]).df, read_pool(paths[1]).df
    assert a["score__self-certainty"].notna().all()
    pd.testing.assert_frame_equal(a, b)
