#!/usr/bin/env bash
# Build the inference image and run it the way FLARE does, on synthetic cases (make docker-test).
#
# 1. docker: installs docker.io if missing; starts dockerd in the background if none answers (and
#    stops that one, by PID, at the end).
# 2. base image: a Debian bookworm made with debootstrap (docker/build_base.sh), since no registry
#    is reachable here; users build FROM the CUDA image (the Dockerfile's default BASE_IMAGE).
# 3. wheelhouse: every runtime wheel, downloaded with the host's pip into docker/wheels/ (the CPU
#    torch 2.13.0 lies only on the host, and PyPI's TLS cannot be verified from inside the build
#    here); the build installs with --no-index, so it uses no package index at all.
# 4. weights: weights/ if it holds a cascade, else a random-weight test cascade (docker/test-weights/).
# 5. build: the build stage first, tagged IMAGE's name:build-stage (the legacy builder would leave
#    it untagged), then the image; fails on a pip "ERROR" in the log or a new untagged image.
# 6. runs the organisers' command, `docker container run -m 28G --name NAME --rm -v IN/:/workspace/inputs/
#    -v OUT/:/workspace/outputs/ IMAGE /bin/bash -c "sh predict.sh"`, without --gpus (no GPU here) and
#    with --network none (the image must need no network), as the image's default user (root):
#    once per case (timings) and for each owner of the outputs folder, never chown-ed to the image's
#    user: missing (Docker creates it, as root), root's, another UID's (mode 755, inputs read-only),
#    and with --user; checks every output's geometry, owner and mode (docker/check_outputs.py), and
#    that a read-only outputs mount exits 3 with the engine's message.
#
# Environment: IMAGE (default flare-engine:test), BASE_IMAGE (default local/debian:bookworm),
# CASES (default 3), REAL_CT (a *_0000.nii.gz segmented as one more case; default the real CT of
# ../shared/data/real where present), KEEP_WORK=1 keeps the temporary folders, the wheelhouse and
# the test weights.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-flare-engine:test}
BASE_IMAGE=${BASE_IMAGE:-local/debian:bookworm}
CASES=${CASES:-3}
REAL_CT=${REAL_CT:-../shared/data/real/TS_example_ct_0000.nii.gz}
OTHER=4321:4321  # an outputs folder owner that no account of the image holds
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d /tmp/docker-test-XXXXXX)
DOCKERD_PID=""

cleanup() {
    local code=$?
    if [ -n "$DOCKERD_PID" ]; then
        echo "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "work folder kept: $WORK"
    else
        # The wheelhouse holds the CPU torch: left there, a later CUDA build would install it.
        rm -rf "$WORK" docker/test-weights
        find docker/wheels -name '*.whl' -delete 2>/dev/null || true
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n=== %s\n' "$*"; }

step "docker"
if ! command -v dockerd >/dev/null 2>&1; then
    apt-get install -y docker.io >/dev/null || { apt-get update >/dev/null && apt-get install -y docker.io >/dev/null; }
fi
if ! docker info >/dev/null 2>&1; then
    dockerd >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -n 30 "$WORK/dockerd.log"; echo "dockerd did not start"; exit 1; }
    echo "started dockerd (pid $DOCKERD_PID)"
fi
docker version --format 'client {{.Client.Version}}, server {{.Server.Version}}'

step "base image $BASE_IMAGE"
sh docker/build_base.sh "$BASE_IMAGE"

step "wheelhouse docker/wheels"
started=$(date +%s)
pip_download() {  # the host's pip (its find-links hold the CPU torch); its log only shown on failure
    "$PY" -m pip download -q --dest docker/wheels --only-binary=:all: "$@" >>"$WORK/pip.log" 2>&1 \
        || { tail -n 20 "$WORK/pip.log"; echo "pip download failed"; exit 1; }
}
pip_download torch==2.13.0
pip_download --no-deps dynamic-network-architectures==0.4.4
pip_download -r requirements.txt
echo "$(ls docker/wheels/*.whl | wc -l) wheels, $(du -sh docker/wheels | cut -f1), $(( $(date +%s) - started )) s"

