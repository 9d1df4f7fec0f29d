"""Helpers every notebook calls in its second cell (right after the papermill parameters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import PROJECT_ROOT, ConfigError, RunConfig, load_config
from .data.pools import pool_path
from .provenance import write_manifest

__all__ = ["setup_notebook", "write_built_notebook"]


def setup_notebook(profile: str, run_dir: str, overrides: str = "", notebook: str = "",
                   extra: dict[str, Any] | None = None) -> tuple[RunConfig, Path]:
    """Load and validate the config (unknown keys raise, unlike papermill's own warning),
    create ``run_dir`` with figures/ and tables/, record this notebook and the checksums of the
    config's pool files in the run manifest, apply the plotting style, and return
    ``(config, run_dir)``."""
    _check_parameters(profile=profile, run_dir=run_dir, overrides=overrides)
    import matplotlib

    matplotlib.use("Agg") if matplotlib.get_backend().lower() == "agg" else None
    import seaborn as sns

    cfg = load_config(profile, overrides)
    run = Path(run_dir)
    if not run.is_absolute():
        run = PROJECT_ROOT / run
    for sub in ("figures", "tables"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    write_manifest(cfg, run, extra={notebook or "notebook": {"profile": profile, "overrides": overrides}},
                   pools=[pool_path(cfg, name) for name in cfg.data.benchmarks])
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
    return cfg, run


def _check_parameters(profile: Any, run_dir: Any, overrides: Any) -> None:
    """The papermill parameters' types, else a ConfigError naming the parameter (``papermill -p``
    turns ``3`` into an int: ``-r`` passes a value as a string)."""
    expected = {"profile": ("a profile name (a string)", (str,)), "run_dir": ("a folder path (a string)", (str, Path)),
                "overrides": ("a string of key=value overrides", (str, dict))}
    for name, value in (("profile", profile), ("run_dir", run_dir), ("overrides", overrides)):
        what, types = expected[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(f"notebook parameter {name!r} = {value!r}: expected {what}, got {type(value).__name__} "
                              f"(papermill -p reads numbers as numbers; -r {name} VALUE passes a string)")


def write_built_notebook(nb: Any, path: str | Path) -> Path:
    """Write a notebook built by a ``scripts/build_notebook_*.py`` script with cell ids derived from
    each cell's position and source (nbformat draws random ones), so rebuilding an unchanged
    notebook rewrites the same file and a changed cell shows as that cell only in the diff."""
    import hashlib

    import nbformat

    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i:02d}-{hashlib.sha1(cell.source.encode('utf-8')).hexdigest()[:8]}"
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return Path(path)
