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
# 5. runs `docker container run --network none ... /bin/bash -c "sh predict.sh"` once per case, as the
#    image's default non-root user, with read-only inputs, and checks every output's geometry.
#
# Environment: IMAGE (default flare-engine:test), BASE_IMAGE (default local/debian:bookworm),
# CASES (default 3), KEEP_WORK=1 keeps the temporary folders, the wheelhouse and the test weights.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-flare-engine:test}
BASE_IMAGE=${BASE_IMAGE:-local/debian:bookworm}
CASES=${CASES:-3}
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
started=$(date +%s)
docker build --network host -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_INSTALL_ARGS=--no-index \
    --build-arg WEIGHTS_DIR="$WEIGHTS_DIR" . >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log"; echo "docker build failed"; exit 1; }
echo "built in $(( $(date +%s) - started )) s"
SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "image size: $(( SIZE / 1000000 )) MB ($SIZE bytes)"
echo "default user: $(docker image inspect -f '{{.Config.User}}' "$IMAGE"), workdir $(docker image inspect -f '{{.Config.WorkingDir}}' "$IMAGE")"

step "is PyPI reachable from inside a container here? (informational)"
docker run --rm --network host "$IMAGE" python -c "
import urllib.request
try:
    urllib.request.urlopen('https://pypi.org/simple/torch/', timeout=10); print('PyPI: reachable')
except Exception as error:
    print('PyPI: not usable from the container:', type(error).__name__, str(error)[:160])
" || true

step "cases"
"$PY" docker/make_test_assets.py cases "$WORK/all_inputs" "$CASES"
OUT="$WORK/outputs"
mkdir -p "$OUT"
USER_ID=$(docker run --rm --network none "$IMAGE" id -u)
chown "$USER_ID" "$OUT"  # FLARE bind-mounts the outputs folder: it must be writable by the image's user

run_container() {  # the organisers' command; $1: inputs folder
    docker container run --network none --shm-size=2gb -m 28G --rm \
        -v "$1":/workspace/inputs/:ro -v "$OUT":/workspace/outputs/ \
        "$IMAGE" /bin/bash -c "sh predict.sh"
}
elapsed() {  # seconds since $1 (date +%s%N)
    local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
    printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}

step "start-up floor: an empty inputs folder (container start, Python and torch imports; exit 2 expected)"
mkdir -p "$WORK/in_empty"
chmod a+rx "$WORK/in_empty"
started=$(date +%s%N)
code=0
run_container "$WORK/in_empty" >"$WORK/run.log" 2>&1 || code=$?
echo "empty run: $(elapsed "$started") s, exit $code"

step "docker run, one container per case (organisers' command)"
status=0
for input in "$WORK"/all_inputs/*_0000.nii.gz; do
    case_dir="$WORK/in_$(basename "$input" _0000.nii.gz)"
    mkdir -p "$case_dir"
    cp "$input" "$case_dir/"
    chmod -R a+rX "$case_dir"
    started=$(date +%s%N)
    code=0
    run_container "$case_dir" >"$WORK/run.log" 2>&1 || code=$?
    engine=$(sed -n 's/.* in \([0-9.]*\) s; [0-9]* failed$/\1/p' "$WORK/run.log")
    echo "case $(basename "$input"): docker run $(elapsed "$started") s (engine ${engine:-?} s), exit $code"
    if [ "$code" != 0 ]; then tail -n 20 "$WORK/run.log"; status=1; fi
done
tail -n 4 "$WORK/run.log"

step "outputs"
"$PY" docker/check_outputs.py "$WORK/all_inputs" "$OUT" || status=1
[ "$status" = 0 ] && echo "docker test passed" || echo "docker test FAILED"
exit "$status"
