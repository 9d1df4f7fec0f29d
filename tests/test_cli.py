"""Issue 30, item 6: the installed ``optscale`` command (console script ``optscale.cli:main``).

Every verb answers ``--help`` (the forwarding verbs with the real module's parser), ``info`` is
``generate info``, ``run`` hands its flags to run_all.sh unchanged, and the ``python -m`` forms
still work. Run both as the installed script (when ``pip install -e .`` registered it) and as
``python -m optscale.cli``."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from optscale import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("optscale")
FORMS = [pytest.param([sys.executable, "-m", "optscale.cli"], id="python-m")]
if SCRIPT:
    FORMS.append(pytest.param([SCRIPT], id="script"))


def _run(cmd, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_pyproject_declares_the_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"optscale": "optscale.cli:main"}


@pytest.mark.parametrize("form", FORMS)
def test_top_level_help_lists_every_verb(form):
    out = _run([*form, "--help"])
    assert out.returncode == 0, out.stderr
    for verb in ("run", "generate", "info", "study", "report"):
        assert f"\n    {verb} " in out.stdout, verb
    out = _run([*form, "no-such-verb"])
    assert out.returncode == 2 and "invalid choice: 'no-such-verb'" in out.stderr


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("verb,expect", [
    (["run"], "--overrides"),
    (["generate"], "{pools,score,combine,merge,info,regrade}"),
    (["generate", "pools"], "--online"),
    (["info"], "--format {text,markdown,csv}"),  # generate info's own options
    (["study"], "{run,score,aggregate,combine,report,verifiers}"),
    (["report"], "--max-rows"),
])
def test_every_verb_has_its_own_help(form, verb, expect):
    out = _run([*form, *verb, "--help"])
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout


def test_info_is_generate_info():
    direct = _run([sys.executable, "-m", "optscale.generate", "info", "--profile", "smoke", "--datasets", "gsm8k"])
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.startswith("gsm8k: ") and "math500" not in direct.stdout  # the committed 0.5B gsm8k pool
    for form in ([SCRIPT] if SCRIPT else [sys.executable, "-m", "optscale.cli"],):
        out = _run([*form, "info", "--profile", "smoke", "--datasets", "gsm8k"])
        assert out.returncode == 0, out.stderr
        assert out.stdout == direct.stdout
    bad = _run([sys.executable, "-m", "optscale.cli", "info", "--profile", "no-such-profile"])
    assert bad.returncode == 2 and "no-such-profile" in bad.stderr


def test_run_passes_its_flags_to_run_all(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd: calls.append((cmd, cwd)) or 7)
    rc = cli.main(["run", "--profile", "smoke", "--run-id", "r1", "--only", "01_theory", "--overrides",
                   "theory.mc_trials=50"])
    assert rc == 7  # run_all.sh's exit status
    assert calls == [(["bash", str(ROOT / "run_all.sh"), "--profile", "smoke", "--run-id", "r1", "--only", "01_theory",
                       "--overrides", "theory.mc_trials=50"], ROOT)]
    calls.clear()
    cli.main(["run"])
    assert calls[0][0] == ["bash", str(ROOT / "run_all.sh")]  # no flag: run_all.sh's defaults


def test_run_reaches_run_all_and_returns_its_status():
    out = _run([sys.executable, "-m", "optscale.cli", "run", "--profile", "no-such-profile"], timeout=600)
    assert out.returncode == 2
    assert "run_all.sh: no profile 'no-such-profile'" in out.stderr
