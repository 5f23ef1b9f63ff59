#!/usr/bin/env bash
# Create .venv and install cunet-edge with its ONNX and test extras.
# Without CUDA, the CPU build of torch is installed first, so pip never pulls the multi-GB
# CUDA build to satisfy the package's torch range. Set TORCH_INDEX_URL to install torch
# from another index (e.g. PyTorch's CPU wheel index); Jetson users install JetPack's torch
# into the environment first, and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q torch
  elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip install -q torch --index-url "$TORCH_INDEX_URL"
  else
    pip install -q "torch==2.13.0"
  fi
fi
# Hold torch where it is: a test extra that pulls torchvision must take the build matching this torch,
# not upgrade torch to the newest (CUDA) release.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$CONSTRAINTS"
pip install -q -c "$CONSTRAINTS" -e ".[onnx,dev]"
python -c "import cunet_edge, torch; print('cunet-edge', cunet_edge.__version__, 'torch', torch.__version__)"
