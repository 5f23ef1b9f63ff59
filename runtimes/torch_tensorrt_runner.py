"""TorchTensorRTRunner: a `torch-tensorrt` artifact (an ExportedProgram with TensorRT engines) on CUDA."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import Runner
from .engines import PROGRAM_FILE, check_engine_location, current_platform, import_torch_tensorrt

__all__ = ["TorchTensorRTRunner"]


class TorchTensorRTRunner(Runner):
    """The saved Torch-TensorRT program; refused on another GPU architecture or TensorRT version."""

    name = "torch-tensorrt"
    device = "cuda"

    def __init__(self, artifact):
        super().__init__(artifact)
        self.module = None

    def _open(self) -> None:
        torch_tensorrt = import_torch_tensorrt()  # registers the TensorRT ops the program calls
        check_engine_location(self.artifact.manifest, current_platform(), path=self.artifact.path)
        program = torch_tensorrt.load(str(self.artifact.file(PROGRAM_FILE)))
        self.module = program.module() if hasattr(program, "module") else program

    def close(self) -> None:
        self.module = None

    def _to_torch(self, feed):
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(feed[name])).to("cuda") for name in ("x", "t"))

    def _call(self, x, t):
        import torch

        with torch.no_grad():
            out = self.module(x, t)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _infer(self, feed):
        return {"eps": self._call(*self._to_torch(feed)).cpu().numpy()}

    def bind(self, feed) -> Callable[[], None]:
        """Inputs moved to the GPU once; each call runs the program (synchronize() waits)."""
        super().bind(feed)
        x, t = self._to_torch(feed)
        return lambda: self._call(x, t)

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()

    def describe(self) -> dict:
        m = self.artifact.manifest
        return super().describe() | {"tensorrt": m.get("tensorrt_version"), "gpu": m.get("gpu_name"),
                                     "torch_tensorrt": m.get("torch_tensorrt_version")}
