#!/usr/bin/env bash
# Create .venv and install cunet-edge with its ONNX and test extras.
# Without CUDA, the CPU build of torch is installed first, so pip never pulls the multi-GB
# CUDA build to satisfy the package's torch range. Set TORCH_INDEX_URL to install torch
# from another index (e.g. PyTorch's CPU wheel index).
# On a Jetson (L4T's /etc/nv_tegra_release exists) the venv sees the system site packages, so
# JetPack's torch and TensorRT (python3-libnvinfer) are kept, not replaced from PyPI.
#   bash scripts/setup.sh --detect   prints what it found and what it would do, and changes nothing.
# CUNET_EDGE_TEGRA_RELEASE names another release file (tests, containers with L4T mounted elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TEGRA_RELEASE="${CUNET_EDGE_TEGRA_RELEASE:-/etc/nv_tegra_release}"

# The version of module $2 as the Python $1 imports it, or "missing".
module_version() {
  "$1" -c "import $2 as m; print(getattr(m, '__version__', 'unknown'))" 2>/dev/null || echo missing
}

detect() {
  JETSON=0
  if [ -r "$TEGRA_RELEASE" ]; then
    JETSON=1
    echo "Jetson: $(head -n 1 "$TEGRA_RELEASE") ($TEGRA_RELEASE)"
    local torch trt cuda
    read -r torch cuda < <("$PY" -c 'import torch; print(torch.__version__, "yes" if torch.cuda.is_available() else "no")' \
                           2>/dev/null || echo missing no)
    trt="$(module_version "$PY" tensorrt)"
    echo "system Python: $("$PY" -c 'import sys; print(sys.version.split()[0])') ($PY)"
    if [ "$torch" = missing ]; then
      echo "JetPack torch: not found. Install NVIDIA's torch wheel for your JetPack first; the PyPI aarch64" \
           "wheel setup.sh would install has no CUDA"
    else
      echo "JetPack torch: $torch (CUDA available: $cuda), kept"
      if [ "$cuda" != yes ]; then
        echo "warning: torch $torch sees no CUDA device: not JetPack's build? (NVIDIA's wheel for your JetPack has CUDA)"
      fi
    fi
    if [ "$trt" = missing ]; then
      echo "TensorRT Python module: not found (sudo apt install python3-libnvinfer); engines can still be" \
           "built with trtexec (/usr/src/tensorrt/bin)"
    else
      echo "TensorRT Python module: $trt, kept"
    fi
    echo "venv: .venv with --system-site-packages"
  else
    echo "not a Jetson ($TEGRA_RELEASE not found): a plain .venv"
  fi
}

detect
if [ "${1:-}" = "--detect" ]; then
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  if [ "$JETSON" = 1 ]; then
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
elif [ "$JETSON" = 1 ] && ! grep -qs '^include-system-site-packages = true' .venv/pyvenv.cfg; then
  echo "warning: .venv exists without system site packages: JetPack's torch and TensorRT are not visible in it;" \
       "remove .venv and run this again"
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && [ "$JETSON" = 0 ]; then
    pip install -q torch
  elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip install -q torch --index-url "$TORCH_INDEX_URL"
  else
    pip install -q "torch==2.13.0"
  fi
fi
# Hold torch where it is: a test extra that pulls torchvision must take the build matching this torch,
# not upgrade torch to the newest (CUDA) release. On a Jetson this keeps JetPack's torch.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$CONSTRAINTS"
pip install -q -c "$CONSTRAINTS" -e ".[onnx,dev]"
python -c "import cunet_edge, torch; print('cunet-edge', cunet_edge.__version__, 'torch', torch.__version__)"
