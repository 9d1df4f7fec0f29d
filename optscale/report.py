"""The results page of a run: ``outputs/<run>/index.html``, readable without running anything.

``bash run_all.sh`` ends by writing it; ``python -m optscale.report outputs/<run>`` (or
``optscale report outputs/<run>``) writes it again. The page links, with relative links only (so
it works when the folder is copied or committed):

- every executed notebook of ``notebooks/``, rendered to HTML with nbconvert beside it in ``html/``
  (nbconvert's stylesheet, the same for every notebook, written once there as
  ``nbconvert-<hash>.css`` and linked, instead of ~300 kB inlined in each page);
- every figure of ``figures/`` (PNG, with its ``.txt`` caption, which names the pool it came from,
  and the PDF when there is one);
- every table of ``tables/`` (CSV, shown as an HTML table; a long one is cut after
  ``max_rows`` rows, with a link to the whole CSV);
- the run's ``manifest.json`` (git hash, profile, time, CPU and dtype, package versions), summarised
  and shown whole, and the papermill logs of ``logs/``.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["MAX_TABLE_ROWS", "link_head_styles", "render_notebooks", "write_report", "main"]

MAX_TABLE_ROWS = 30  # rows of a table shown on the page; the CSV link has them all

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.92em; color: #333; margin-top: 0.4em; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
table.data th, table.data td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
table.data th { background: #f2f2f2; }
table.summary td { padding: 0.1em 1em 0.1em 0; vertical-align: top; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; } code { background: #f2f2f2; padding: 0 0.2em; }
"""


def _href(rel: Path | str) -> str:
    """A relative URL for a path under the run folder (each part percent-encoded)."""
    return "/".join(quote(part) for part in Path(rel).parts)


def _link(rel: Path | str, text: str | None = None) -> str:
    return f'<a href="{html.escape(_href(rel))}">{html.escape(text if text is not None else str(rel))}</a>'


_STYLE_TAG = re.compile(r"<style[^>]*>(.*?)</style>\s*", re.S)


def link_head_styles(page: str, out_dir: Path) -> str:
    """``page`` (HTML) with the ``<style>`` blocks of its ``<head>`` moved into one stylesheet file of
    ``out_dir`` named by its content's hash (so pages with the same styles share one file) and linked
    where the first block was; the styles inside ``<body>`` (a table's, an output's) stay."""
    head, sep, rest = page.partition("</head>")
    blocks = list(_STYLE_TAG.finditer(head))
    if not sep or not blocks:
        return page
    css = "\n".join(m.group(1).strip("\n") for m in blocks) + "\n"
    name = f"nbconvert-{hashlib.sha256(css.encode('utf-8')).hexdigest()[:12]}.css"
    target = out_dir / name
    if not target.is_file():
        target.write_text(css, encoding="utf-8")
    link = f'<link rel="stylesheet" href="{name}">\n'
    first = blocks[0].start()
    head = head[:first] + link + _STYLE_TAG.sub("", head[first:])
    return head + sep + rest


def render_notebooks(run_dir: str | Path) -> list[Path]:
    """Render every executed notebook of ``<run_dir>/notebooks/`` to ``<run_dir>/html/<name>.html``
    (nbconvert's HTMLExporter, outputs and images embedded). Returns the HTML paths, in name order."""
    import nbformat
    from nbconvert import HTMLExporter

    run_dir = Path(run_dir)
    out_dir = run_dir / "html"
    notebooks = sorted((run_dir / "notebooks").glob("*.ipynb"))
    if not notebooks:
        return []
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("nbconvert-*.css"):  # a stylesheet no page links any more
        old.unlink()
    exporter = HTMLExporter()
    paths = []
    for nb_path in notebooks:
        try:
            nb = nbformat.read(nb_path, as_version=4)
        except Exception as e:  # a notebook papermill left half-written: say which, and stop
            raise ValueError(f"{nb_path}: not a readable notebook ({e})") from e
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb_path.stem}})
        target = out_dir / f"{nb_path.stem}.html"
        target.write_text(link_head_styles(body, out_dir), encoding="utf-8")
        paths.append(target)
    return paths


