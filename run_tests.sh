#!/usr/bin/env bash
# The test command: installs what the test suite exercises when it is missing (the package with its
# test extras, llama.cpp for the default profile's sampler and server tests, Debian's chromium for the
# results-page browser test; each step says what it does and how long it usually takes, and does
# nothing when already installed), then runs pytest. Arguments go to pytest.
#
#   bash run_tests.sh                 # the whole suite (what CI runs)
#   bash run_tests.sh tests/test_bounds.py -k coverage
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
bash scripts/setup.sh tests
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
# pytest exits 5 when it collects no test: a failure here, not a pass.
set +e
"${PYTHON:-python3}" -m pytest -q "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then echo "run_tests.sh: no tests were collected" >&2; exit 1; fi
exit $rc
