"""Issue 30, item 3: the results page ``outputs/<run>/index.html`` (optscale.report).

A small synthetic run folder (a tiny executed notebook written with nbformat, a PNG drawn with
matplotlib in one distinctive solid colour, its caption naming a pool, a long CSV, a manifest) is
turned into the page; the page's links are checked to be relative and to resolve, also after the
folder is copied elsewhere; and a headless Chromium screenshot of the page must show the figure (a
block of its colour). The browser test skips only when no Chromium binary is installed
(Debian: ``apt-get install -y chromium``)."""

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from optscale.report import write_report

FIGURE_RGB = (17, 187, 102)  # the figure's fill colour, found again in the screenshot
CAPTION = "Accuracy against samples; pool data/pools/test-pool/gsm8k.parquet (SIMULATED scores)"
NOTEBOOK_OUTPUT = "tiny notebook says 4242"


def _make_run(root: Path, table_rows: int = 100) -> Path:
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nbformat
    import pandas as pd

    from optscale.provenance import save_figure, save_table

    run = root / "outputs" / "test-run"
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('tiny notebook says', 4242)", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=NOTEBOOK_OUTPUT + "\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# Tiny notebook"), cell]
    nb.metadata["papermill"] = {"duration": 1.5, "exception": None}
    (run / "notebooks").mkdir(parents=True)
    nbformat.write(nb, run / "notebooks" / "01_tiny notebook.ipynb")  # a space: links must be encoded

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.add_patch(plt.Rectangle((0, 0), 1, 1, color=np.array(FIGURE_RGB) / 255))
    ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.set_axis_off()
    save_figure(fig, run, "accuracy_vs_samples", caption=CAPTION)
    plt.close(fig)
    save_table(pd.DataFrame({"policy": [f"policy-{i}" for i in range(table_rows)],
                             "accuracy": np.linspace(0.1, 0.9, table_rows)}), run, "policies")
    (run / "manifest.json").write_text(json.dumps({
        "git_hash": "0123456789abcdef-dirty", "config": {"profile": "smoke", "sampling": {"backend": "fake"}},
        "updated": "2026-12-01T12:00:00Z", "packages": {"numpy": "2.0"},
        "compute": {"cpu": {"model_name": "Test CPU", "cores": 2, "flags": {"avx2": True, "avx512_bf16": False}},
                    "transformers_dtype": {"configured": "auto", "chosen": "float32", "reason": "no flag"},
                    "torch_threads": 2}}))
    return run


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v:
                self.targets.append(v)


def local_targets(page: Path) -> list[str]:
    p = _Links()
    p.feed(page.read_text(encoding="utf-8"))
    return [t for t in p.targets if not t.startswith("#")]


def assert_links_resolve(page: Path):
    targets = local_targets(page)
    assert targets
    for t in targets:
        u = urlparse(t)
        assert not u.scheme and not u.netloc and not t.startswith("/"), f"not a relative link: {t}"
        assert (page.parent / unquote(u.path)).is_file(), f"{page}: link {t} does not resolve"


def test_page_links_every_output_relatively(tmp_path):
    run = _make_run(tmp_path)
    page = write_report(run, max_rows=30)
    assert page == run / "index.html"
    text = page.read_text(encoding="utf-8")
    rendered = run / "html" / "01_tiny notebook.html"
    rendered_text = rendered.read_text(encoding="utf-8")
    assert NOTEBOOK_OUTPUT in rendered_text  # nbconvert kept the cell output
    # nbconvert's stylesheet is one linked file beside the pages, not inlined in each
    head = rendered_text.split("</head>")[0]
    assert "<style" not in head
    sheets = re.findall(r'<link rel="stylesheet" href="(nbconvert-[0-9a-f]{12}\.css)">', head)
    assert len(sheets) == 1 and (run / "html" / sheets[0]).stat().st_size > 10_000
    assert ".jp-Cell" in (run / "html" / sheets[0]).read_text(encoding="utf-8")
    assert "01_tiny%20notebook.html" in text and "ok, 2 s" in text
    assert CAPTION.replace("(", "").split(";")[0] in text and "data/pools/test-pool/gsm8k.parquet" in text
    assert 'src="figures/accuracy_vs_samples.png"' in text and "figures/accuracy_vs_samples.pdf" in text
    # the long table: 30 rows shown, a note and a link to the whole CSV
    assert "policy-29" in text and "policy-30" not in text
    assert "first 30 of 100 rows" in text and 'href="tables/policies.csv"' in text
    assert "0123456789abcdef-dirty" in text and "Test CPU" in text and "auto -&gt; float32" in text
    assert str(tmp_path) not in text  # nothing absolute
    assert_links_resolve(page)
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, copy)
    assert_links_resolve(copy / "index.html")


