"""Run manifests: config, git hash, package versions, seeds, pool checksums, and the machine's CPU with
the dtype and threads chosen for it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .config import PROJECT_ROOT, RunConfig

__all__ = ["git_hash", "package_versions", "compute_environment", "write_manifest", "file_sha256", "save_figure",
           "save_table"]

PACKAGES = ("optscale", "numpy", "scipy", "pandas", "pyarrow", "torch", "transformers", "math-verify",
            "papermill", "matplotlib", "seaborn", "scikit-learn", "sentence-transformers", "vllm", "llama-cpp-python")


def git_hash(root: Path = PROJECT_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def file_sha256(path: str | Path) -> str:
    from .sampling.model_files import sha256_file

    return sha256_file(path)


def compute_environment(config: RunConfig) -> dict[str, Any]:
    """What decides this run's speed: the CPU (model name, the flags of
    :data:`optscale.sampling.cpu.CPU_FLAGS`, cores), torch's CPU kernel level, the dtype the
    transformers paths compute in (``sampling.dtype`` resolved, with the reason and the bf16 probe),
    and the threads torch and llama.cpp use (with llama.cpp's build features when it is installed)."""
    from .sampling.cpu import cpu_summary, default_threads
    from .sampling.hf_models import dtype_choice, resolve_dtype

    dtype = config.sampling.dtype
    out: dict[str, Any] = {
        "cpu": cpu_summary(),
        # the hf-cpu sampler, the LM judges and OptPO's update on CPU
        "transformers_dtype": dtype_choice(dtype, "cpu"),
        "torch_threads": default_threads(),
    }
    try:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if config.sampling.backend == "vllm":
        out["vllm_dtype"] = resolve_dtype(dtype, "cuda")
    if config.sampling.backend == "llama-cpp":
        info: dict[str, Any] = {"n_threads": default_threads()}
        try:
            import llama_cpp

            info["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        except ImportError:
            info["system_info"] = None  # not installed in this environment
        out["llama_cpp"] = info
    return out


def write_manifest(config: RunConfig, run_dir: str | Path, extra: dict[str, Any] | None = None,
                   pools: Iterable[Path] = ()) -> Path:
    """Write (or update) ``manifest.json`` in the run folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "manifest.json"
    manifest: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    manifest.update({
        "config": config.to_dict(),
        "git_hash": git_hash(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "seeds": {
            "sampling": config.sampling.seed, "replay": config.pools.replay_seed,
            "evaluation": config.evaluation.seed, "predictor_split": config.predictor.split_seed,
            "theory": config.theory.seed,
        },
        "compute": compute_environment(config),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    pool_sums = manifest.setdefault("pools", {})
    for p in pools:  # sha256 of each pool file; None records a pool that is not there
        p = Path(p)
        key = str(p.relative_to(PROJECT_ROOT) if p.is_relative_to(PROJECT_ROOT) else p)
        pool_sums[key] = file_sha256(p) if p.is_file() else None
    if extra:
        manifest.setdefault("notebooks", {}).update(extra)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return path


def save_figure(fig, run_dir: str | Path, name: str, caption: str | None = None) -> list[Path]:
    """Save a matplotlib figure as PNG and PDF under ``<run_dir>/figures``; ``caption`` (e.g. the
    pool it came from) is written beside it as ``<name>.txt``."""
    d = Path(run_dir) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = d / f"{name}.{ext}"
        fig.savefig(p, dpi=150 if ext == "png" else None, bbox_inches="tight")
        paths.append(p)
    if caption:
        (d / f"{name}.txt").write_text(caption + "\n")
    return paths


def save_table(df, run_dir: str | Path, name: str, latex: bool = False) -> list[Path]:
    """Save a pandas table as CSV (and LaTeX when asked) under ``<run_dir>/tables``."""
    d = Path(run_dir) / "tables"
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / f"{name}.csv"]
    df.to_csv(paths[0], index=False)
    if latex:
        paths.append(d / f"{name}.tex")
        paths[-1].write_text(df.to_latex(index=False, float_format="%.3f"))
    return paths
