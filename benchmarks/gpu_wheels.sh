#!/bin/bash
# Prepare .whl/ for benchmarks/gpu_session.sh on a GPU machine without network: that machine
# has CUDA, torch, cupy, scipy, pytest and nvidia-ml-py but no network and none of the packages
# below. Run here (with network), from the repository root:  bash benchmarks/gpu_wheels.sh
# Then call the device with carry [".whl"]. What travels is limited to 64 MiB, so SimpleITK (a 53 MB
# wheel) goes as an xz tarball of the unpacked wheel (28 MB); the rest are plain wheels (17 MB).
set -euo pipefail
PY_VERSION="${PY_VERSION:-3.12}"  # the device's python3
DEST=.whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p "$DEST"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014; do
    platforms+=(--platform "${tag}_x86_64")
done
# compiled packages: binary wheels for the device's python
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    "${platforms[@]}" -d "$DEST" connected-components-3d==4.1.1 blosc2==4.14.1 ndindex==1.10.1 \
    numexpr==2.14.2 nibabel==5.4.2
# pure-python packages published as source only: built into wheels here
python3 -m pip wheel -q --no-deps -w "$DEST" dynamic-network-architectures==0.4.4 nnunetv2==2.8.1 \
    acvl-utils==0.2.6 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6
if [ ! -f "$DEST/sitk.tar.xz" ]; then
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        "${platforms[@]}" -d "$tmp" SimpleITK==2.5.7
    (cd "$tmp" && mkdir unpacked && cd unpacked && unzip -q ../simpleitk-*.whl && tar -cf - . | xz -9 -T0 > ../sitk.tar.xz)
    mv "$tmp/sitk.tar.xz" "$DEST/" && rm -rf "$tmp"
fi
# the real CT of ../shared/data/real (the gpu preset uses it as one pseudo-labelled training case)
if [ -d ../shared/data/real ]; then
    rm -rf "$DEST/real" && cp -r ../shared/data/real "$DEST/real" && chmod -R u+w "$DEST/real"
fi
du -sh "$DEST"