step "weights"
if [ -f weights/cascade.json ]; then
    WEIGHTS_DIR=weights
else
    rm -rf docker/test-weights
    "$PY" docker/make_test_assets.py weights docker/test-weights
    WEIGHTS_DIR=docker/test-weights
    echo "weights/ holds no cascade yet: using a random-weight test cascade ($WEIGHTS_DIR)"
fi

step "build $IMAGE"
STAGE_TAG="${IMAGE%:*}:build-stage"
build_args=(--network host --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_INSTALL_ARGS=--no-index
            --build-arg WEIGHTS_DIR="$WEIGHTS_DIR")
dangling() { docker image ls -q --no-trunc -f dangling=true | sort; }
dangling >"$WORK/dangling.before"
previous=$(docker image inspect -f '{{.Id}}' "$STAGE_TAG" "$IMAGE" 2>/dev/null || true)
started=$(date +%s)
{ docker build "${build_args[@]}" --target build -t "$STAGE_TAG" . \
    && docker build "${build_args[@]}" -t "$IMAGE" .; } >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log"; echo "docker build failed"; exit 1; }
echo "built in $(( $(date +%s) - started )) s"
for id in $previous; do  # a rebuild untags the images it replaces: remove exactly those
    if [ "$(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null)" = 0 ]; then
        docker image rm "$id" >/dev/null || true
    fi
done
status=0
new_dangling=$(dangling | comm -13 "$WORK/dangling.before" -)
[ -z "$new_dangling" ] || { echo "FAIL: the build left untagged images: $new_dangling"; status=1; }
if grep -n "ERROR" "$WORK/build.log"; then echo "FAIL: the build log reports errors (above)"; status=1; fi
SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "image size: $(( SIZE / 1000000 )) MB ($SIZE bytes); build stage kept as $STAGE_TAG for the cache"
echo "default user: '$(docker image inspect -f '{{.Config.User}}' "$IMAGE")' (empty: root)," \
    "workdir $(docker image inspect -f '{{.Config.WorkingDir}}' "$IMAGE")"

step "is PyPI reachable from inside a container here? (informational)"
docker run --rm --network host "$IMAGE" python -c "
import urllib.request
try:
    urllib.request.urlopen('https://pypi.org/simple/torch/', timeout=10); print('PyPI: reachable')
except Exception as error:
    print('PyPI: not usable from the container:', type(error).__name__, str(error)[:160])
" || true

organisers_run() {  # $1 inputs, $2 outputs (host folders), then extra docker options: the organisers' command
    local inputs=$1 outputs=$2  # IN_MODE / OUT_MODE=:ro mount that folder read-only
    shift 2
    docker container run --network none "$@" -m 28G --name "flare-test-$$-$RANDOM" --rm \
        -v "$inputs"/:/workspace/inputs/${IN_MODE:-} -v "$outputs"/:/workspace/outputs/${OUT_MODE:-} \
        "$IMAGE" /bin/bash -c "sh predict.sh"
}
elapsed() {  # seconds since $1 (date +%s%N)
    local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
    printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}
one_case_folder() {  # $1 a scan: a folder holding only it, readable by anyone
    local folder="$WORK/in_$(basename "$1" _0000.nii.gz)"
    mkdir -p "$folder" && cp "$1" "$folder/" && chmod -R a+rX "$folder"
    echo "$folder"
}
timed_case() {  # $1 inputs folder, $2 outputs folder, $3 label: one container, its time and the engine's
    local started code=0 engine
    started=$(date +%s%N)
    IN_MODE=:ro organisers_run "$1" "$2" >"$WORK/run.log" 2>&1 || code=$?
    engine=$(sed -n 's/.* in \([0-9.]*\) s; [0-9]* failed$/\1/p' "$WORK/run.log")
    echo "$3: docker run $(elapsed "$started") s (engine ${engine:-?} s), exit $code"
    [ "$code" = 0 ] || { tail -n 20 "$WORK/run.log"; return 1; }
}

