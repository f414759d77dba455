#!/bin/bash
# Throughput of the demo's tumor trainings on this CPU: one training with 2 threads, then two side by
# side with 1 thread each (what `make weights --parallel 2` does), alternating, REPS times.
# Needs the preprocessed tumor datasets of a finished or running `make weights` (WORK below).
#   run from the repository root:  bash benchmarks/tumor_side_by_side.sh
# Prints, per repetition, the seconds of one 2-thread training and of the side-by-side pair, and the
# pair's throughput relative to running its two trainings one after another at 2 threads.
set -euo pipefail
WORK="${WORK:-out/train/work/nnunet}"
PY="${PYTHON:-.venv/bin/python}"
EPOCHS="${EPOCHS:-6}"
ITERATIONS="${ITERATIONS:-20}"
REPS="${REPS:-2}"
FIRST="${FIRST:-Dataset311_FlareTumorLiver}"
SECOND="${SECOND:-Dataset312_FlareTumorPancreas}"
RESULTS="$(mktemp -d)"
trap 'rm -rf "$RESULTS"' EXIT

train() {  # dataset threads results-folder
    env nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$3" \
        nnUNet_n_proc_DA=0 nnUNet_def_n_proc=2 nnUNet_compile=false OMP_NUM_THREADS="$2" MKL_NUM_THREADS="$2" \
        TORCH_NUM_THREADS="$2" PYTHONPATH="$PWD" \
        "$PY" -m training.nnunet_train --preprocessed-dataset "$WORK/nnUNet_preprocessed/$1" \
        --plans-name FlareTumorPlans --configuration 3d_fullres --fold all --epochs "$EPOCHS" \
        --iterations "$ITERATIONS" --val-iterations 2 --initial-lr 0.003 --device cpu --save-every 5 \
        --optimizer adam --no-augmentation > "$3.log" 2>&1
}

now() { date +%s.%N; }
echo "tumor trainings of $EPOCHS x $ITERATIONS iterations, $FIRST and $SECOND, $(nproc) cores"
for rep in $(seq 1 "$REPS"); do
    t0=$(now)
    train "$FIRST" 2 "$RESULTS/one_$rep"
    t1=$(now)
    train "$FIRST" 1 "$RESULTS/a_$rep" & first=$!
    train "$SECOND" 1 "$RESULTS/b_$rep" & second=$!
    wait "$first" "$second"
    t2=$(now)
    awk -v a="$t0" -v b="$t1" -v c="$t2" -v r="$rep" 'BEGIN {
        one = b - a; pair = c - b
        printf "rep %d: one training, 2 threads %.1f s; two side by side, 1 thread each %.1f s; " \
               "throughput x%.2f\n", r, one, pair, 2 * one / pair }'
done