def _notebook_status(nb_path: Path) -> str:
    """'ok', or 'FAILED' when papermill recorded an exception in the executed notebook."""
    try:
        meta = json.loads(nb_path.read_text(encoding="utf-8")).get("metadata", {}).get("papermill", {})
    except (OSError, json.JSONDecodeError):
        return "unreadable"
    if meta.get("exception"):
        return "FAILED"
    duration = meta.get("duration")
    return f"ok, {duration:.0f} s" if isinstance(duration, (int, float)) else "ok"


def _manifest_summary(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    cfg = manifest.get("config") or {}
    compute = manifest.get("compute") or {}
    cpu = compute.get("cpu") or {}
    dtype = compute.get("transformers_dtype") or {}
    rows = [
        ("git hash", manifest.get("git_hash")),
        ("profile", cfg.get("profile")),
        ("sampling", ", ".join(str(v) for v in ((cfg.get("sampling") or {}).get("backend"),
                                               (cfg.get("sampling") or {}).get("model")) if v) or None),
        ("written", manifest.get("updated")),
        ("python", manifest.get("python")),
        ("platform", manifest.get("platform")),
    ]
    if cpu:
        flags = [f for f, on in (cpu.get("flags") or {}).items() if on]
        rows.append(("CPU", f"{cpu.get('model_name')} ({cpu.get('cores')} cores; flags: {', '.join(flags) or 'none'})"))
    if dtype:
        rows.append(("transformers dtype",
                     f"{dtype.get('configured')} -> {dtype.get('chosen')} ({dtype.get('reason')})"))
    if "torch_threads" in compute:
        lc = compute.get("llama_cpp") or {}
        threads = f"torch {compute['torch_threads']}" + (f", llama.cpp {lc['n_threads']}" if "n_threads" in lc else "")
        rows.append(("threads", threads))
    packages = manifest.get("packages") or {}
    if packages:
        rows.append(("packages", ", ".join(f"{k} {v}" for k, v in sorted(packages.items()) if v)))
    return [(k, str(v)) for k, v in rows if v not in (None, "")]


def _table_html(csv_path: Path, rel: Path, max_rows: int) -> str:
    import pandas as pd

    try:
        df = pd.read_csv(csv_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        return f'<p class="note">{_link(rel)}: not readable as CSV ({html.escape(str(e))})</p>'
    shown = df.head(max_rows)
    out = shown.to_html(index=False, classes="data", border=0, na_rep="", float_format=lambda x: f"{x:.4g}")
    if len(df) > max_rows:
        out += (f'<p class="note">first {max_rows} of {len(df)} rows; the whole table: '
                f'{_link(rel, csv_path.name)}</p>')
    return out


def write_report(run_dir: str | Path, max_rows: int = MAX_TABLE_ROWS, render: bool = True) -> Path:
    """Write ``<run_dir>/index.html`` (rendering the notebooks first unless ``render`` is False, when
    the HTML already in ``html/`` is linked). Returns its path. Raises FileNotFoundError when
    ``run_dir`` is not a folder, ValueError when its manifest is not JSON."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"optscale.report: {run_dir} is not a run folder (expected outputs/<run>/)")
    manifest_path = run_dir / "manifest.json"
    manifest: dict[str, Any] = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{manifest_path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if render:
        render_notebooks(run_dir)
    title = f"Run {run_dir.resolve().name}"
    profile = (manifest.get("config") or {}).get("profile")
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f'<p class="note">profile {html.escape(str(profile))}, git {html.escape(str(manifest.get("git_hash")))}; '
             f'page written {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} by '
             f'<code>python -m optscale.report</code>. Contents: <a href="#notebooks">notebooks</a> · '
             f'<a href="#figures">figures</a> · <a href="#tables">tables</a> · <a href="#manifest">manifest</a></p>']

    parts.append('<h2 id="notebooks">Notebooks</h2>')
    notebooks = sorted((run_dir / "notebooks").glob("*.ipynb"))
    if notebooks:
        parts.append("<ul>")
        for nb in notebooks:
            page = run_dir / "html" / f"{nb.stem}.html"
            rendered = _link(page.relative_to(run_dir), nb.stem) if page.is_file() else html.escape(nb.stem)
            log = run_dir / "logs" / f"{nb.stem}.log"
            extra = [_link(nb.relative_to(run_dir), "ipynb")]
            if log.is_file():
                extra.append(_link(log.relative_to(run_dir), "log"))
            parts.append(f"<li>{rendered} ({html.escape(_notebook_status(nb))}; {' · '.join(extra)})</li>")
        parts.append("</ul>")
    else:
        parts.append('<p class="note">no executed notebooks in notebooks/</p>')

    parts.append('<h2 id="figures">Figures</h2>')
    figures = sorted((run_dir / "figures").glob("*.png"))
    if not figures:
        parts.append('<p class="note">no figures in figures/</p>')
    for png in figures:
        rel = png.relative_to(run_dir)
        caption_file = png.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else "(no caption file)"
        links = [_link(rel, "PNG")]
        if png.with_suffix(".pdf").is_file():
            links.append(_link(rel.with_suffix(".pdf"), "PDF"))
        parts.append(f'<figure id="fig-{html.escape(png.stem)}"><a href="{html.escape(_href(rel))}">'
                     f'<img src="{html.escape(_href(rel))}" alt="{html.escape(png.stem)}"></a>'
                     f"<figcaption><b>{html.escape(png.stem)}</b>: {html.escape(caption)} "
                     f"({' · '.join(links)})</figcaption></figure>")

    parts.append('<h2 id="tables">Tables</h2>')
    tables = sorted((run_dir / "tables").glob("*.csv"))
    if not tables:
        parts.append('<p class="note">no tables in tables/</p>')
    for csv in tables:
        rel = csv.relative_to(run_dir)
        others = [_link(rel.with_suffix(ext), ext.lstrip(".")) for ext in (".md", ".tex")
                  if csv.with_suffix(ext).is_file()]
        parts.append(f'<h3 id="table-{html.escape(csv.stem)}">{html.escape(csv.stem)}</h3>'
                     f'<p class="note">{" · ".join([_link(rel, "CSV"), *others])}</p>')
        parts.append(_table_html(csv, rel, max_rows))

    parts.append('<h2 id="manifest">Manifest</h2>')
    if manifest:
        rows = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>"
                       for k, v in _manifest_summary(manifest))
        parts.append(f'<table class="summary">{rows}</table>')
        parts.append(f"<details><summary>{_link('manifest.json')} in full</summary><pre>"
                     f"{html.escape(json.dumps(manifest, indent=2, sort_keys=True, default=str))}</pre></details>")
    else:
        parts.append('<p class="note">no manifest.json in this run folder</p>')
    parts.append("</body></html>\n")
    out = run_dir / "index.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optscale.report",
                                 description="Write a run's results page, <run>/index.html: the executed notebooks "
                                             "rendered to HTML, the figures with their captions, the tables and "
                                             "the manifest, linked with relative links.")
    ap.add_argument("run_dir", help="a run folder, e.g. outputs/cpu-1.5b-20260101-120000")
    ap.add_argument("--max-rows", type=int, default=MAX_TABLE_ROWS,
                    help=f"table rows shown on the page; longer tables link their CSV (default {MAX_TABLE_ROWS})")
    ap.add_argument("--no-render", action="store_true", help="link the notebooks' HTML already in html/ without "
                                                             "rendering them again")
    args = ap.parse_args(argv)
    if args.max_rows < 1:
        ap.error(f"--max-rows must be at least 1, got {args.max_rows}")
    try:
        page = write_report(args.run_dir, args.max_rows, render=not args.no_render)
    except (FileNotFoundError, ValueError) as e:
        print(f"{ap.prog}: {e}", file=sys.stderr)
        return 2
    print(f"results page: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
