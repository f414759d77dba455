#!/bin/bash
# Everything this project does on a lent GPU machine (device tool), as one command that fits the
# 10-minute limit of one call:
#   1. install the carried packages that the machine's image lacks (.whl/, see BENCHMARKS.md "GPU check")
#   2. benchmarks/gpu_check.sh: CUDA and cupy paths against the CPU, then time and whole-device GPU
#      memory per clinical-size case as a fresh process (capped at CHECK_SECONDS)
#   3. python -m training --preset gpu: the shipped weights, time-boxed to what is left of
#      SESSION_SECONDS; the driver is resumable, so a second call on the still-warm machine with
#      SKIP_CHECK=1 carries on where the first stopped
#   4. pack weights, validation metrics and training logs into $OUT/gpu_train.tar.gz
# Run from the repository root:  bash benchmarks/gpu_session.sh
# On a CPU machine, as a dry run of the same flow:
#   SKIP_INSTALL=1 PYTHON=.venv/bin/python CHECK_ARGS="--device cpu --cases 1 --slices 40" PRESET=smoke \
#   DEVICE=cpu PARALLEL=2 DA_WORKERS=0 REAL_CT=none bash benchmarks/gpu_session.sh
set -u
START=$(date +%s)
OUT_DIR="${OUT:-/tmp/gpu_session_out}"
SESSION_SECONDS="${SESSION_SECONDS:-580}"
CHECK_SECONDS="${CHECK_SECONDS:-200}"
PRESET="${PRESET:-gpu}"
DEVICE="${DEVICE:-cuda}"
PARALLEL="${PARALLEL:-4}"
DA_WORKERS="${DA_WORKERS:-4}"
TRAIN_DIR="${TRAIN_DIR:-out/gpu_train}"
REAL_CT="${REAL_CT:-.whl/real}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
elapsed() { echo $(( $(date +%s) - START )); }

if [ "${SKIP_INSTALL:-0}" != 1 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    # SimpleITK travels as an xz tarball of its unpacked wheel: the wheel's deflate is 53 MB, the
    # device tool carries 64 MiB in all
    [ -f .whl/sitk.tar.xz ] && "$PY" -c "import tarfile; tarfile.open('.whl/sitk.tar.xz').extractall('/tmp/site')"
    export PATH="/tmp/site/bin:$PATH"
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "[$(elapsed) s] packages ready"

if [ "${SKIP_CHECK:-0}" != 1 ]; then
    PYTHON="$PY" timeout -k 10 "$CHECK_SECONDS" sh benchmarks/gpu_check.sh ${CHECK_ARGS:-} \
        > "$OUT_DIR/gpu_check.log" 2>&1
    rc=$?; echo "[$(elapsed) s] gpu_check exit $rc"
    tail -25 "$OUT_DIR/gpu_check.log"
fi

LEFT=$(( SESSION_SECONDS - $(elapsed) - 20 ))
if [ "$LEFT" -gt 30 ]; then
    echo "[$(elapsed) s] training preset $PRESET for at most $LEFT s"
    timeout -k 10 "$LEFT" "$PY" -m training --preset "$PRESET" --make-data --data "$TRAIN_DIR/data" \
        --work "$TRAIN_DIR/work" --weights "$TRAIN_DIR/weights" --real-ct "$REAL_CT" --device "$DEVICE" \
        --parallel "$PARALLEL" --da-workers "$DA_WORKERS" --processes 8 --threads 2 --ablation ${TRAIN_ARGS:-} \
        > "$OUT_DIR/training.log" 2>&1
    rc=$?; echo "[$(elapsed) s] training exit $rc (124: time box reached; rerun with SKIP_CHECK=1 to resume)"
    grep -E "finished in|running|error|Error" "$OUT_DIR/training.log" | tail -30
fi

# what comes back: weights, metrics, logs (the nnU-Net training logs and progress plots included)
(cd "$TRAIN_DIR" && { find weights -type f 2>/dev/null; find work/evaluation work/run_report.json work/state \
    work/nnunet/logs work/nnunet/nnUNet_results \( -name '*.json' -o -name '*.log' -o -name 'training_log*.txt' \
    -o -name 'progress.png' \) 2>/dev/null; } | tar -czf "$OUT_DIR/gpu_train.tar.gz" -T -)
ls -la "$OUT_DIR"
echo "[$(elapsed) s] done"