def test_short_tables_are_whole_and_an_empty_run_says_so(tmp_path):
    run = _make_run(tmp_path, table_rows=5)
    text = write_report(run).read_text(encoding="utf-8")
    assert "policy-4" in text and "rows; the whole table" not in text
    empty = tmp_path / "empty"
    empty.mkdir()
    text = write_report(empty).read_text(encoding="utf-8")
    assert "no executed notebooks" in text and "no figures" in text and "no manifest.json" in text


def test_module_command_regenerates_the_page_and_refuses_a_missing_folder(tmp_path):
    run = _make_run(tmp_path)
    out = subprocess.run([sys.executable, "-m", "optscale.report", str(run), "--max-rows", "10"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "first 10 of 100 rows" in (run / "index.html").read_text(encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "optscale.report", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "is not a run folder" in out.stderr
    (run / "manifest.json").write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "optscale.report", str(run)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "manifest.json: not valid JSON (line 1" in out.stderr


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _largest_block(mask: np.ndarray) -> tuple[int, int, float]:
    """Height, width and fill fraction of the bounding box of the True pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return 0, 0, 0.0
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return box.shape[0], box.shape[1], float(box.mean())


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)")
def test_headless_chromium_shows_the_figure(tmp_path):
    import matplotlib.image as mpimg

    run = _make_run(tmp_path)
    page = write_report(run)
    shot = tmp_path / "screenshot.png"
    profile = tmp_path / "chromium-profile"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {out.returncode}): {out.stderr[-2000:]}"
    img = mpimg.imread(shot)[..., :3]
    img = (img * 255).round().astype(int) if img.dtype != np.uint8 else img.astype(int)
    mask = (np.abs(img - np.array(FIGURE_RGB)) <= 3).all(-1)
    h, w, fill = _largest_block(mask)
    # the figure is 600 x 450 px at dpi 150; its filled axes are most of it
    assert h >= 250 and w >= 350 and fill > 0.95, f"figure colour block {h} x {w} px, {fill:.0%} filled"
    # and nothing else on the page has that colour: without the <img> the block is gone
    (run / "figures" / "accuracy_vs_samples.png").unlink()
    shot.unlink()
    subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    img2 = mpimg.imread(shot)[..., :3]
    img2 = (img2 * 255).round().astype(int) if img2.dtype != np.uint8 else img2.astype(int)
    assert not (np.abs(img2 - np.array(FIGURE_RGB)) <= 3).all(-1).any()


def test_head_styles_move_to_one_shared_file_and_body_styles_stay(tmp_path):
    from optscale.report import link_head_styles

    page = ('<html><head><meta charset="utf-8"><style type="text/css">\na { color: red; }\n</style>\n'
            '<script src="x.js"></script><style>b { color: blue; }</style></head>'
            '<body><style>table.df { border: 0; }</style><p>hi</p></body></html>')
    one, two = link_head_styles(page, tmp_path), link_head_styles(page.replace("hi", "ho"), tmp_path)
    files = list(tmp_path.glob("nbconvert-*.css"))
    assert len(files) == 1  # the same styles: one file for both pages
    assert files[0].read_text(encoding="utf-8") == "a { color: red; }\nb { color: blue; }\n"
    for out, word in ((one, "hi"), (two, "ho")):
        head, body = out.split("</head>")
        assert "<style" not in head and f'<link rel="stylesheet" href="{files[0].name}">' in head
        assert head.index("<link") < head.index("<script")  # where the first block was
        assert "<style>table.df { border: 0; }</style>" in body and f"<p>{word}</p>" in body
    link_head_styles(page.replace("red", "green"), tmp_path)
    assert len(list(tmp_path.glob("nbconvert-*.css"))) == 2
    assert link_head_styles("<p>no head</p>", tmp_path) == "<p>no head</p>"
