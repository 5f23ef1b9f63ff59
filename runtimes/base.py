"""The one runner interface every backend implements, and the registry that opens them by name.

A runner wraps one artifact on one backend. It is a context manager; `infer(feed)` takes a
dict of numpy arrays named like the artifact's signature (`x` (B, C, H, W), `t` (B,)) and
returns `{"eps": array}`. Inputs are checked against the signature before they reach the
backend, so a wrong shape or dtype is a one-line error, not a backend stack trace.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..artifact import Artifact
from ..checkpoint import read_train_config
from ..errors import ArtifactError, ConfigError
from ..kinds import KINDS, check_kind_files, kinds_run_by
from ..records import check_solver_request, precision_of

__all__ = ["Runner", "RUNTIMES", "open_runner", "check_feed"]

# runtime name -> "module:class", imported on use (heavy backends stay unimported).
RUNTIMES = {
    "torch": "cunet_edge.runtimes.torch_runner:TorchRunner",
    "onnxruntime": "cunet_edge.runtimes.onnxruntime_runner:OnnxRuntimeRunner",
    "tensorrt": "cunet_edge.runtimes.tensorrt_runner:TensorRTRunner",
    "torch-tensorrt": "cunet_edge.runtimes.torch_tensorrt_runner:TorchTensorRTRunner",
}
def check_feed(signature: dict, feed: dict[str, Any], where: str) -> None:
    """Names, dtypes and fixed dimensions of `feed` against a signature; one batch size for all inputs."""
    inputs = signature["inputs"]
    if set(feed) != set(inputs):
        raise ConfigError(f"{where} takes inputs {sorted(inputs)}, got {sorted(feed)}")
    batch = set()
    for name, spec in inputs.items():
        arr = feed[name]
        if str(arr.dtype) != spec["dtype"]:
            raise ConfigError(f"{where}: input {name!r} must be {spec['dtype']}, got {arr.dtype}")
        if arr.ndim != len(spec["shape"]):
            raise ConfigError(f"{where}: input {name!r} must have shape {_shape_text(spec['shape'])}, got {tuple(arr.shape)}")
        for i, (want, got) in enumerate(zip(spec["shape"], arr.shape)):
            if isinstance(want, int) and want != got:
                raise ConfigError(f"{where}: input {name!r} must have shape {_shape_text(spec['shape'])}, "
                                  f"got {tuple(arr.shape)}")
        batch.add(arr.shape[0])
    if len(batch) > 1:
        raise ConfigError(f"{where}: inputs disagree on the batch size: {sorted(batch)}")


def _shape_text(shape) -> str:
    return "(" + ", ".join("B" if not isinstance(d, int) else str(d) for d in shape) + ")"


class Runner:
    """Base class: one artifact on one backend. Subclasses implement `_open`, `_infer`, and maybe `bind`."""

    name = "base"
    precision = "fp32"
    device = "cpu"

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.signature = artifact.manifest["signature"]
        self.precision = precision_of(artifact.manifest)

    def __enter__(self) -> "Runner":
        self._open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's resources (sessions, engines, device memory)."""

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one network call: {"x": (B, C, H, W), "t": (B,)} → {"eps": (B, C, H, W)} as numpy."""
        check_feed(self.signature, feed, f"{self.name} runner for {self.artifact.path}")
        return self._infer(feed)

    def bind(self, feed: dict[str, np.ndarray]) -> Callable[[], None]:
        """A zero-argument call that runs `feed` once, for timing; GPU runners keep inputs on the device."""
        check_feed(self.signature, feed, f"{self.name} runner for {self.artifact.path}")
        return lambda: self._infer(feed)

    def synchronize(self) -> None:
        """Wait for queued device work (GPU runners); a no-op on CPU."""

    def eps_fn(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """The runner as a sampler's denoiser: float32 x and int t in, float32 ε out (cast to the model's dtype)."""
        dtype = np.dtype(self.signature["inputs"]["x"]["dtype"])

        def eps(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            out = self.infer({"x": x.astype(dtype, copy=False), "t": t.astype(np.int64, copy=False)})["eps"]
            return out.astype(np.float32, copy=False)

        return eps

    def model_cost(self) -> dict | None:
        """params / MACs / NFE per network call at batch 1, as recorded when the artifact was exported."""
        return self.artifact.manifest.get("model_cost")

    def train_config(self):
        """The training config the artifact descends from (diffusion schedule, data, model)."""
        return read_train_config(self.artifact)

    def static_batch(self) -> int | None:
        """The batch size the artifact was built for, or None if any batch runs."""
        b = self.signature["inputs"]["x"]["shape"][0]
        return b if isinstance(b, int) else None

    def describe(self) -> dict[str, Any]:
        """What the runner runs on, for benchmark records."""
        return {"runtime": self.name, "precision": self.precision, "device": self.device}


def open_runner(artifact: str | Path | Artifact, runtime: str, *, solver: str | None = None,
                solver_steps: int | None = None, **options) -> Runner:
    """Open an artifact (a path, or an Artifact already opened) on the named runtime (not yet entered);
    refuses artifacts the runtime cannot run."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; valid runtimes: {', '.join(RUNTIMES)}")
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
    path = art.path
    kinds = kinds_run_by(runtime)
    if art.kind not in kinds:
        hint = KINDS[art.kind].runtime if art.kind in KINDS else None
        raise ArtifactError(f"{path} is an artifact of kind {art.kind!r}; runtime {runtime!r} runs "
                            f"{', '.join(kinds)}" + (f" (use --runtime {hint})" if hint else ""))
    if "signature" not in art.manifest:
        raise ArtifactError(f"{path}/manifest.json has no input/output signature")
    check_kind_files(art.manifest, path)
    check_solver_request(art.manifest, path, solver, solver_steps)
    if runtime == "torch":  # a checkpoint runs through torchdiffeq with any solver asked for
        options.update(solver=solver, solver_steps=solver_steps)
    module, attr = RUNTIMES[runtime].split(":")
    return getattr(importlib.import_module(module), attr)(art, **options)
