# FLARE23-style inference container: `sh predict.sh` segments /workspace/inputs into /workspace/outputs.
#
# Build (users, CUDA):  docker build -t flare-engine .
# Build here (no registry, CPU torch, local wheelhouse; see docker/test_image.sh):
#   docker build --network host --build-arg BASE_IMAGE=local/debian:bookworm \
#       --build-arg PIP_INSTALL_ARGS=--no-index --build-arg WEIGHTS_DIR=docker/test-weights -t flare-engine .
# The legacy builder (no BuildKit) keeps the build stage as an untagged image: build and tag it
# first (`docker build --target build -t flare-engine:build-stage ...`, the same arguments), and the
# full build reuses it from the cache; BuildKit leaves no stage image at all.
# Run (the organisers' command): docker container run --gpus "device=0" -m 28G --rm \
#   -v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/ flare-engine /bin/bash -c "sh predict.sh"
# The container starts as root: predict.sh runs the engine as an unprivileged user and hands the
# label maps over to whoever owns the outputs folder (see predict.sh).
#
# Base image: any Debian/Ubuntu with Python >= 3.11 in apt (numpy 2.4 and scipy 1.17 need 3.11, so the
# ubuntu22.04 CUDA images, Python 3.10, do not work). For a release, pin the digest:
#   nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04@sha256:<digest of the tag you tested>
# The PyPI torch wheel bundles its own CUDA and cuDNN, so the base only has to match the host driver.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- build stage: the Python venv
FROM ${BASE_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch, pinned: on PyPI (Linux) `torch==2.13.0` is the CUDA build; docker/test_image.sh builds
# with the CPU wheel (2.13.0+cpu) from the wheelhouse docker/wheels/. Installed first, so that no
# later requirement can pull another torch.
ARG TORCH_REQUIREMENT="torch==2.13.0"
# Extra pip arguments, e.g. --no-index to install from the wheelhouse only (offline build).
ARG PIP_INSTALL_ARGS=""
# Optional GPU extras (cupy resampling backend, NVML): --build-arg INSTALL_GPU_EXTRAS=1
ARG INSTALL_GPU_EXTRAS=0
COPY requirements.txt requirements-gpu.txt /tmp/requirements/
COPY docker/wheels/ /tmp/wheels/
RUN pip install $PIP_INSTALL_ARGS --find-links /tmp/wheels "$TORCH_REQUIREMENT" \
 && pip install $PIP_INSTALL_ARGS --find-links /tmp/wheels -r /tmp/requirements/requirements.txt \
 && if [ "$INSTALL_GPU_EXTRAS" = 1 ]; then \
        pip install $PIP_INSTALL_ARGS --find-links /tmp/wheels -r /tmp/requirements/requirements-gpu.txt; fi \
 # Last, and --no-deps: its declared timm serves only transformer architectures we never accept and
 # would pull torchvision and a second, CUDA torch (requirements.txt). Installed last, no later pip
 # run reports the missing timm as a conflict ("ERROR: pip's dependency resolver ..."); `pip check`
 # would, by design. Its real imports (torch, numpy) are installed above; the import below proves it.
 && pip install $PIP_INSTALL_ARGS --find-links /tmp/wheels --no-deps dynamic-network-architectures==0.4.4 \
 && python -c "import torch, numpy, scipy, SimpleITK, cc3d, dynamic_network_architectures.architectures.unet"

# ---------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# FLARE scores seconds per case: past 60 s a case skips its remaining tumor stages and is still written
# (the organ stage always runs). `docker run -e FLARE_CASE_TIME_BUDGET=` (empty) removes the bound.
ENV FLARE_CASE_TIME_BUDGET=60

# The unprivileged user predict.sh runs the engine as when root owns the outputs folder (a folder
# that another user owns is written as that user). Its UID does not matter to the organisers.
# (ubuntu24.04 images already hold user "ubuntu" with UID 1000: whoever holds the UID gives it up.)
ARG UID=1000
RUN if getent passwd "$UID" >/dev/null; then userdel --remove "$(getent passwd "$UID" | cut -d: -f1)" 2>/dev/null; fi; \
    useradd --uid "$UID" --create-home --shell /bin/bash predictor

WORKDIR /workspace
# The shipped cascade (weights/); test builds pass another folder of the build context.
ARG WEIGHTS_DIR=weights
COPY inference/ /workspace/inference/
COPY phantom/ /workspace/phantom/
COPY ${WEIGHTS_DIR}/ /workspace/weights/
COPY predict.sh /workspace/predict.sh
# Byte-compile once at build (the engine's user cannot write __pycache__; each case starts a new
# container, so compiling at every start would cost every case), verify every weight file's SHA-256.
RUN python -m compileall -q /workspace/inference /workspace/phantom \
 && python -c "from inference.cascade.cascade_json import load_manifest; load_manifest('weights')" \
 && chmod -R a+rX /workspace

# Self-test on a synthetic CT with the shipped weights, the way the organisers run the image: as
# root, through predict.sh's privilege drop and hand-over (the demo input is written, and segmented
# once, by the unprivileged user). The image cannot be built if it cannot segment.
RUN setpriv --reuid=predictor --regid=predictor --clear-groups env HOME=/tmp \
        python -m inference --demo /tmp/selftest --device cpu --no-progress \
 && test -s /tmp/selftest/outputs/demo.nii.gz \
 && INPUT_DIR=/tmp/selftest/inputs OUTPUT_DIR=/tmp/selftest/handover sh predict.sh \
 && test "$(stat -c %U:%a /tmp/selftest/handover/demo.nii.gz)" = root:644 \
 && rm -rf /tmp/selftest /tmp/run_report.json

CMD ["sh", "predict.sh"]
