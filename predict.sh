#!/bin/sh
# FLARE entry point (POSIX sh; run as `sh predict.sh` in /workspace): segment every scan in the
# inputs folder into <ID>.nii.gz label maps in the outputs folder, and exit with the engine's code
# (0 all written, 1 some case failed, 2 usage error, 3 weights/output folder/device unusable).
#
# Who runs the engine. The organisers start the image as root and bind-mount an outputs folder that
# anyone may own: Docker creates a missing one as root, and a folder of mode 755 owned by one user is
# not writable by another. So, started as root, this script
#   1. checks that the outputs folder is writable (root may write into anyone's folder; a read-only
#      mount exits 3 with the engine's message) and removes partial files an interrupted run left;
#   2. runs the engine without privileges (setpriv, util-linux: no capabilities, no supplementary
#      groups, no_new_privs): as the outputs folder's owner, who can read what that user can, or as
#      the image's user "predictor" (PREDICT_USER; "nobody" where it does not exist) when root owns
#      the folder. The engine writes into a private staging folder, never into the mount;
#   3. hands each finished file over into the outputs folder: copied to a hidden temporary there,
#      given the folder owner's uid:gid and mode 0644, then renamed (atomic: the folder never holds a
#      partial <ID>.nii.gz). A SIGTERM (docker stop) stops the engine and still hands over the
#      cases it finished.
# The model code (torch, pickled plans, third-party wheels) thus never runs as root, and the files
# belong to whoever owns the outputs folder, with no build argument or chmod asked of the organisers.
# Started as any other user (docker run --user UID), or with RUN_AS_ROOT=1 (local runs as root on a
# host whose interpreter other users cannot reach), the engine runs directly, writing in place.
#
# Environment (for local runs; the container needs none of it):
#   INPUT_DIR    default /workspace/inputs
#   OUTPUT_DIR   default /workspace/outputs (holds only <ID>.nii.gz files afterwards)
#   REPORT_PATH  JSON run report, default /tmp/run_report.json (kept out of the outputs folder)
#   MODEL_DIR    cascade or nnU-Net model folder, default the shipped weights/ next to inference/
#   PYTHON       interpreter, default python
#   PREDICT_USER unprivileged user for a root-owned outputs folder, default predictor
#   RUN_AS_ROOT  1: started as root, run the engine as root, in place (no staging, no hand-over)
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
INPUT_DIR=${INPUT_DIR:-/workspace/inputs}
OUTPUT_DIR=${OUTPUT_DIR:-/workspace/outputs}
PYTHON=${PYTHON:-python}
DEFAULT_REPORT=/tmp/run_report.json

# The engine package lies next to this script; run from any working directory.
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
if [ -n "${MODEL_DIR:-}" ]; then set -- --model "$MODEL_DIR" "$@"; fi

if [ "$(id -u)" != 0 ] || [ "${RUN_AS_ROOT:-0}" = 1 ]; then
    exec "$PYTHON" -m inference -i "$INPUT_DIR" -o "$OUTPUT_DIR" --report "${REPORT_PATH:-$DEFAULT_REPORT}" \
        --no-progress "$@"
fi

fatal() {  # the engine's wording for a fatal error, and its exit code 3
    echo "$(date +%H:%M:%S) ERROR predict.sh: fatal: $*" >&2
    exit 3
}

check_output_folder() {  # what the engine checks itself when it writes in place
    probe="$OUTPUT_DIR/.write-test-$$"
    error=$({ mkdir -p "$OUTPUT_DIR" && touch "$probe"; } 2>&1) \
        || fatal "$OUTPUT_DIR: output folder not writable (${error##*: })"
    rm -f "$probe"
    [ "$(cd "$OUTPUT_DIR" && pwd -P)" != "$(cd "$INPUT_DIR" 2>/dev/null && pwd -P)" ] \
        || fatal "$OUTPUT_DIR: output folder must differ from the input folder"
    for stale in "$OUTPUT_DIR"/.*.partial-*; do
        [ -f "$stale" ] || continue
        rm -f "$stale" && echo "removed a partial output left by an interrupted run: $stale" >&2
    done
}

engine_ids() {  # uid:gid to run the engine as: the outputs folder's owner, unless that is root
    owner=$(stat -c %u:%g "$OUTPUT_DIR") || fatal "$OUTPUT_DIR: cannot read its owner"
    case $owner in
        0:*) user=${PREDICT_USER:-predictor}
             id -u "$user" >/dev/null 2>&1 || user=nobody
             echo "$(id -u "$user"):$(id -g "$user")" ;;
        *:0) echo "${owner%:*}:65534" ;;  # never root's group either
        *) echo "$owner" ;;
    esac
}

hand_over() {  # $1 staging folder: each finished file into OUTPUT_DIR, owned like the folder, mode 0644
    owner=$(stat -c %u:%g "$OUTPUT_DIR") || return 1
    handed=0
    for file in "$1"/*; do
        [ -f "$file" ] || continue
        name=${file##*/}
        temporary="$OUTPUT_DIR/.$name.partial-$$"
        if cp "$file" "$temporary" && chown "$owner" "$temporary" && chmod 0644 "$temporary" \
            && mv -f "$temporary" "$OUTPUT_DIR/$name"; then
            handed=$((handed + 1))
        else
            rm -f "$temporary"
            echo "$(date +%H:%M:%S) ERROR predict.sh: $OUTPUT_DIR/$name: could not hand the output over" >&2
            return 1
        fi
    done
    echo "$(date +%H:%M:%S) INFO predict.sh: $handed file(s) handed over to $OUTPUT_DIR (owner $owner, mode 0644)" >&2
}

check_output_folder
ids=$(engine_ids) || exit 3
WORK=$(mktemp -d "${TMPDIR:-/tmp}/predict-XXXXXX") || fatal "cannot create a staging folder"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/outputs" && chown -R "$ids" "$WORK" || fatal "$WORK: cannot prepare the staging folder"
REPORT=${REPORT_PATH:-$WORK/run_report.json}

setpriv --reuid="${ids%:*}" --regid="${ids#*:}" --clear-groups --no-new-privs env HOME="$WORK" \
    "$PYTHON" -m inference -i "$INPUT_DIR" -o "$WORK/outputs" --report "$REPORT" --no-progress "$@" &
engine=$!
trap 'kill -TERM "$engine" 2>/dev/null' TERM INT
wait "$engine"
code=$?
# `wait` returns early when a signal arrives: wait again until the engine has really exited.
while kill -0 "$engine" 2>/dev/null; do wait "$engine"; code=$?; done

hand_over "$WORK/outputs" || { [ "$code" -gt 1 ] || code=3; }
[ -n "${REPORT_PATH:-}" ] || mv -f "$REPORT" "$DEFAULT_REPORT" 2>/dev/null
exit "$code"
