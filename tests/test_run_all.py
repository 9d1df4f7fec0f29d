"""run_all.sh executes notebooks for real, stops at the first failure and names it."""

import shutil
import subprocess
from pathlib import Path

import nbformat as nbf
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _nb(path, body):
    nb = nbf.v4.new_notebook()
    nb.cells = [
        nbf.v4.new_code_cell('profile: str = "cpu"\nrun_dir: str = "x"\noverrides: str = ""', metadata={"tags": ["parameters"]}),
        nbf.v4.new_code_cell(body),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, path)


@pytest.fixture
def workbook(tmp_path):
    shutil.copy(ROOT / "run_all.sh", tmp_path / "run_all.sh")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "notebooks").mkdir()
    return tmp_path


def _run(wb, *args):
    return subprocess.run(["bash", str(wb / "run_all.sh"), *args], capture_output=True, text=True, timeout=300)


def test_runs_in_order_and_writes_outputs(workbook):
    _nb(workbook / "notebooks" / "00_first.ipynb",
        "from pathlib import Path\nPath(run_dir, 'first.txt').write_text(profile + '|' + overrides)")
    _nb(workbook / "notebooks" / "01_second.ipynb",
        "from pathlib import Path\nassert Path(run_dir, 'first.txt').read_text() == 'smoke|pools.replay_orders=3'")
    r = _run(workbook, "--profile", "smoke", "--run-id", "t1", "--overrides", "pools.replay_orders=3")
    assert r.returncode == 0, r.stderr
    out = workbook / "outputs" / "t1"
    assert (out / "notebooks" / "00_first.ipynb").is_file() and (out / "notebooks" / "01_second.ipynb").is_file()
    assert (out / "logs" / "01_second.log").is_file()


def test_failing_notebook_stops_the_run_and_is_named(workbook):
    _nb(workbook / "notebooks" / "00_ok.ipynb", "x = 1")
    _nb(workbook / "notebooks" / "01_broken.ipynb", "raise RuntimeError('boom from the notebook')")
    _nb(workbook / "notebooks" / "02_never.ipynb", "x = 2")
    r = _run(workbook, "--profile", "smoke", "--run-id", "t2")
    assert r.returncode != 0
    assert "01_broken FAILED" in r.stderr and "boom from the notebook" in r.stderr
    out = workbook / "outputs" / "t2" / "notebooks"
    assert (out / "00_ok.ipynb").is_file() and not (out / "02_never.ipynb").exists()


def test_bad_profile_and_override_are_refused(workbook):
    _nb(workbook / "notebooks" / "00_ok.ipynb", "x = 1")
    r = _run(workbook, "--profile", "nope")
    assert r.returncode == 2 and "no profile 'nope'" in r.stderr
    r = _run(workbook, "--profile", "smoke", "--overrides", "sampling.sed=1")
    assert r.returncode != 0 and "unknown config key 'sampling.sed'" in r.stderr
    assert not (workbook / "outputs").exists() or not any((workbook / "outputs").iterdir())


def test_notebook_setup_records_config_seeds_and_pool_checksums(tmp_path):
    """Every notebook's setup writes the manifest: config, git hash, packages, seeds and the
    sha256 of each pool file it reads (None for a pool that is not there)."""
    import json

    from optscale.notebook import setup_notebook
    from optscale.data.pools import pool_path
    from optscale.provenance import file_sha256

    cfg, run = setup_notebook("smoke", str(tmp_path / "run"), "pools.replay_orders=3", notebook="00_x")
    m = json.loads((run / "manifest.json").read_text())
    assert m["config"]["pools"]["replay_orders"] == 3 and m["seeds"]["replay"] == cfg.pools.replay_seed
    assert m["notebooks"]["00_x"] == {"profile": "smoke", "overrides": "pools.replay_orders=3"}
    assert m["packages"]["numpy"] and m["git_hash"]
    expected = {str(pool_path(cfg, d).relative_to(ROOT)): file_sha256(pool_path(cfg, d)) for d in cfg.data.benchmarks}
    assert m["pools"] == expected and all(expected.values())

    missing, run2 = setup_notebook("smoke", str(tmp_path / "run2"), "pools.pool_name=not-generated", notebook="00_x")
    m2 = json.loads((run2 / "manifest.json").read_text())
    assert set(m2["pools"]) == {str(pool_path(missing, d).relative_to(ROOT)) for d in missing.data.benchmarks}
    assert all(v is None for v in m2["pools"].values())


def test_bad_configuration_is_one_line_not_a_traceback(workbook):
    """Issue 17 item 3: a ConfigError is printed as its message and nothing runs."""
    _nb(workbook / "notebooks" / "00_first.ipynb", "raise SystemExit('must not run')")
    for overrides, message in (("fit.delta=abc", "config key 'fit.delta' = 'abc': expected a finite number"),
                               ("theory.deltas=[0.1, 0.05", "unclosed bracket")):
        r = _run(workbook, "--profile", "smoke", "--overrides", overrides)
        assert r.returncode == 2
        assert r.stderr.startswith("run_all.sh: bad configuration: ") and message in r.stderr
        assert "Traceback" not in r.stderr and not (workbook / "outputs").exists()
