"""TorchRunner: a model artifact in PyTorch, eager or torch.compile'd, on CUDA when present (TF32, fp16 and CUDA
graphs optional)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..checkpoint import load_checkpoint, with_solver
from ..config import check_choice
from ..errors import ConfigError
from ..models import profile_model
from .base import Runner

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    """PyTorch eager: `device` auto|cpu|cuda, `precision` fp32|tf32|fp16, `cuda_graphs` for bind(); `compile`:
    the model through `torch.compile` (default backend, inductor), what a PyTorch user tries first. It compiles on
    the first call of each input shape, so a timed run's warm-up pays for it.

    fp32 on CUDA is true float32: TF32 tensor-core math (which cuDNN allows for convolutions by
    default) is switched off, so the figures are what they say. tf32 switches it on; tf32 and fp16
    need CUDA. The switches are process-wide PyTorch settings, so each call sets them for itself
    (runners of different precisions can then be timed in turn in one process).
    """

    name = "torch"

    def __init__(self, artifact, *, device: str = "auto", precision: str = "fp32", cuda_graphs: bool = False,
                 threads: int | None = None, solver: str | None = None, solver_steps: int | None = None,
                 compile: bool = False):
        super().__init__(artifact)
        check_choice("device", device, ("auto", "cpu", "cuda"))
        check_choice("precision", precision, ("fp32", "tf32", "fp16"))
        if compile and cuda_graphs:
            raise ConfigError("torch.compile and CUDA graphs: pick one (compile's mode='reduce-overhead' captures "
                              "CUDA graphs itself)")
        import torch

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for, but PyTorch sees no CUDA GPU here")
        if precision != "fp32" and self.device != "cuda":
            raise ConfigError(f"{precision} in PyTorch needs CUDA here (on CPU, use fp32; "
                              "for INT8 on CPU, use cunet-edge quantize --target cpu)")
        if cuda_graphs and self.device != "cuda":
            raise ConfigError("CUDA graphs need device cuda")
        self.precision, self.cuda_graphs, self.threads, self.compile = precision, cuda_graphs, threads, compile
        self.solver = (solver, solver_steps)
        self.model = None
        self._graphs: dict[tuple, tuple] = {}

    def _open(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        ckpt = with_solver(load_checkpoint(self.artifact), *self.solver)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.model = ckpt.model.to(self.device, dtype).eval()
        if self.compile:
            self.model = torch.compile(self.model)
        self.dtype = dtype

    def close(self) -> None:
        self.model = None
        self._graphs.clear()

    def model_cost(self) -> dict:
        """Counted on a float32 CPU copy of the model with the solver it runs (FlopCounterMode)."""
        ckpt = with_solver(load_checkpoint(self.artifact), *self.solver)
        cost = profile_model(ckpt.model, ckpt.config.model)
        return {k: cost[k] for k in ("params", "macs", "flops", "nfe_per_call")}

    def _to_torch(self, feed):
        import torch

        return (torch.from_numpy(np.ascontiguousarray(feed["x"])).to(self.device, self.dtype),
                torch.from_numpy(np.ascontiguousarray(feed["t"])).to(self.device))

    def _math_mode(self) -> None:
        if self.device == "cuda":
            import torch

            tf32 = self.precision == "tf32"
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def _infer(self, feed):
        import torch

        self._math_mode()
        x, t = self._to_torch(feed)
        with torch.no_grad():
            if self.cuda_graphs:
                graph, eps = self._graph(x, t)
                graph.replay()
            else:
                eps = self.model(x, t)
        return {"eps": eps.float().cpu().numpy()}

    def _graph(self, x, t):
        """The CUDA graph for this input shape (captured on first use) with x, t copied into its inputs: graph, output.

        Every call of that shape, sampler steps included, replays it after copying its inputs into
        the graph's own input tensors: one launch per network call instead of hundreds.
        """
        import torch

        key = tuple(x.shape)
        if key not in self._graphs:
            xs, ts = x.clone(), t.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(3):  # warm up on a side stream before capture, as CUDA graphs require
                    self.model(xs, ts)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():  # kernels keep the math mode of the capture
                out = self.model(xs, ts)
            self._graphs[key] = (graph, xs, ts, out)
        graph, xs, ts, out = self._graphs[key]
        xs.copy_(x)
        ts.copy_(t)
        return graph, out

    def bind(self, feed) -> Callable[[], None]:
        """Inputs moved to the device once; with cuda_graphs, one captured graph replayed per call."""
        import torch

        super().bind(feed)
        self._math_mode()
        x, t = self._to_torch(feed)
        if not self.cuda_graphs:
            def call():
                self._math_mode()
                with torch.no_grad():
                    self.model(x, t)
            return call
        return self._graph(x, t)[0].replay

    def synchronize(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def describe(self) -> dict:
        import torch

        d = super().describe() | {"torch": torch.__version__, "cuda_graphs": self.cuda_graphs,
                                  "compiled": self.compile}
        if self.device == "cuda":
            d["gpu"] = torch.cuda.get_device_name()
        return d
