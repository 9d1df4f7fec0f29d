import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def data_dir():
    from optscale.data.benchmarks import resolve_data_dir

    try:
        return resolve_data_dir()
    except Exception as e:  # the shared release is part of the project's checkout layout
        pytest.fail(f"the OptScale data release is needed for these tests: {e}")


@pytest.fixture(scope="session")
def cpu_model():
    """The real embedded CPU model (slow: loads once per session)."""
    from optscale.sampling.hf_models import load_causal_lm

    return load_causal_lm("qwen2.5-coder-0.5b-instruct-q4", "auto", "cpu")  # bf16 only where the CPU has it natively
