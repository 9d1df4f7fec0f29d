"""Issue 30, item 5: ``sampling.dtype: auto`` computes in bfloat16 only where the CPU does it natively.

The rule (flags, then a matmul probe, cached per process) is tested with monkeypatched flags and
probe; the probe itself is run for real, once with oneDNN limited to AVX2 so that bfloat16 is
emulated as on an AVX2-only CPU. The manifest must name the CPU, its flags and the dtype chosen,
and a pool sampled in one dtype must not be resumed in another."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from optscale.config import SamplingConfig, load_config
from optscale.data.benchmarks import Problem
from optscale.data.generation import generate_pool
from optscale.data.pools import PoolError, read_pool
from optscale.provenance import write_manifest
from optscale.sampling import cpu
from optscale.sampling.fake import FAKE_GOLD, FakeSampler
from optscale.sampling.hf_models import DTYPES, dtype_choice, resolve_dtype, resolve_torch_dtype

AVX2_EPYC = textwrap.dedent("""\
    processor\t: 0
    vendor_id\t: AuthenticAMD
    model name\t: AMD EPYC 7B12
    flags\t\t: fpu sse sse2 avx avx2 fma bmi2
    processor\t: 1
    model name\t: AMD EPYC 7B12
    flags\t\t: fpu sse sse2 avx avx2 fma bmi2 avx512_bf16
    """)


@pytest.fixture
def cpu_state(monkeypatch):
    """Set the CPU flags and the probe's result; counts probe calls; clears the per-process cache."""
    calls = []

    def set_cpu(flags, bf16=90.0, fp32=40.0):
        monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))

        def probe():
            calls.append(1)
            return {"bf16_gflops": bf16, "fp32_gflops": fp32, "seconds": 0.01}

        monkeypatch.setattr(cpu, "bf16_matmul_probe", probe)
        cpu.native_bf16.cache_clear()
        return calls

    yield set_cpu
    cpu.native_bf16.cache_clear()


def test_parse_cpuinfo_reads_the_first_cpu():
    name, flags = cpu.parse_cpuinfo(AVX2_EPYC)
    assert name == "AMD EPYC 7B12"
    assert {"avx2", "fma"} <= flags and "avx512_bf16" not in flags  # the second CPU's line is not read
    assert cpu.parse_cpuinfo("") == (None, frozenset())


def test_auto_is_float32_without_a_bf16_flag_and_does_not_probe(cpu_state):
    calls = cpu_state({"avx2", "avx512f"})
    assert resolve_dtype("auto") == "float32"
    assert calls == []  # no flag: no probe
    choice = dtype_choice("auto")
    assert choice["chosen"] == "float32" and "no avx512_bf16 / amx_bf16 flag" in choice["reason"]
    assert "probe" not in choice


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_is_bfloat16_with_a_bf16_flag_confirmed_by_the_probe(cpu_state, flag):
    calls = cpu_state({"avx2", flag}, bf16=90.0, fp32=40.0)
    assert resolve_dtype("auto") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    assert len(calls) == 1  # cached per process: the second resolution does not probe again
    assert dtype_choice("auto")["probe"]["bf16_gflops"] == 90.0


def test_auto_is_float32_when_the_probe_contradicts_the_flags(cpu_state):
    cpu_state({"avx512_bf16"}, bf16=0.8, fp32=33.0)
    assert resolve_dtype("auto") == "float32"
    assert "0.8 GFLOP/s < 0.5 x fp32 33.0" in dtype_choice("auto")["reason"]


def test_gpu_keeps_bfloat16_and_explicit_dtypes_pass_through(cpu_state):
    calls = cpu_state(set())
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "bfloat16"
    for name in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(name) == name
    assert calls == []
    import torch

    assert resolve_torch_dtype("auto") is torch.float32 and resolve_torch_dtype("auto", "cuda") is torch.bfloat16
    message = r"sampling\.dtype must be one of auto, float32, bfloat16, float16; got 'bf16'"
    with pytest.raises(ValueError, match=message):
        resolve_dtype("bf16")


def test_auto_is_the_default_dtype():
    assert SamplingConfig().dtype == "auto" and "auto" in DTYPES
    assert load_config("cpu").sampling.dtype == "auto"


def test_prm_and_judge_resolve_through_the_same_rule(cpu_state, monkeypatch):
    from optscale.scoring import scorers
    from optscale.scoring.prm import PRMScorer

    cpu_state({"avx2"})

    class Tok:
        pad_token_id, eos_token_id = 0, 1

        def encode(self, text, add_special_tokens=False):
            return [7]

    class Model:
        def to(self, device):
            return self

        def eval(self):
            return self

    cfg = load_config("cpu")
    assert PRMScorer(cfg.scoring, model=Model(), tokenizer=Tok(), device="cpu").dtype == "float32"
    assert PRMScorer(cfg.scoring, model=Model(), tokenizer=Tok(), device="cuda").dtype == "bfloat16"
    seen = {}
    monkeypatch.setattr(scorers, "get_scorer", lambda name, config, **kw: seen.update(kw) or name)
    scorers.build_judge(load_config("cpu-1.5b", {"sampling.dtype": "float16"}), sampler=None, name="answer-judge")
    assert seen == {"dtype": "float16"}  # the judge loads its own model in the profile's dtype


