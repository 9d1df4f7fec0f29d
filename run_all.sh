#!/usr/bin/env bash
# Execute every notebook in order with papermill, headless.
#
#   bash run_all.sh [--profile NAME] [--run-id ID] [--only PATTERN] [--overrides "a.b=1,c.d=2"]
#
# Without --profile: optscale.config.DEFAULT_PROFILE (cpu-1.5b, which needs llama.cpp:
# scripts/install_llama_cpp.sh); --profile cpu runs the 0.5B weak-verifier pools.
# Writes outputs/<run-id>/ with the executed notebooks (notebooks/), figures/, tables/, the
# papermill logs (logs/) and manifest.json (config, git hash, package versions, seeds, pool
# checksums). Stops at the first failing notebook, names it, and exits non-zero.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROFILE=""
RUN_ID=""
ONLY=""
OVERRIDES=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --run-id) RUN_ID="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --overrides) OVERRIDES="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ -z "$PROFILE" ]]; then
  PROFILE="$(python -c 'from optscale.config import DEFAULT_PROFILE; print(DEFAULT_PROFILE)')"
fi
if [[ ! -f "$ROOT/profiles/$PROFILE.yaml" ]]; then
  echo "run_all.sh: no profile '$PROFILE'; available: $(cd "$ROOT/profiles" && ls *.yaml | sed 's/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
# Validate the profile and overrides before running anything (unknown keys, bad types and values
# raise a ConfigError, printed as one line), and, for a whole run, check that the profile's sampling
# backend is installed: the live notebooks (00, 07-09) would otherwise fail after the others ran.
# (With --only, a notebook that needs the sampler says so itself.)
python -c "
import sys
from optscale.config import ConfigError, load_config
from optscale.sampling import missing_backend_library
try:
    cfg = load_config(sys.argv[1], sys.argv[2])
except ConfigError as e:
    sys.exit(f'run_all.sh: bad configuration: {e}')
missing = missing_backend_library(cfg.sampling.backend) if not sys.argv[3] else None
if missing:
    sys.exit(f'run_all.sh: profile {sys.argv[1]!r}: {missing} (or run another profile: --profile cpu)')
" "$PROFILE" "$OVERRIDES" "$ONLY" || exit 2

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
        -p profile "$PROFILE" -p run_dir "$RUN_DIR" -p overrides "$OVERRIDES" \
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
