"""torch-tensorrt: an unrolled model compiled through Torch-TensorRT's dynamo path, saved as an ExportedProgram.

An alternative to the ONNX → engine route that stays inside PyTorch (TensorRT subgraphs, PyTorch
fallback for anything TensorRT cannot convert). Like an engine it runs only on the GPU and
TensorRT version that compiled it, so its manifest records both and the runner checks them.

fp16 halves the model and its `x` input, so precision is carried by the tensor types (the only
way newer Torch-TensorRT, with explicit typing on by default, takes it); older releases also
get `enabled_precisions`. The batch is static by default: saving a program with a dynamic
batch needs a Torch-TensorRT recent enough to take `dynamic_shapes` in `save`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, ArtifactWriter, check_output_path
from ..checkpoint import CONFIG, load_checkpoint, model_signature
from ..config import check_choice, check_positive, to_dict
from ..errors import ConfigError
from ..kinds import STAGE_IO
from ..records import SOLVER
from ..runtimes.engines import PROGRAM_FILE, current_platform, import_torch_tensorrt

__all__ = ["TorchTensorRTConfig", "compile_torch_tensorrt"]


@dataclass(frozen=True)
class TorchTensorRTConfig:
    """Torch-TensorRT compile settings: precision, batch (static, or the opt batch of min_batch..max_batch)."""

    precision: str = "fp32"
    batch: int = 1
    dynamic_batch: bool = False
    min_batch: int = 1
    max_batch: int = 16
    workspace_mb: int = 1024

    def __post_init__(self):
        check_choice("precision", self.precision, ("fp32", "fp16"))
        for name in ("batch", "min_batch", "max_batch", "workspace_mb"):
            check_positive(name, getattr(self, name))
        if self.dynamic_batch and not self.min_batch <= self.batch <= self.max_batch:
            raise ConfigError(f"batch {self.batch} is outside min_batch..max_batch "
                              f"({self.min_batch}..{self.max_batch})")


def _signature(model_cfg, cfg: TorchTensorRTConfig) -> dict:
    sig = model_signature(model_cfg)
    batch = "batch" if cfg.dynamic_batch else cfg.batch
    for spec in (*sig["inputs"].values(), *sig["outputs"].values()):
        spec["shape"][0] = batch
    if cfg.precision == "fp16":
        sig["inputs"]["x"]["dtype"] = sig["outputs"]["eps"]["dtype"] = "float16"
    return sig


def _inputs(torch_tensorrt, torch, sig: dict, cfg: TorchTensorRTConfig):
    """torch_tensorrt.Input specs (a min/opt/max batch range when dynamic) and example tensors at the opt batch."""
    specs, examples = [], []
    for spec in sig["inputs"].values():
        dtype = getattr(torch, spec["dtype"])
        rest = tuple(spec["shape"][1:])
        if cfg.dynamic_batch:
            specs.append(torch_tensorrt.Input(min_shape=(cfg.min_batch, *rest), opt_shape=(cfg.batch, *rest),
                                              max_shape=(cfg.max_batch, *rest), dtype=dtype))
        else:
            specs.append(torch_tensorrt.Input(shape=(cfg.batch, *rest), dtype=dtype))
        examples.append(torch.zeros((cfg.batch, *rest), dtype=dtype, device="cuda"))
    return specs, examples


def _precision_kwargs(torch_tensorrt, torch, precision: str) -> dict:
    """enabled_precisions for releases that still type weakly; with explicit typing the half model says it."""
    if precision == "fp32":
        return {}
    explicit = inspect.signature(torch_tensorrt.dynamo.compile).parameters.get("use_explicit_typing")
    if explicit is not None and explicit.default is True:
        return {}
    return {"enabled_precisions": {torch.float16}}


def _save(torch_tensorrt, torch, module, path: Path, examples, cfg: TorchTensorRTConfig) -> None:
    kwargs = {}
    if cfg.dynamic_batch:
        batch = torch.export.Dim("batch", min=cfg.min_batch, max=cfg.max_batch)
        kwargs["dynamic_shapes"] = {"x": {0: batch}, "t": {0: batch}}
    torch_tensorrt.save(module, str(path), output_format="exported_program", inputs=examples, **kwargs)


def compile_torch_tensorrt(src, cfg: TorchTensorRTConfig, out) -> Artifact:
    """Stage: an unrolled (or pruned) model artifact → a `torch-tensorrt` artifact (ExportedProgram) for this GPU."""
    check_output_path(out)
    ckpt = load_checkpoint(src, kinds=STAGE_IO["export-torch-tensorrt"].accepts)
    torch_tensorrt = import_torch_tensorrt()
    import torch

    here = current_platform()
    dtype = torch.float16 if cfg.precision == "fp16" else torch.float32
    model = ckpt.model.to("cuda", dtype).eval()
    sig = _signature(ckpt.config.model, cfg)
    specs, examples = _inputs(torch_tensorrt, torch, sig, cfg)
    with torch.no_grad():
        module = torch_tensorrt.compile(model, ir="dynamo", inputs=specs, workspace_size=cfg.workspace_mb << 20,
                                        **_precision_kwargs(torch_tensorrt, torch, cfg.precision))
    with ArtifactWriter(out, kind=STAGE_IO["export-torch-tensorrt"].produces(), stage="export", config=to_dict(cfg), parent=ckpt.artifact) as w:
        _save(torch_tensorrt, torch, module, w.dir / PROGRAM_FILE, examples, cfg)
        (w.dir / CONFIG).write_text(json.dumps(to_dict(ckpt.config), indent=2) + "\n")
        w.manifest.update(
            here, precision=cfg.precision, signature=sig, solver=ckpt.artifact.manifest.get(SOLVER),
            dynamic_batch=cfg.dynamic_batch, batch=cfg.batch, torch_tensorrt_version=torch_tensorrt.__version__,
            profile={"min": cfg.min_batch, "opt": cfg.batch, "max": cfg.max_batch} if cfg.dynamic_batch else None,
        )
    return w.artifact
