#!/usr/bin/env bash
# GPU benchmark for a machine with an NVIDIA GPU (Linux x86_64, driver for CUDA 13, Python 3.11+):
# onnxruntime-gpu (fp32 and fp16 graphs, I/O binding, batch from free memory) against torch on CUDA with the
# same weights; results in bench-results/gpu.json. It has NOT run on a GPU yet (docs/performance.md).
#
#   bench/gpu.sh                       # makes .venv-gpu (PyPI), then runs bench/gpu_bench.py (< 5 min)
#   GPU_PYTHON=/path/python bench/gpu.sh   # a Python that already has torch with CUDA: installs only what lacks
#   PIP_FIND_LINKS=/wheels PIP_NO_INDEX=1 bench/gpu.sh   # an offline machine with the wheels in /wheels
#
# Versions come from requirements/lock.txt: onnxruntime-gpu is onnxruntime's version (1.31.1, built for
# CUDA 13 like torch 2.13's wheels), with its [cuda,cudnn] extras (the nvidia-* runtime wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
REMOTECLIP_DATA="${REMOTECLIP_DATA:-$(cd .. && pwd)/shared/data}"
export REMOTECLIP_DATA
lock() { grep -i "^$1==" requirements/lock.txt | head -1 | cut -d= -f3; }
ORT="$(lock onnxruntime)"

if [ -n "${GPU_PYTHON:-}" ]; then
    PY="$GPU_PYTHON"
else
    VENV="${GPU_VENV:-.venv-gpu}"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    PY="$VENV/bin/python"
fi
need() { "$PY" -c "import $1" 2>/dev/null; }
if ! need torch || ! need open_clip || ! need rasterio || ! need onnxconverter_common; then
    # everything but onnxruntime, pinned to the lock file (onnxruntime and onnxruntime-gpu share a module name)
    grep -v -i -E '^(onnxruntime|pip|setuptools)==' requirements/lock.txt | grep -v '^#' > /tmp/gpu-constraints.txt
    "$PY" -m pip install -q -c /tmp/gpu-constraints.txt numpy affine rasterio shapely ftfy regex tqdm onnx \
        torch torchvision open-clip-torch onnxscript onnxconverter-common pillow
fi
if ! "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
        2>/dev/null; then
    "$PY" -m pip uninstall -q -y onnxruntime 2>/dev/null || true
    "$PY" -m pip install -q "onnxruntime-gpu[cuda,cudnn]==$ORT"
fi
"$PY" - <<'EOF'
import onnxruntime as ort
ort.preload_dlls()
providers = ort.get_available_providers()
assert "CUDAExecutionProvider" in providers, f"onnxruntime-gpu has no CUDA provider here: {providers}"
print("onnxruntime", ort.__version__, providers)
EOF
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true
PYTHONPATH="$PWD" timeout 280 "$PY" bench/gpu_bench.py "$@"
