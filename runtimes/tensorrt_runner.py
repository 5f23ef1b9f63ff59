"""TensorRTRunner: a `tensorrt-engine` artifact through TensorRT's I/O-tensor API (TensorRT 8.5 and newer).

Buffers are torch CUDA tensors and work is queued on a torch CUDA stream, so no pycuda is
needed. The engine is refused before it is deserialized when it was built for another GPU
architecture or TensorRT version (check_engine_location).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ArtifactError, ConfigError
from .base import Runner, check_feed
from .engines import ENGINE_FILE, check_engine_location, current_platform, import_tensorrt
from .numpy_sampler import engine_batches

__all__ = ["PlanRunner", "TensorRTRunner"]


def _torch_dtype(trt, torch, trt_dtype):
    """The torch dtype of a TensorRT tensor type (through numpy, which both map)."""
    return torch.from_numpy(np.zeros(0, dtype=trt.nptype(trt_dtype))).dtype


class TensorRTRunner(Runner):
    """A serialized TensorRT engine on this machine's GPU; inputs are cast to the engine's I/O types."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, artifact):
        super().__init__(artifact)
        self.engine = self.context = self.stream = None
        self._buffers: dict = {}

    def _open(self) -> None:
        trt = import_tensorrt()
        check_engine_location(self.artifact.manifest, current_platform(), path=self.artifact.path)
        self._where, self._profile = self.artifact.path, self.artifact.manifest.get("profile")
        self._load(trt, self.artifact.file(ENGINE_FILE).read_bytes())

    def _load(self, trt, plan: bytes) -> None:
        import torch

        self._trt, self._torch = trt, torch
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialize the engine of {self._where}")
        self.context = self.engine.create_execution_context()
        # The current stream, so that CUDA events recorded around a call (bench) time the engine's work.
        self.stream = torch.cuda.current_stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, torch, self.engine.get_tensor_dtype(n)) for n in names}

    def close(self) -> None:
        self._buffers = {}
        self.context = self.engine = self.stream = None

    def batch_range(self) -> tuple[int, int] | None:
        """(min, max) batch of a dynamic-batch engine's profile; None for a static one."""
        p = self.artifact.manifest.get("profile")
        return (p["min"], p["max"]) if p else None

    def _check_batch(self, feed) -> None:
        b, rng = len(feed["x"]), self.batch_range()
        if rng and not rng[0] <= b <= rng[1]:
            src = (self.artifact.manifest.get("parent") or {}).get("path") or "<onnx-artifact>"
            raise ConfigError(f"engine {self.artifact.path} takes batch {rng[0]}..{rng[1]}, not {b}: rebuild it with "
                              f"cunet-edge export {src} --format tensorrt --max-batch {max(b, rng[1])} --out <new-dir>")

    def _stage(self, feed) -> None:
        """Copy inputs to the GPU, fix the input shapes, allocate outputs and bind every address."""
        torch = self._torch
        bufs = {}
        for name in self.inputs:
            bufs[name] = torch.from_numpy(np.ascontiguousarray(feed[name])).to("cuda", self.dtypes[name])
            if not self.context.set_input_shape(name, tuple(bufs[name].shape)):
                raise ConfigError(f"TensorRT engine {self._where} refused input {name} of shape "
                                  f"{tuple(bufs[name].shape)} (profile: {self._profile})")
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            bufs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
        for name, buf in bufs.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        self._buffers = bufs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ConfigError(f"TensorRT failed to run {self._where} (its log above says why)")

    def _infer(self, feed):
        self._stage(feed)
        self._execute()
        self.stream.synchronize()
        return {name: self._buffers[name].cpu().numpy() for name in self.outputs}

    def infer(self, feed):
        """One network call; a batch outside the engine's profile goes in chunks (padded up to its min)."""
        check_feed(self.signature, feed, f"{self.name} runner for {self.artifact.path}")
        rng = self.batch_range()
        if rng is None:
            return self._infer(feed)
        eps = engine_batches(lambda x, t: self._infer({"x": x, "t": t})["eps"], *rng)
        return {"eps": eps(feed["x"], feed["t"])}

    def bind(self, feed) -> Callable[[], None]:
        """Inputs and outputs stay on the GPU; each call only enqueues the engine (synchronize() waits)."""
        super().bind(feed)
        self._check_batch(feed)
        self._stage(feed)
        return self._execute

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def describe(self) -> dict:
        m = self.artifact.manifest
        return super().describe() | {"tensorrt": m.get("tensorrt_version"), "gpu": m.get("gpu_name"),
                                     "dla_core": m.get("dla_core"), "strongly_typed": m.get("strongly_typed"),
                                     "profile": m.get("profile")}


class PlanRunner(TensorRTRunner):
    """A serialized engine held in memory, not yet an artifact (export checks the engine it built, and its debug
    build, before writing): `runner(feed)` returns every output of the engine by name."""

    def __init__(self, plan: bytes, signature: dict, where: str):  # no artifact: Runner.__init__ does not apply
        self.artifact, self.signature, self.precision = None, signature, None
        self._plan, self._where, self._profile = plan, where, None
        self.engine = self.context = self.stream = None
        self._buffers = {}

    def _open(self) -> None:
        self._load(import_tensorrt(), self._plan)

    def batch_range(self) -> None:
        return None

    def __call__(self, feed) -> dict:
        return self._infer(feed)