def _run_probe(env):
    code = "import json; from optscale.sampling import cpu; print(json.dumps(cpu.bf16_matmul_probe()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN ISA limits are x86 only")
def test_the_probe_is_short_and_sees_emulated_bf16():
    # ONEDNN_MAX_CPU_ISA=AVX2 makes torch emulate bf16 as on an AVX2-only CPU (0.5 vs 32 GFLOP/s here)
    slow = _run_probe({"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"})
    assert slow["bf16_gflops"] < slow["fp32_gflops"] / 4, slow  # far below NATIVE_BF16_MIN_RATIO
    if {"avx512_bf16", "amx_bf16"} & cpu.cpu_flags():
        native = _run_probe({"OMP_NUM_THREADS": "1"})
        assert native["bf16_gflops"] >= cpu.NATIVE_BF16_MIN_RATIO * native["fp32_gflops"], native


def test_the_probe_stops_timing_once_its_budget_has_passed(monkeypatch):
    # a clock that advances 10 ms per reading: the budget of 20 ms passes during the first timed pair,
    # so exactly one pair is timed however slow the machine (no wall-clock assertion)
    from types import SimpleNamespace

    ticks = iter(range(10**6))
    monkeypatch.setattr(cpu, "time", SimpleNamespace(perf_counter=lambda: next(ticks) * 0.010))
    cpu.bf16_matmul_probe.cache_clear()
    try:
        p = cpu.bf16_matmul_probe(budget_s=0.020)
    finally:
        cpu.bf16_matmul_probe.cache_clear()
    # readings: start, (t, end) x 2 dtypes, budget check, final -> 7 readings: 0.06 s
    assert p["seconds"] == pytest.approx(0.06)


def test_manifest_names_the_cpu_flags_dtype_and_threads(tmp_path, cpu_state):
    cpu_state({"avx2", "avx512f"})
    m = json.loads(write_manifest(load_config("cpu-1.5b"), tmp_path).read_text())["compute"]
    assert m["cpu"]["model_name"] == cpu.cpu_model_name()
    assert m["cpu"]["flags"] == {"avx2": True, "avx512f": True, "avx512_bf16": False, "amx_bf16": False,
                                 "amx_tile": False}
    assert m["transformers_dtype"]["configured"] == "auto" and m["transformers_dtype"]["chosen"] == "float32"
    assert m["torch_threads"] == cpu.default_threads() >= 1
    assert m["llama_cpp"]["n_threads"] == cpu.default_threads()  # the cpu-1.5b sampler is llama.cpp
    assert "system_info" in m["llama_cpp"]
    m = json.loads(write_manifest(load_config("cpu", {"sampling.dtype": "bfloat16"}), tmp_path / "b").read_text())
    assert m["compute"]["transformers_dtype"] == {"configured": "bfloat16", "device": "cpu", "chosen": "bfloat16",
                                                  "reason": "set in the profile"}
    assert "llama_cpp" not in m["compute"]


# -- a pool keeps the dtype it was sampled in ---------------------------------------------------
def _pool_cfg(root, **extra):
    return load_config("cpu", {"pools.pool_dir": str(root), "pools.pool_name": "fake", "sampling.n_samples.gsm8k": 2,
                               **extra})


def _problems(n):
    return [Problem("gsm8k", f"q{i}", f"What is {i}+1?", FAKE_GOLD, i) for i in range(n)]


def _generate(cfg, n):
    return generate_pool(cfg, "gsm8k", _problems(n), FakeSampler(cfg.sampling), progress=False)


def test_a_pool_records_the_resolved_dtype_and_resumes_only_in_it(tmp_path, cpu_state):
    cpu_state({"avx512_bf16"}, bf16=90.0, fp32=40.0)  # a native-bf16 CPU
    old = _generate(_pool_cfg(tmp_path, **{"sampling.dtype": "bfloat16"}), 2)  # an hf-cpu pool pinned to bf16
    _generate(_pool_cfg(tmp_path), 3)  # auto is bf16 here: the same setting, resumed
    assert read_pool(old).meta["sampling"]["dtype"] == "bfloat16" and len(read_pool(old).question_ids) == 3
    cpu_state({"avx2"})  # the same pool on an AVX2-only CPU: auto is float32, a different setting
    with pytest.raises(PoolError, match=r"sampling\.dtype: 'bfloat16' -> 'float32'"):
        _generate(_pool_cfg(tmp_path), 4)
    fresh = _generate(_pool_cfg(tmp_path / "new"), 1)
    assert read_pool(fresh).meta["sampling"]["dtype"] == "float32"  # never "auto"


def test_llama_cpp_pools_do_not_depend_on_the_dtype(tmp_path, cpu_state):
    cpu_state({"avx512_bf16"})
    cfg = _pool_cfg(tmp_path, **{"sampling.backend": "llama-cpp", "sampling.dtype": "bfloat16"})
    _generate(cfg, 2)
    cpu_state({"avx2"})
    _generate(_pool_cfg(tmp_path, **{"sampling.backend": "llama-cpp"}), 3)  # auto -> float32: not a sample setting
    assert len(read_pool(tmp_path / "fake" / "gsm8k.parquet").question_ids) == 3
