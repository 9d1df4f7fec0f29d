"""run_all.sh executes notebooks for real, stops at the first failure and names it."""

import os
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


def _run(wb, *args, pythonpath=None):
    env = None
    if pythonpath is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(["bash", str(wb / "run_all.sh"), *args], capture_output=True, text=True, timeout=300, env=env)


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


def test_without_a_profile_every_entry_point_uses_the_default_profile(workbook, tmp_path):
    """Issue 16 item 7: the 1.5B set is the default of run_all.sh, of every notebook's ``profile``
    parameter (and the scripts that build notebooks 00 / 04), of load_config and of the generate CLI."""
    from optscale.config import DEFAULT_PROFILE, load_config

    assert DEFAULT_PROFILE == "cpu-1.5b" and load_config().profile == DEFAULT_PROFILE
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        params = [c for c in nbf.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and f'profile: str = "{DEFAULT_PROFILE}"' in params[0].source, nb.name
    for builder in ("build_notebook_00.py", "build_notebook_04.py"):
        assert f'profile: str = "{DEFAULT_PROFILE}"' in (ROOT / "scripts" / builder).read_text(), builder
    from optscale import generate
    assert generate._parser().parse_args(["info"]).profile == DEFAULT_PROFILE

    # a stand-in llama_cpp module passes the backend check; the toy notebook records its profile
    fake = tmp_path / "site"
    (fake / "llama_cpp").mkdir(parents=True)
    (fake / "llama_cpp" / "__init__.py").write_text("")
    _nb(workbook / "notebooks" / "00_first.ipynb",
        "from pathlib import Path\nPath(run_dir, 'profile.txt').write_text(profile)")
    r = _run(workbook, "--run-id", "d1", pythonpath=fake)
    assert r.returncode == 0, r.stderr
    assert (workbook / "outputs" / "d1" / "profile.txt").read_text() == DEFAULT_PROFILE


def test_a_profile_whose_backend_is_not_installed_is_refused_before_any_notebook(workbook, tmp_path):
    """Without llama.cpp the default profile's live notebooks would fail after the others ran:
    run_all.sh refuses at once and names the install script (llama_cpp hidden via sitecustomize)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['llama_cpp'] = None\n")
    _nb(workbook / "notebooks" / "00_first.ipynb", "raise SystemExit('must not run')")
    r = _run(workbook, "--profile", "cpu-1.5b", pythonpath=hide)
    assert r.returncode == 2, r.stderr
    assert "profile 'cpu-1.5b'" in r.stderr and "scripts/install_llama_cpp.sh" in r.stderr
    assert "Traceback" not in r.stderr and not (workbook / "outputs").exists()
    r = _run(workbook, "--profile", "smoke", "--run-id", "s", pythonpath=hide)
    assert r.returncode == 1 and "must not run" in r.stderr  # the 0.5B profiles sample with transformers
    # a partial run (--only) is not refused: the notebooks from the pools need no sampler
    _nb(workbook / "notebooks" / "01_pools.ipynb", "x = 1")
    r = _run(workbook, "--profile", "cpu-1.5b", "--run-id", "p", "--only", "01_", pythonpath=hide)
    assert r.returncode == 0, r.stderr


def test_missing_backend_library_names_what_to_install(monkeypatch):
    import importlib.util

    from optscale.sampling import missing_backend_library

    assert missing_backend_library("fake") is None and missing_backend_library("hf-cpu") is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert "bash scripts/install_llama_cpp.sh" in missing_backend_library("llama-cpp")
    assert "'vllm'" in missing_backend_library("vllm")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert missing_backend_library("llama-cpp") is None


def test_bad_arguments_are_refused_before_anything_runs(workbook):
    """Issue 29 item 12: an --only that matches nothing, a run id or profile that is not a plain
    name (it would write outside outputs/), and an option without its value are usage errors."""
    _nb(workbook / "notebooks" / "00_first.ipynb", "raise SystemExit('must not run')")
    _nb(workbook / "notebooks" / "01_second.ipynb", "raise SystemExit('must not run')")
    r = _run(workbook, "--profile", "smoke", "--only", "zzz")
    assert r.returncode == 2 and "--only 'zzz' matches no notebook" in r.stderr, r.stderr
    assert "00_first" in r.stderr and "01_second" in r.stderr
    for run_id in ("../../escaped", "a/b", ".hidden", ".."):
        r = _run(workbook, "--profile", "smoke", "--run-id", run_id)
        assert r.returncode == 2 and f"--run-id '{run_id}'" in r.stderr, r.stderr
    r = _run(workbook, "--profile", "../profiles/smoke")
    assert r.returncode == 2 and "--profile '../profiles/smoke'" in r.stderr, r.stderr
    for option in ("--profile", "--run-id", "--only", "--overrides"):
        r = _run(workbook, option)
        assert r.returncode == 2 and f"run_all.sh: {option} needs a value" in r.stderr, r.stderr
        assert "unbound variable" not in r.stderr
    assert not (workbook.parent / "escaped").exists() and not (workbook / "outputs").exists()


def test_notebook_parameters_reach_the_notebook_as_strings(workbook, tmp_path):
    """``papermill -p`` reads ``3`` as an int: a profile named 3 would reach setup_notebook as one.
    run_all.sh passes its parameters raw (``-r``). (load_config reads the workbook's profiles/ via
    a sitecustomize.)"""
    (workbook / "profiles" / "3.yaml").write_text("extends: smoke\nprofile: '3'\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import pathlib, optscale.config.run as run\nrun.PROFILES_DIR = pathlib.Path({str(workbook / 'profiles')!r})\n")
    _nb(workbook / "notebooks" / "00_types.ipynb",
        "assert (profile, type(overrides)) == ('3', str), (profile, overrides)")
    r = _run(workbook, "--profile", "3", "--run-id", "raw", "--overrides", "", pythonpath=site)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("builder", sorted(p.name for p in (ROOT / "scripts").glob("build_notebook_*.py")))
def test_each_built_notebook_is_what_its_script_writes(builder, tmp_path):
    """A notebook made by a ``scripts/build_notebook_*.py`` is committed as that script writes it
    (cell ids from position and source, so a rebuild is byte-identical): an edit to the script that
    was not rebuilt, or to the notebook that is not in the script, fails here."""
    import sys

    (tmp_path / "notebooks").mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / builder)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (written,) = list((tmp_path / "notebooks").glob("*.ipynb"))
    committed = ROOT / "notebooks" / written.name
    assert written.read_bytes() == committed.read_bytes(), (
        f"{committed.name} differs from what scripts/{builder} writes: run `python scripts/{builder}`")
