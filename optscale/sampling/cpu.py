"""What this machine's CPU computes natively, and how many threads the CPU samplers use.

The speed of a transformers model on CPU depends on the CPU's instruction set more than on its
clock: torch computes a bfloat16 matmul with native instructions only where the CPU has
AVX512_BF16 or AMX (Intel Sapphire Rapids and later, AMD Zen 4 and later); elsewhere (AVX2-only
CPUs, most laptops) it emulates bfloat16 and runs ~40x slower than float32 (issue 30: 0.8 vs 33
GFLOP/s on an AVX2 EPYC). :func:`native_bf16` decides from the CPU flags, confirmed by a short
matmul probe; :func:`optscale.sampling.hf_models.resolve_dtype` turns ``sampling.dtype: auto``
into a dtype with it. Everything here is computed once per process.
"""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["CPU_FLAGS", "BF16_FLAGS", "parse_cpuinfo", "cpu_model_name", "cpu_flags", "matmul_gflops",
           "bf16_matmul_probe", "native_bf16", "default_threads", "cpu_summary"]

# The flags that decide CPU speed for this project (recorded in the run manifest).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# Any of these means the CPU has bfloat16 arithmetic in hardware.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The probe's matmul, (M x K) @ (K x N): 8.4 MFLOP, ~0.2 ms per call with native bf16 and ~10 ms
# emulated, so the whole probe stays under 50 ms even where the flags promise more than torch delivers.
PROBE_SHAPE = (32, 256, 512)
PROBE_BUDGET_S = 0.020  # no new timed pair (bf16, fp32) after this long (at least one pair, at most 5)
# bf16 counts as native when the probe's bf16 matmul reaches this fraction of float32's rate: native bf16 runs
# ~2x float32 (AMX), emulation ~1/40 (AVX2 EPYC), so a load that slows one dtype's timings more than the
# other's (a process beside the probe) cannot flip the choice, and two processes on one machine agree
NATIVE_BF16_MIN_RATIO = 0.5


def _cpuinfo(path: str | Path = "/proc/cpuinfo") -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:  # not Linux: no flags, so auto chooses float32
        return ""


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """(model name, flags) of the first CPU in ``/proc/cpuinfo`` text (None / empty when absent)."""
    name, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and name is None:
            name = value.strip()
        elif key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
        if name is not None and flags is not None:
            break
    return name, flags or frozenset()


@lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` "model name", else :func:`platform.processor`)."""
    return parse_cpuinfo(_cpuinfo())[0] or platform.processor() or platform.machine() or "unknown"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Every flag of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    return parse_cpuinfo(_cpuinfo())[1]


def matmul_gflops(dtype: Any, shape: tuple[int, int, int] = PROBE_SHAPE, budget_s: float = PROBE_BUDGET_S,
                  max_reps: int = 5) -> float:
    """GFLOP/s of one torch ``(M x K) @ (K x N)`` matmul in ``dtype`` on CPU, with the threads torch
    has now: the best of up to ``max_reps`` timed calls (after one untimed), stopping once
    ``budget_s`` has passed."""
    import torch

    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    with torch.inference_mode():
        a @ b
        best, start = float("inf"), time.perf_counter()
        for _ in range(max_reps):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
            if time.perf_counter() - start > budget_s:
                break
    return 2 * m * k * n / max(best, 1e-9) / 1e9


@lru_cache(maxsize=1)
def bf16_matmul_probe(shape: tuple[int, int, int] = PROBE_SHAPE, budget_s: float = PROBE_BUDGET_S,
                      max_reps: int = 5) -> dict[str, float]:
    """bfloat16 and float32 GFLOP/s of the probe matmul on one thread (the best of up to ``max_reps`` calls each,
    the two dtypes alternating so that a load on the machine slows both alike; one untimed call each
    first; no new pair once ``budget_s`` has passed), and the probe's own seconds."""
    import torch

    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    pairs = {dt: (torch.randn(m, k, generator=gen).to(dt), torch.randn(k, n, generator=gen).to(dt))
             for dt in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(pairs, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # which kernel runs does not depend on threads; a busy core stalls a team of them
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for a, b in pairs.values():
                a @ b
            for _ in range(max_reps):
                for dt, (a, b) in pairs.items():
                    t = time.perf_counter()
                    a @ b
                    best[dt] = min(best[dt], time.perf_counter() - t)
                if time.perf_counter() - start > budget_s:
                    break
    finally:
        torch.set_num_threads(threads)
    rate = {dt: 2 * m * k * n / max(sec, 1e-9) / 1e9 for dt, sec in best.items()}
    return {"bf16_gflops": round(rate[torch.bfloat16], 2), "fp32_gflops": round(rate[torch.float32], 2),
            "seconds": round(time.perf_counter() - start, 4)}


@lru_cache(maxsize=1)
def native_bf16() -> tuple[bool, str]:
    """(whether torch computes bfloat16 natively on this CPU, why). True only where the CPU has a
    bf16 flag (:data:`BF16_FLAGS`) *and* the probe's bf16 matmul reaches :data:`NATIVE_BF16_MIN_RATIO` of
    float32's rate (a margin wide on both sides: native ~2x, emulated ~1/40)."""
    flags = cpu_flags()
    have = [f for f in BF16_FLAGS if f in flags]
    if not have:
        return False, f"no {' / '.join(BF16_FLAGS)} flag in /proc/cpuinfo"
    p = bf16_matmul_probe()
    if p["bf16_gflops"] < NATIVE_BF16_MIN_RATIO * p["fp32_gflops"]:
        return False, (f"CPU has {', '.join(have)} but the probe's bf16 matmul ran at {p['bf16_gflops']} GFLOP/s "
                       f"< {NATIVE_BF16_MIN_RATIO} x fp32 {p['fp32_gflops']}")
    return True, (f"CPU has {', '.join(have)}; probe bf16 {p['bf16_gflops']} GFLOP/s >= {NATIVE_BF16_MIN_RATIO} x fp32 "
                  f"{p['fp32_gflops']}")


def default_threads() -> int:
    """Threads for torch and llama.cpp on CPU: ``$OPTSCALE_TORCH_THREADS``, else every core."""
    return int(os.environ.get("OPTSCALE_TORCH_THREADS", os.cpu_count() or 1))


def cpu_summary() -> dict[str, Any]:
    """The CPU's model name, the :data:`CPU_FLAGS` it has (True / False each), and its core count."""
    flags = cpu_flags()
    return {"model_name": cpu_model_name(), "flags": {f: f in flags for f in CPU_FLAGS},
            "cores": os.cpu_count(), "machine": platform.machine()}