step "cases"
"$PY" docker/make_test_assets.py cases "$WORK/all_inputs" "$CASES"
chmod -R a+rX "$WORK/all_inputs"
FIRST=$(one_case_folder "$(ls "$WORK"/all_inputs/*_0000.nii.gz | head -n 1)")

step "start-up floor: an empty inputs folder (container start, Python and torch imports; exit 2 expected)"
mkdir -p "$WORK/in_empty" "$WORK/out_empty"
started=$(date +%s%N)
code=0
organisers_run "$WORK/in_empty" "$WORK/out_empty" >"$WORK/run.log" 2>&1 || code=$?
echo "empty run: $(elapsed "$started") s, exit $code"
[ "$code" = 2 ] || { tail -n 20 "$WORK/run.log"; status=1; }

step "one container per case, inputs read-only, outputs owned by UID $OTHER (mode 755)"
OUT="$WORK/outputs"
mkdir -p "$OUT" && chown "$OTHER" "$OUT" && chmod 755 "$OUT"
for input in "$WORK"/all_inputs/*_0000.nii.gz; do
    timed_case "$(one_case_folder "$input")" "$OUT" "case $(basename "$input")" || status=1
done
tail -n 3 "$WORK/run.log"
"$PY" docker/check_outputs.py "$WORK/all_inputs" "$OUT" --owner "$OTHER" || status=1
if [ -f "$REAL_CT" ]; then
    REAL_OUT="$WORK/out_real"
    mkdir -p "$REAL_OUT" && chown "$OTHER" "$REAL_OUT"
    REAL_IN=$(one_case_folder "$REAL_CT")
    timed_case "$REAL_IN" "$REAL_OUT" "real CT $(basename "$REAL_CT")" || status=1
    "$PY" docker/check_outputs.py "$REAL_IN" "$REAL_OUT" --owner "$OTHER" || status=1
else
    echo "no real CT at $REAL_CT (REAL_CT): skipped"
fi

step "owners of the outputs folder (the organisers' command as written, first case)"
ownership_case() {  # $1 label, $2 outputs folder, $3 expected owner uid:gid, then extra docker options
    local label=$1 outputs=$2 owner=$3 code=0
    shift 3
    organisers_run "$FIRST" "$outputs" "$@" >"$WORK/run.log" 2>&1 || code=$?
    echo "$label: exit $code, folder $(stat -c '%u:%g %a' "$outputs")"
    [ "$code" = 0 ] || { tail -n 20 "$WORK/run.log"; return 1; }
    "$PY" docker/check_outputs.py "$FIRST" "$outputs" --owner "$owner"
}
mkdir -p "$WORK/own_root/outputs" "$WORK/own_user/outputs"
chown "$OTHER" "$WORK/own_user/outputs"
ownership_case "missing (Docker creates it)" "$WORK/own_missing/outputs" 0:0 || status=1
ownership_case "root's, mode 755" "$WORK/own_root/outputs" 0:0 || status=1
ownership_case "UID $OTHER's, run with --user $OTHER" "$WORK/own_user/outputs" "$OTHER" --user "$OTHER" || status=1

step "read-only outputs mount (exit 3 and the engine's message expected)"
mkdir -p "$WORK/out_ro"
code=0
OUT_MODE=:ro organisers_run "$FIRST" "$WORK/out_ro" >"$WORK/run.log" 2>&1 || code=$?
message=$(grep -o "output folder not writable.*" "$WORK/run.log" || true)
echo "read-only outputs: exit $code, \"$message\""
[ "$code" = 3 ] && [ "$message" = "output folder not writable (Read-only file system)" ] \
    && [ -z "$(ls -A "$WORK/out_ro")" ] || { tail -n 20 "$WORK/run.log"; status=1; }

[ "$status" = 0 ] && echo "docker test passed" || echo "docker test FAILED"
exit "$status"
