#!/usr/bin/env bash
# Build (once) and install llama-cpp-python with its [server] extras.
#
# Why a script: pip builds llama-cpp-python from source (~10+ minutes on 2 cores),
# and the default native build (-march=native, AVX-512/AMX kernels) segfaults on the
# first generated token on the CI/dev machines. We build a portable wheel once,
# cache it, and reuse it on every later install (CI can cache $WHEEL_DIR).
#
# Usage:  scripts/install_llama_cpp.sh            # build if needed, then install
#         WHEEL_DIR=/some/cache scripts/install_llama_cpp.sh
#         LLAMA_CPP_VERSION=0.3.16 scripts/install_llama_cpp.sh
# At run time set OMP_WAIT_POLICY=PASSIVE (the tests and samplers do this for the
# servers they start) so idle OpenMP threads do not spin on the shared cores.
set -euo pipefail

WHEEL_DIR="${WHEEL_DIR:-$HOME/.cache/optscale/wheels}"
SPEC="llama-cpp-python${LLAMA_CPP_VERSION:+==$LLAMA_CPP_VERSION}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$WHEEL_DIR"

shopt -s nullglob
wheels=("$WHEEL_DIR"/llama_cpp_python-${LLAMA_CPP_VERSION:-*}-*.whl)
shopt -u nullglob

if [ ${#wheels[@]} -eq 0 ]; then
    echo "[install_llama_cpp] no cached wheel in $WHEEL_DIR; building $SPEC from source (slow)" >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        nice -n 19 "$PYTHON" -m pip wheel --no-deps -w "$WHEEL_DIR" "$SPEC"
    shopt -s nullglob
    wheels=("$WHEEL_DIR"/llama_cpp_python-${LLAMA_CPP_VERSION:-*}-*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "[install_llama_cpp] build finished but no wheel found in $WHEEL_DIR" >&2
        exit 1
    fi
else
    echo "[install_llama_cpp] reusing cached wheel ${wheels[-1]}" >&2
fi

wheel="${wheels[-1]}"
# Install the wheel plus the [server] extras' dependencies (fastapi, uvicorn, ...)
# from the index; the wheel itself comes from the cache, never rebuilt.
"$PYTHON" -m pip install "${wheel}[server]"
OMP_WAIT_POLICY=PASSIVE "$PYTHON" -c "import llama_cpp, llama_cpp.server; print('llama_cpp', llama_cpp.__version__, 'OK')"
