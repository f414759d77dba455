#!/bin/bash
# Everything this project checks on one GPU machine without network, as one command of at most
# 8 minutes (SESSION_SECONDS), with the packages the machine lacks carried in .whl/
# (benchmarks/gpu_wheels.sh prepares it):
#   1. install the carried packages
#   2. the device-memory ledger's prediction for the paper-size cascade on 300- and 1000-slice
#      cases (python -m benchmarks.device_memory: CPU only, the same synthetic cases as step 3)
#   3. benchmarks/gpu_check.sh: GPU-only tests (CUDA, CuPy), then a fresh `python -m inference`
#      process per case with whole-device memory (NVML) and time, and the GPU profile
#   4. side by side: predicted vs measured whole-device peak, torch's allocated peak, seconds per case
#   5. a short run of the `paper` training preset (steps 1-4, a few iterations per network at the
#      paper's patch sizes, on small synthetic data), time-boxed to what is left; resumable with
#      SKIP_CHECK=1 on a still-warm machine
# Run from the repository root:  bash benchmarks/gpu_session.sh
# Dry run of the flow on a CPU machine:
#   SKIP_INSTALL=1 PYTHON=.venv/bin/python CHECK_ARGS="--device cpu --cases 1 --slices 40 --long-slices 60" \
#   LEDGER_SLICES="40 60" DEVICE=cpu PAPER_ARGS="--set organ_first.patch_size=[16,32,32] \
#   --set organ.patch_size=[16,32,32] --set tumor.patch_size=[8,16,16]" bash benchmarks/gpu_session.sh
set -u
START=$(date +%s)
OUT_DIR="${OUT:-/tmp/gpu_session_out}"
SESSION_SECONDS="${SESSION_SECONDS:-470}"
CHECK_SECONDS="${CHECK_SECONDS:-270}"
DEVICE="${DEVICE:-cuda}"
LEDGER_SLICES="${LEDGER_SLICES:-300 1000}"
TRAIN_DIR="${TRAIN_DIR:-out/gpu_paper}"
PY="${PYTHON:-python3}"
WORK=/tmp/gpu_check
mkdir -p "$OUT_DIR" "$WORK"
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
    # shellcheck disable=SC2086  # LEDGER_SLICES is a list
    "$PY" -m benchmarks.device_memory --slices $LEDGER_SLICES --json "$OUT_DIR/device_memory.json" \
        --work "$WORK" > "$OUT_DIR/device_memory.txt" 2>&1
    echo "[$(elapsed) s] ledger exit $?"; cat "$OUT_DIR/device_memory.txt" | tail -30
    PYTHON="$PY" OUT="$OUT_DIR" timeout -k 10 "$CHECK_SECONDS" sh benchmarks/gpu_check.sh ${CHECK_ARGS:-} \
        > "$OUT_DIR/gpu_check.log" 2>&1
    echo "[$(elapsed) s] gpu_check exit $?"
    tail -40 "$OUT_DIR/gpu_check.log"
    "$PY" -m benchmarks.gpu_side_by_side --ledger "$OUT_DIR/device_memory.json" --check "$WORK/gpu_check.json" \
        | tee "$OUT_DIR/side_by_side.txt"
fi

LEFT=$(( SESSION_SECONDS - $(elapsed) - 15 ))
if [ "$LEFT" -gt 30 ]; then
    echo "[$(elapsed) s] paper preset, steps 1-4, for at most $LEFT s"
    few() { for network in organ_first organ tumor; do
        printf -- "--set %s.epochs=1 --set %s.iterations_per_epoch=3 --set %s.val_iterations=1 " "$network" "$network" "$network"; done; }
    # shellcheck disable=SC2046  # word splitting of the overrides is wanted
    timeout -k 10 "$LEFT" sh -c "\"$PY\" -m training --preset demo --make-data --steps data --data $TRAIN_DIR/data \
            --work $TRAIN_DIR/data_work --weights $TRAIN_DIR/unused --set data.n_labeled=4 --set data.n_partial=1 \
            --set data.n_tumor_only=1 --set data.n_unlabeled=1 --set data.n_validation=1 && \
        \"$PY\" -m training --preset paper --data $TRAIN_DIR/data --work $TRAIN_DIR/work --weights $TRAIN_DIR/weights \
            --steps 1,2,3,4 --device $DEVICE --real-ct none --processes 8 --threads 2 --set tumor_organs=[1] \
            $(few) ${PAPER_ARGS:-}" > "$OUT_DIR/paper_training.log" 2>&1
    rc=$?; echo "[$(elapsed) s] paper preset exit $rc (124: time box reached; rerun with SKIP_CHECK=1 to resume)"
    grep -E "finished in|running|error|Error|iteration|epoch" "$OUT_DIR/paper_training.log" | tail -25
fi
ls -la "$OUT_DIR"
echo "[$(elapsed) s] done"
