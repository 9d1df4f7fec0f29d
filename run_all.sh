#!/usr/bin/env bash
# Execute every notebook in order with papermill, headless.
#
#   bash run_all.sh [--profile NAME] [--run-id ID] [--only PATTERN] [--overrides "a.b=1,c.d=2"]
#
# Without --profile: optscale.config.DEFAULT_PROFILE (cpu-1.5b, llama.cpp); --profile cpu runs the
# 0.5B weak-verifier pools. On a fresh clone it first installs what is missing (scripts/setup.sh: the
# package, then llama.cpp for cpu-1.5b; OPTSCALE_NO_SETUP=1 refuses instead).
# Writes outputs/<run-id>/ with the executed notebooks (notebooks/), figures/, tables/, the
# papermill logs (logs/), manifest.json (config, git hash, package versions, seeds, pool
# checksums, CPU and dtype) and the results page index.html (python -m optscale.report).
# Stops at the first failing notebook, names it, and exits non-zero.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROFILE=""
RUN_ID=""
ONLY=""
OVERRIDES=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile|--run-id|--only|--overrides)
      if [[ $# -lt 2 || "$2" == --* ]]; then
        echo "run_all.sh: $1 needs a value (see --help)" >&2
        exit 2
      fi
      case "$1" in
        --profile) PROFILE="$2" ;; --run-id) RUN_ID="$2" ;; --only) ONLY="$2" ;; --overrides) OVERRIDES="$2" ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
# The run id and the profile name a folder under outputs/ and a file under profiles/: plain names
# only (letters, digits, '.', '_', '-'; no '/', nothing starting with '.'), so nothing is written
# outside outputs/.
for pair in "--run-id:$RUN_ID" "--profile:$PROFILE"; do
  option="${pair%%:*}" value="${pair#*:}"
  if [[ -n "$value" && ! "$value" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    echo "run_all.sh: $option '$value': not a plain name (letters, digits, '.', '_', '-'; no '/', not starting with '.')" >&2
    exit 2
  fi
done
# --only PATTERN must match a notebook: a typo would otherwise run nothing and exit 0.
if [[ -n "$ONLY" ]]; then
  matched="" all=""
  for nb in "$ROOT"/notebooks/[0-9][0-9]_*.ipynb; do
    [[ -f "$nb" ]] || continue
    name="$(basename "$nb" .ipynb)"
    all+=" $name"
    if [[ "$name" == *$ONLY* ]]; then matched=1; fi
  done
  if [[ -z "$matched" ]]; then
    echo "run_all.sh: --only '$ONLY' matches no notebook; notebooks:${all:- none}" >&2
    exit 2
  fi
fi

# A fresh clone sets itself up: scripts/setup.sh installs the package when it is missing (and, below,
# the profile's sampler library), one line per step saying what it does and how long it usually takes.
SETUP="$ROOT/scripts/setup.sh"
if [[ -f "$SETUP" ]]; then bash "$SETUP" package || exit 2; fi

if [[ -z "$PROFILE" ]]; then
  PROFILE="$(python -c 'from optscale.config import DEFAULT_PROFILE; print(DEFAULT_PROFILE)')"
fi
if [[ ! -f "$ROOT/profiles/$PROFILE.yaml" ]]; then
  echo "run_all.sh: no profile '$PROFILE'; available: $(cd "$ROOT/profiles" && ls *.yaml | sed 's/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
# Validate the profile and overrides before running anything (unknown keys, bad types and values
# raise a ConfigError, printed as one line), and, for a whole run, make sure the profile's sampling
# backend is installed: the live notebooks (00, 07-09) would otherwise fail after the others ran.
# llama.cpp is installed here when missing (scripts/setup.sh llama-cpp); vLLM needs a GPU machine.
# (With --only, a notebook that needs the sampler says so itself.)
check_config() {
  python -c "
import sys
from optscale.config import ConfigError, load_config
from optscale.sampling import missing_backend_library
try:
    cfg = load_config(sys.argv[1], sys.argv[2])
except ConfigError as e:
    sys.exit(f'run_all.sh: bad configuration: {e}')
missing = missing_backend_library(cfg.sampling.backend) if not sys.argv[3] else None
if missing and cfg.sampling.backend == 'llama-cpp' and sys.argv[4] == 'installable':
    print(cfg.sampling.backend)  # run_all.sh installs it
elif missing:
    sys.exit(f'run_all.sh: profile {sys.argv[1]!r}: {missing} (or run another profile: --profile cpu)')
" "$PROFILE" "$OVERRIDES" "$ONLY" "$1"
}
if [[ -f "$SETUP" ]]; then
  backend_to_install="$(check_config installable)" || exit 2
  if [[ -n "$backend_to_install" ]]; then
    bash "$SETUP" "$backend_to_install" || exit 2
    check_config checked >/dev/null || exit 2
  fi
else
  check_config checked >/dev/null || exit 2
fi

RUN_ID="${RUN_ID:-${PROFILE}-$(date -u +%Y%m%d-%H%M%S)}"
RUN_DIR="$ROOT/outputs/$RUN_ID"
mkdir -p "$RUN_DIR/notebooks" "$RUN_DIR/logs"
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
echo "run $RUN_ID (profile $PROFILE) -> $RUN_DIR"

shopt -s nullglob
notebooks=("$ROOT"/notebooks/[0-9][0-9]_*.ipynb)
[[ ${#notebooks[@]} -gt 0 ]] || { echo "run_all.sh: no notebooks found" >&2; exit 1; }
for nb in "${notebooks[@]}"; do
  name="$(basename "$nb" .ipynb)"
  if [[ -n "$ONLY" && "$name" != *$ONLY* ]]; then continue; fi
  start=$(date +%s)
  echo "== $name"
  if ! papermill "$nb" "$RUN_DIR/notebooks/$name.ipynb" \
        -r profile "$PROFILE" -r run_dir "$RUN_DIR" -r overrides "$OVERRIDES" \
        --cwd "$ROOT" --log-output --no-progress-bar > "$RUN_DIR/logs/$name.log" 2>&1; then
    echo "run_all.sh: notebook $name FAILED; executed copy: $RUN_DIR/notebooks/$name.ipynb, log: $RUN_DIR/logs/$name.log" >&2
    tail -n 30 "$RUN_DIR/logs/$name.log" >&2
    exit 1
  fi
  echo "   ok in $(( $(date +%s) - start )) s"
done
python - "$RUN_DIR" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
m = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {}
figs = sorted(p.name for p in (run / "figures").glob("*.png")) if (run / "figures").exists() else []
tabs = sorted(p.name for p in (run / "tables").glob("*.csv")) if (run / "tables").exists() else []
m["outputs"] = {"figures": figs, "tables": tabs}
(run / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True, default=str))
print(f"done: {len(figs)} figures, {len(tabs)} tables, manifest {run / 'manifest.json'}")
PY
# The results page: every executed notebook rendered to HTML (html/), each figure with its caption,
# each table and the manifest, linked from outputs/<run>/index.html with relative links.
# `optscale report outputs/<run>` (python -m optscale.report) writes it again.
python -m optscale.report "$RUN_DIR" || {
  echo "run_all.sh: writing the results page failed (the notebooks ran); retry: python -m optscale.report $RUN_DIR" >&2
  exit 1
}
