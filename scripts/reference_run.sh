#!/usr/bin/env bash
# Regenerate outputs/reference/, the run committed for readers: the default profile's whole workbook
# (bash run_all.sh) from a fresh clone of this checkout's HEAD, then its results page, figures (PNG and
# caption), tables (CSV / Markdown), executed notebooks, logs and manifest (with the git hash it came
# from) copied into outputs/reference/ (PDFs, caches and the predictor's weights are left out).
#
#   bash scripts/reference_run.sh                      # ~40 min on 2 cores
#   bash scripts/reference_run.sh --overrides "..."    # extra run_all.sh arguments
#
# The clone installs itself editable (run_all.sh's set-up); the editable install is pointed back at
# this checkout at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DATA_DIR="$("$PYTHON" -c 'from optscale.data.benchmarks import resolve_data_dir; print(resolve_data_dir())')"
WORK="$(mktemp -d)"
CLONE="$WORK/optscale"
restore() { "$PYTHON" -m pip install -q --no-deps -e "$ROOT" >/dev/null 2>&1 || true; }
trap restore EXIT

git clone -q "$ROOT" "$CLONE"
echo "[reference] fresh clone of $(git -C "$CLONE" rev-parse --short HEAD) in $CLONE (data: $DATA_DIR)" >&2
(cd "$CLONE" && OPTSCALE_DATA_DIR="$DATA_DIR" bash run_all.sh --run-id reference "$@")

RUN="$CLONE/outputs/reference"
DEST="$ROOT/outputs/reference"
rm -rf "$DEST"
mkdir -p "$DEST/figures" "$DEST/tables"
cp "$RUN/manifest.json" "$DEST/"
cp -r "$RUN/notebooks" "$RUN/logs" "$DEST/"
cp "$RUN"/figures/*.png "$RUN"/figures/*.txt "$DEST/figures/"
cp "$RUN"/tables/*.csv "$DEST/tables/"
cp "$RUN"/tables/*.md "$DEST/tables/" 2>/dev/null || true
"$PYTHON" -m optscale.report "$DEST"
rm -rf "$WORK"
echo "[reference] wrote $DEST ($(du -sh "$DEST" | cut -f1))" >&2
