#!/bin/sh
# FLARE entry point (POSIX sh; run as `sh predict.sh` in /workspace): segment every scan in the
# inputs folder into <ID>.nii.gz label maps in the outputs folder, and exit with the engine's code
# (0 all written, 1 some case failed, 2 usage error, 3 weights/output folder/device unusable).
#
# Environment (for local runs; the container needs none of it):
#   INPUT_DIR   default /workspace/inputs
#   OUTPUT_DIR  default /workspace/outputs (holds only <ID>.nii.gz files afterwards)
#   REPORT_PATH JSON run report, default /tmp/run_report.json (kept out of the outputs folder)
#   MODEL_DIR   cascade or nnU-Net model folder, default the shipped weights/ next to inference/
#   PYTHON      interpreter, default python
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
INPUT_DIR=${INPUT_DIR:-/workspace/inputs}
OUTPUT_DIR=${OUTPUT_DIR:-/workspace/outputs}
REPORT_PATH=${REPORT_PATH:-/tmp/run_report.json}
PYTHON=${PYTHON:-python}

# The engine package lies next to this script; run from any working directory.
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH

if [ -n "${MODEL_DIR:-}" ]; then
    exec "$PYTHON" -m inference -i "$INPUT_DIR" -o "$OUTPUT_DIR" --report "$REPORT_PATH" --no-progress \
        --model "$MODEL_DIR" "$@"
fi
exec "$PYTHON" -m inference -i "$INPUT_DIR" -o "$OUTPUT_DIR" --report "$REPORT_PATH" --no-progress "$@"
