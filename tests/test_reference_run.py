"""Issue 30, item 4: the committed reference run ``outputs/reference/`` and the README figures.

The reference run (``bash scripts/reference_run.sh``) is what a reader sees without running anything:
these tests check that it is a whole run of the default profile from a clean commit — its manifest
names the commit, the profile, the CPU and the dtype chosen; every notebook ran; the results page's
links all resolve inside the folder; every figure has its caption — and
that every image the README shows is a file of the repository."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from optscale.config import DEFAULT_PROFILE

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "outputs" / "reference"
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _manifest() -> dict:
    path = REFERENCE / "manifest.json"
    assert path.is_file(), f"{path} missing: regenerate with bash scripts/reference_run.sh"
    return json.loads(path.read_text(encoding="utf-8"))


def test_reference_manifest_names_a_clean_commit_the_default_profile_and_the_compute():
    m = _manifest()
    assert re.fullmatch(r"[0-9a-f]{40}", m["git_hash"]), m["git_hash"]  # no "-dirty": a fresh clone
    assert m["config"]["profile"] == DEFAULT_PROFILE
    cpu = m["compute"]["cpu"]
    assert cpu["model_name"] and cpu["cores"] >= 1 and "avx2" in cpu["flags"]
    dtype = m["compute"]["transformers_dtype"]
    assert dtype["configured"] == "auto" and dtype["chosen"] in ("float32", "bfloat16")
    if not (cpu["flags"].get("avx512_bf16") or cpu["flags"].get("amx_bf16")):
        assert dtype["chosen"] == "float32"  # a CPU without native bf16 computes in float32


def test_reference_ran_every_notebook_and_its_page_links_resolve():
    from test_report import assert_links_resolve, local_targets

    ran = sorted(p.stem for p in (REFERENCE / "notebooks").glob("*.ipynb"))
    assert ran == NOTEBOOKS
    page = REFERENCE / "index.html"
    assert_links_resolve(page)
    linked = {t.split("/")[-1].rsplit(".", 1)[0] for t in local_targets(page)}
    for nb in NOTEBOOKS:
        assert nb in linked, f"{page} does not link notebook {nb}"
    for rendered in (REFERENCE / "html").glob("*.html"):  # each page's shared stylesheet is committed
        sheets = re.findall(r'<link rel="stylesheet" href="([^"]+\.css)">', rendered.read_text(encoding="utf-8"))
        assert sheets and all((rendered.parent / css).is_file() for css in sheets), rendered.name
    for png in (REFERENCE / "figures").glob("*.png"):
        caption = png.with_suffix(".txt")
        assert caption.is_file(), f"{png.name}: no caption"
        assert len(caption.read_text(encoding="utf-8").strip()) > 20, f"{caption.name} is empty"
    size = sum(p.stat().st_size for p in REFERENCE.rglob("*") if p.is_file())
    assert size < 40e6, f"outputs/reference is {size / 1e6:.0f} MB; it should stay a few MB"


def test_every_readme_image_is_a_committed_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    assert any(i.startswith("outputs/reference/figures/") for i in images), "README shows no reference figure"
    for i in images:
        assert not re.match(r"[a-z]+://", i), f"README image {i} is not a repository file"
        assert (ROOT / i).is_file(), f"README image {i} does not exist"


@pytest.mark.parametrize("name", ["transcript.txt"])
def test_reference_keeps_its_console_transcript(name):
    text = (REFERENCE / name).read_text(encoding="utf-8")
    assert "bash run_all.sh took" in text
    for nb in NOTEBOOKS:
        assert f"== {nb}" in text


def test_no_reference_file_is_git_ignored():
    """A link that resolves here must resolve in a clean clone too: no file of the reference run (nor a
    README image) may be one that .gitignore keeps out of the repository (the logs once were)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    files = [str(p.relative_to(ROOT)) for p in REFERENCE.rglob("*") if p.is_file()] + images
    out = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(files),
                         capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr  # 1: none ignored
    ignored = out.stdout.split()
    assert not ignored, f"git ignores {len(ignored)} reference file(s), e.g. {ignored[:3]}: fix .gitignore"
