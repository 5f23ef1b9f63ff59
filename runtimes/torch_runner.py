"""TorchRunner: a model artifact in PyTorch eager mode, on CUDA when present (fp16 and CUDA graphs optional)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..config import check_choice
from ..errors import ConfigError
from .base import Runner

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    """PyTorch eager: `device` auto|cpu|cuda, `precision` fp32|fp16 (fp16 on CUDA), `cuda_graphs` for bind()."""

    name = "torch"

    def __init__(self, artifact, *, device: str = "auto", precision: str = "fp32", cuda_graphs: bool = False,
                 threads: int | None = None, solver: str | None = None, solver_steps: int | None = None):
        super().__init__(artifact)
        check_choice("device", device, ("auto", "cpu", "cuda"))
        check_choice("precision", precision, ("fp32", "fp16"))
        import torch

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for, but PyTorch sees no CUDA GPU here")
        if precision == "fp16" and self.device != "cuda":
            raise ConfigError("fp16 in PyTorch needs CUDA here (CPU half convolutions are slower than fp32)")
        if cuda_graphs and self.device != "cuda":
            raise ConfigError("CUDA graphs need device cuda")
        self.precision, self.cuda_graphs, self.threads = precision, cuda_graphs, threads
        self.solver = (solver, solver_steps)
        self.model = None

    def _open(self) -> None:
        import torch

        from ..checkpoint import load_checkpoint, with_solver

        if self.threads:
            torch.set_num_threads(self.threads)
        ckpt = with_solver(load_checkpoint(self.artifact.path, kinds=(self.artifact.kind,)), *self.solver)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.model = ckpt.model.to(self.device, dtype).eval()
        self.dtype = dtype

    def close(self) -> None:
        self.model = None

    def model_cost(self) -> dict:
        """Counted on a float32 CPU copy of the model with the solver it runs (FlopCounterMode)."""
        from ..checkpoint import load_checkpoint, with_solver
        from ..models import profile_model

        ckpt = with_solver(load_checkpoint(self.artifact.path, kinds=(self.artifact.kind,)), *self.solver)
        cost = profile_model(ckpt.model, ckpt.config.model)
        return {k: cost[k] for k in ("params", "macs", "flops", "nfe_per_call")}

    def _to_torch(self, feed):
        import torch

        return (torch.from_numpy(np.ascontiguousarray(feed["x"])).to(self.device, self.dtype),
                torch.from_numpy(np.ascontiguousarray(feed["t"])).to(self.device))

    def _infer(self, feed):
        import torch

        with torch.no_grad():
            eps = self.model(*self._to_torch(feed))
        return {"eps": eps.float().cpu().numpy()}

    def bind(self, feed) -> Callable[[], None]:
        """Inputs moved to the device once; with cuda_graphs, one captured graph replayed per call."""
        import torch

        super().bind(feed)
        x, t = self._to_torch(feed)
        if not self.cuda_graphs:
            def call():
                with torch.no_grad():
                    self.model(x, t)
            return call
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm up on a side stream before capture, as CUDA graphs require
                self.model(x, t)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            self.model(x, t)
        return graph.replay

    def synchronize(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def describe(self) -> dict:
        import torch

        d = super().describe() | {"torch": torch.__version__, "cuda_graphs": self.cuda_graphs}
        if self.device == "cuda":
            d["gpu"] = torch.cuda.get_device_name()
        return d
