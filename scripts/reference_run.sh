#!/usr/bin/env bash
# Regenerate outputs/reference/, the run committed for readers: the default profile's whole workbook
# (bash run_all.sh) from a fresh clone of this checkout's HEAD, then its results page, figures (PNG and
# caption), tables (CSV / Markdown), executed notebooks, logs and manifest (with the git hash it came
# from) copied into outputs/reference/ (PDFs, caches and the predictor's weights are left out), with
# the run's console transcript (set-up lines and timings) as outputs/reference/transcript.txt.
#
#   bash scripts/reference_run.sh                      # ~60 min on 2 cores (AMD EPYC, AVX2)
#   bash scripts/reference_run.sh --fresh-env          # as on a machine with nothing installed: a new
#                                                      # virtualenv and an empty HOME (no pip, model or
#                                                      # llama.cpp wheel cache), so run_all.sh installs
#                                                      # the package and builds llama.cpp itself (+15-30 min)
#   bash scripts/reference_run.sh -- --overrides "..." # extra run_all.sh arguments after --
#
# Without --fresh-env the clone installs itself editable into the current Python (run_all.sh's set-up)
# and the editable install is pointed back at this checkout at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FRESH=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --fresh-env) FRESH=1; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done
# The data directory, resolved as optscale.data.benchmarks.resolve_data_dir does, without importing the
# package (which a fresh environment does not have yet).
DATA_DIR="${OPTSCALE_DATA_DIR:-$ROOT/../shared/data/optscale}"
[[ -d "$DATA_DIR" ]] || { echo "reference_run.sh: no data directory $DATA_DIR (set OPTSCALE_DATA_DIR)" >&2; exit 2; }
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
WORK="$(mktemp -d)"
CLONE="$WORK/optscale"
DEST="$ROOT/outputs/reference"
PYTHON="${PYTHON:-python3}"

if [[ $FRESH == 1 ]]; then
  python3 -m venv "$WORK/venv"
  export HOME="$WORK/home" PATH="$WORK/venv/bin:$PATH" PYTHON="$WORK/venv/bin/python"
  mkdir -p "$HOME"
  unset PIP_CACHE_DIR XDG_CACHE_HOME
else
  restore() { "$PYTHON" -m pip install -q --no-deps -e "$ROOT" >/dev/null 2>&1 || true; }
  trap restore EXIT
fi

git clone -q "$ROOT" "$CLONE"
LOG="$WORK/transcript.txt"
if ! {
  echo "[reference] fresh clone of $(git -C "$CLONE" rev-parse --short HEAD) in $CLONE (data: $DATA_DIR; fresh environment: $([[ $FRESH == 1 ]] && echo yes || echo no))"
  echo "[reference] CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; started $(date -u +%FT%TZ)"
  t0=$(date +%s)
  (cd "$CLONE" && OPTSCALE_DATA_DIR="$DATA_DIR" bash run_all.sh --run-id reference "$@")
  echo "[reference] bash run_all.sh took $(( $(date +%s) - t0 )) s in all (set-up included)"
} 2>&1 | tee "$LOG"; then
  echo "reference_run.sh: the run failed; its clone and transcript are kept in $WORK" >&2
  exit 1
fi

RUN="$CLONE/outputs/reference"
rm -rf "$DEST"
mkdir -p "$DEST/figures" "$DEST/tables"
cp "$RUN/manifest.json" "$LOG" "$DEST/"
cp -r "$RUN/notebooks" "$RUN/logs" "$DEST/"
cp "$RUN"/figures/*.png "$RUN"/figures/*.txt "$DEST/figures/"
cp "$RUN"/tables/*.csv "$DEST/tables/"
cp "$RUN"/tables/*.md "$DEST/tables/" 2>/dev/null || true
"$PYTHON" -m optscale.report "$DEST"
rm -rf "$WORK"
echo "[reference] wrote $DEST ($(du -sh "$DEST" | cut -f1))" >&2
