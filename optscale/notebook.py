"""Helpers every notebook calls in its second cell (right after the papermill parameters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import PROJECT_ROOT, RunConfig, load_config
from .data.pools import pool_path
from .provenance import write_manifest

__all__ = ["setup_notebook"]


def setup_notebook(profile: str, run_dir: str, overrides: str = "", notebook: str = "",
                   extra: dict[str, Any] | None = None) -> tuple[RunConfig, Path]:
    """Load and validate the config (unknown keys raise, unlike papermill's own warning),
    create ``run_dir`` with figures/ and tables/, record this notebook and the checksums of the
    config's pool files in the run manifest, apply the plotting style, and return
    ``(config, run_dir)``."""
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
