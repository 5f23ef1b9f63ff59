"""Where a GPU engine may run, and the imports of its backends: shared by the TensorRT and
torch-tensorrt runners and the export stages that build for them.

Engines (and torch-tensorrt programs) only run on the GPU architecture and TensorRT version that
built them: their manifests record both (`current_platform()` at build time) and every runner
checks them (`check_engine_location`) before it deserializes anything.
"""

from __future__ import annotations

from ..errors import ArtifactError, ConfigError, import_backend

__all__ = ["ENGINE_FILE", "PROGRAM_FILE", "TRT_HINT", "TORCH_TRT_HINT", "import_tensorrt", "import_torch_tensorrt",
           "current_platform", "check_engine_location"]

ENGINE_FILE = "engine.plan"
PROGRAM_FILE = "model.ep"
TRT_HINT = "pip install tensorrt (on Jetson: sudo apt install nvidia-jetpack / python3-libnvinfer)"
TORCH_TRT_HINT = "pip install torch-tensorrt (matching your torch; on Jetson: NVIDIA's JetPack wheels)"


def _where(info: dict) -> str:
    return (f"{info.get('gpu_name') or 'an unknown GPU'} (sm {info.get('compute_capability') or '?'}, "
            f"TensorRT {info.get('tensorrt_version') or '?'})")


def check_engine_location(manifest: dict, here: dict, *, path=None) -> None:
    """Refuse an engine built for another GPU architecture or TensorRT version than `here` (current_platform())."""
    keys = ("compute_capability", "tensorrt_version")
    if all(manifest.get(k) == here.get(k) for k in keys):
        return
    src = (manifest.get("parent") or {}).get("path") or "<onnx-artifact>"
    name = f"engine {path}" if path else "this engine"
    raise ArtifactError(f"{name} was built on {_where(manifest)}; this machine has {_where(here)}: "
                        f"rebuild it here with cunet-edge export {src} --format tensorrt --out <new-dir>")


def import_tensorrt():
    """The tensorrt module, or a one-line BackendMissingError with the install hint."""
    return import_backend("tensorrt", "tensorrt", TRT_HINT)


def current_platform() -> dict[str, str]:
    """This machine's GPU name, compute capability ("8.7") and TensorRT version, as engines record them."""
    trt = import_tensorrt()
    torch = import_backend("torch", "torch", "pip install torch (on Jetson: NVIDIA's JetPack wheel)")
    if not torch.cuda.is_available():
        raise ConfigError("TensorRT needs a CUDA GPU, and PyTorch sees none on this machine")
    major, minor = torch.cuda.get_device_capability()
    return {"gpu_name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
            "tensorrt_version": trt.__version__}


def import_torch_tensorrt():
    """The torch_tensorrt module, or a one-line BackendMissingError with the install hint."""
    return import_backend("torch_tensorrt", "torch-tensorrt", TORCH_TRT_HINT)
