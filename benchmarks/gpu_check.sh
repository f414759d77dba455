#!/bin/sh
# GPU check for one GPU machine without network, sized to finish within about 4 minutes:
#   run: sh benchmarks/gpu_check.sh   (from the repository root on the GPU machine)
# That machine has CUDA, torch and cupy but no network: benchmarks/gpu_session.sh installs the other
# runtime packages from the carried .whl/ (benchmarks/gpu_wheels.sh makes it) and then calls this.
set -eu
OUT_DIR="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
"$PY" -c "import torch, SimpleITK, cc3d, scipy, dynamic_network_architectures, pynvml, psutil, tqdm; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
# GPU-only tests that are skipped on the CPU machines (CuPy and CUDA resampling, the budgeted CUDA path)
"$PY" -m pytest -q tests/test_resampling.py tests/test_nnunet_resampling.py tests/test_sliding_window.py \
    tests/test_device_memory.py -k "cuda or cupy" 2>&1 | tail -3 | tee "$OUT_DIR/gpu_tests.txt"
"$PY" -m benchmarks.gpu_check --work /tmp/gpu_check "$@" 2>&1 | tee "$OUT_DIR/gpu_check.txt"
cp /tmp/gpu_check/gpu_check.json "$OUT_DIR/" 2>/dev/null || true
