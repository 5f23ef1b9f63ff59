"""ONNX export of an unrolled model: dynamo exporter, checked, simplified, verified against PyTorch.

The graph is simplified with ONNX Runtime's offline optimizer at its *basic* level: the
semantics-preserving rewrites (constant folding, redundant-node removal) that emit only
standard ONNX ops, so the file stays portable to TensorRT's parser and other runtimes.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .. import models
from ..artifact import ArtifactWriter
from ..checkpoint import CONFIG, load_checkpoint
from ..config import check_choice, check_positive, to_dict
from ..errors import BackendMissingError, ConfigError, CunetEdgeError
from ..kinds import STAGE_IO
from ..models import profile_model
from ..records import SOLVER
from ..timing import PhaseClock
from .graph_cost import graph_costs
from .trt_compat import check_tensorrt_compat
from ..limits import check_seed

__all__ = ["OnnxExportConfig", "export_onnx", "ExportVerificationError", "ONNX_FILE"]

PRECISIONS = ("fp32", "fp16")
ONNX_FILE = "model.onnx"
# Relative-error tolerance of the verification, per precision (fp16 has a ~1e-3 unit roundoff).
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


class ExportVerificationError(CunetEdgeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""

@dataclass(frozen=True)
class OnnxExportConfig:
    """ONNX export settings: precision, batch (static, or dynamic with `batch` as the typical size), checks."""

    precision: str = "fp32"
    dynamic_batch: bool = True
    batch: int = 1
    opset: int = 18
    simplify: bool = True
    verify_n: int = 8
    tolerance: float | None = None
    seed: int = 0

    def __post_init__(self):
        check_seed(self.seed)
        check_choice("precision", self.precision, PRECISIONS)
        check_positive("batch", self.batch)
        check_positive("verify_n", self.verify_n)
        if self.opset < 18:
            raise ConfigError(f"opset must be >= 18 (the dynamo exporter's minimum), got {self.opset}")
        if self.tolerance is not None:
            check_positive("tolerance", self.tolerance)

    @property
    def rel_tolerance(self) -> float:
        return self.tolerance if self.tolerance is not None else DEFAULT_TOLERANCE[self.precision]


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BackendMissingError("onnx/onnxruntime", "pip install 'cunet-edge[onnx]'") from None


def require_static(ckpt) -> None:
    """Refuse a checkpoint whose network still solves ODEs with torchdiffeq (adaptive loops; no static graph).

    Unrolled and pruned artifacts are static by construction; a checkpoint is static when it is a U-Net,
    or an imported network whose forward makes no torchdiffeq solve (run once to see).
    """
    import torch

    if ckpt.artifact.kind != "checkpoint":
        return
    m, path = ckpt.config.model, ckpt.artifact.path
    hint = f"unroll it first: cunet-edge unroll {path} --method rk4 --steps 1 --out DIR"
    if m.arch == "cunet":
        raise ConfigError(f"{path} is a continuous U-Net whose ODE blocks run torchdiffeq; {hint}")
    if m.arch == "imported" and not m.unroll_method:
        x = torch.zeros(1, m.in_channels, m.image_size, m.image_size)
        t = torch.full((1,), ckpt.config.diffusion.timesteps // 2, dtype=torch.long)
        stats = models.count_odeint_calls(ckpt.model, x, t, method="euler", steps=1, require=False)
        if stats.calls:
            raise ConfigError(f"{path}'s network calls torchdiffeq ({stats.calls} solves per call); {hint}")


def _signature(model_cfg, cfg: OnnxExportConfig) -> dict:
    b = "batch" if cfg.dynamic_batch else cfg.batch
    dtype = "float16" if cfg.precision == "fp16" else "float32"
    shape = [b, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size]
    return {"inputs": {"x": {"shape": shape, "dtype": dtype}, "t": {"shape": [b], "dtype": "int64"}},
            "outputs": {"eps": {"shape": shape, "dtype": dtype}}}


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs a warning per missing optional op library (torchvision); keep the terminal clean."""
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # x and t share one batch dim; the exporter says so once per export.
            warnings.filterwarnings("ignore", message=".*The axis name: .* will not be used")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


# What an fp16 export keeps in float32 (see `_keep_fp32`).
FP32_PARTS = ("timestep_embedding", "group_norm")
# Where over the schedule the per-timestep ε error is measured: fractions of T (T = 1000: 0, 100, ..., 999).
ERROR_TIMESTEPS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def _keep_fp32(model, parts=FP32_PARTS) -> list[str]:
    """Cast `model` to float16 but for what float16 cannot hold; return the names of what stayed float32.

    - The timestep embedding: the continuous U-Net's `time_mlp` (with it the sinusoid, which `embed_time`
      computes at the MLP's precision). In float16 the argument t·f_k has a 0.5 ulp near t = 999, so the
      sinusoid alone is several percent off. (diffusers' U-Nets already compute their sinusoid in float32.)
    - Every GroupNorm: its statistics (a mean of squares over C/G·H·W values) are computed in float32 from
      the float16 activations and the normalized result is cast back; a float16 sum of squares overflows at
      65504 and loses the small variances. TensorRT's guidance for FP16 normalization is the same.
    The casts at these boundaries are in the graph, so a strongly typed TensorRT build keeps them as well.
    """
    import torch

    class Float32(torch.nn.Module):
        """Runs the wrapped module in float32 between casts: x → float32 → module → x's dtype."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.float()).to(x.dtype)

    model.half()
    kept = []
    time_mlp = getattr(model, "time_mlp", None)
    if "timestep_embedding" in parts and isinstance(time_mlp, torch.nn.Module) and hasattr(model, "embed_time"):
        time_mlp.float()
        kept.append("time_mlp")
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if "group_norm" in parts and isinstance(child, torch.nn.GroupNorm):
                setattr(mod, child_name, Float32(child.float()))
                kept.append(f"{name}.{child_name}" if name else child_name)
    return kept


def _torch_export(model, model_cfg, cfg: OnnxExportConfig, path: Path) -> list[str]:
    """torch.onnx.export with the dynamo exporter (the default one): x (B, C, H, W), t (B,) → eps."""
    import torch

    dtype = torch.float16 if cfg.precision == "fp16" else torch.float32
    b = max(cfg.batch, 2) if cfg.dynamic_batch else cfg.batch  # a batch of 1 would be specialized away
    x = torch.randn(b, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size, dtype=dtype)
    t = torch.arange(b, dtype=torch.long)
    dyn = None
    if cfg.dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dyn = {"x": {0: batch}, "t": {0: batch}}
    # The exporter's own optimizer is replaced by `_fold` (see there); torch < 2.6 has no `optimize`.
    no_opt = {"optimize": False} if "optimize" in inspect.signature(torch.onnx.export).parameters else {}
    kept = _keep_fp32(model) if cfg.precision == "fp16" else []
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(model, (x, t), dynamo=True, opset_version=cfg.opset,
                                    input_names=["x", "t"], output_names=["eps"], dynamic_shapes=dyn,
                                    verbose=False, **no_opt)
        _fold(program.model)
        program.save(str(path))
    return kept


def _fold(model) -> None:
    """onnxscript's constant folding and dead-node removal on the exporter's graph (onnx_ir, in place).

    This is `torch.onnx.export(optimize=True)` without onnxscript's pattern rewriter, whose ~46 rules are
    matched against every node of the unfolded graph: measured in one process (process time, 2-core CPU),
    exporting an unrolled rk4 x 2 model took 31.8 s this way against 41.9 s with the rewriter, and the
    default 16 px model 8.2 s against 8.9 s. After ONNX Runtime's basic level (`_simplify`) the graphs differ
    by a few shape-only nodes (1,479 against 1,468 nodes; 138 against 133). Folding itself stays: without it
    that basic level leaves ~540 more nodes (CastLike, Expand, SequenceAt); and the common-subexpression pass
    shares the time embedding that every unrolled ODE evaluation would otherwise recompute.
    """
    import onnx_ir.passes.common as common
    import onnxscript.optimizer as opt

    opt.inline(model)
    opt.fold_constants(model, onnx_shape_inference=True)
    for step in (common.RemoveUnusedNodesPass(),
                 common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                 common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass()):
        step(model)


def _simplify(path: Path) -> None:
    """Rewrite `path` with ONNX Runtime's basic-level offline optimizations (standard ops only)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tmp = path.with_suffix(".opt.onnx")
    opts.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    tmp.replace(path)


def _tidy(path: Path) -> None:
    """Drop what a runtime never reads: the exporter's per-node debug metadata (stack traces, FX nodes:
    ~40% of the file) and the op domains ONNX Runtime declares in files it writes but the graph never uses."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.save(model, str(path))


def _op_histogram(model) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                               for n in model.graph.node).items()))


def _graph_macs(model, batch: int) -> int:
    """MACs per call at batch 1 of the Conv/MatMul/Gemm nodes left in the exported graph.

    Lower than PyTorch's count when the exporter drops solver evaluations that never reach the
    output (the last stage of a one-step solver only updates the velocity, which is not output).
    """
    flops = sum(c.flops for c in graph_costs(model, batch, "fp32") if c.op in ("Conv", "MatMul", "Gemm"))
    return flops // (2 * batch)


def _run_onnx(sess, x, t, cfg: OnnxExportConfig):
    """ONNX Runtime's ε for float32 inputs (x, t), in chunks the graph's batch accepts, as float64."""
    import numpy as np

    dtype = np.float16 if cfg.precision == "fp16" else np.float32
    step = len(x) if cfg.dynamic_batch else cfg.batch
    outs = []
    for i in range(0, len(x), step):
        xb, tb = x[i:i + step], t[i:i + step]
        k = xb.shape[0]
        if k < step:  # a static batch: pad the last chunk, drop the padding's outputs
            xb, tb = np.resize(xb, (step, *xb.shape[1:])), np.resize(tb, (step,))
        outs.append(sess.run(None, {"x": xb.astype(dtype), "t": tb})[0][:k])
    return np.concatenate(outs).astype(np.float64)


def _rel(out, ref) -> float:
    import numpy as np

    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def per_timestep_error(sess, reference, model_cfg, diffusion_cfg, cfg: OnnxExportConfig, n: int = 4) -> list[dict]:
    """The ε relative error (‖ε_onnx − ε_torch‖ / ‖ε_torch‖, fp32 PyTorch as reference) at timesteps spread over
    the schedule (`ERROR_TIMESTEPS`), each on `n` seeded N(0, 1) inputs."""
    import numpy as np
    import torch

    T = diffusion_cfg.timesteps
    rows = []
    for k, frac in enumerate(ERROR_TIMESTEPS):
        g = torch.Generator().manual_seed(cfg.seed + 1 + k)
        x = torch.randn(n, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size, generator=g)
        t = torch.full((n,), min(round(frac * T), T - 1), dtype=torch.long)
        with torch.no_grad():
            ref = reference(x, t).numpy().astype(np.float64)
        rows.append({"t": int(t[0]), "rel_err": _rel(_run_onnx(sess, x.numpy(), t.numpy(), cfg), ref)})
    return rows


def verify_onnx(path: Path, reference, model_cfg, diffusion_cfg, cfg: OnnxExportConfig) -> dict:
    """ONNX Runtime vs the fp32 PyTorch model on seeded inputs whose timesteps span the whole schedule, and the
    ε error at each of `ERROR_TIMESTEPS` (`per_timestep`)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    n = cfg.verify_n
    x = torch.randn(n, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size, generator=g)
    t = torch.as_tensor(np.round(np.linspace(0, diffusion_cfg.timesteps - 1, n)).astype(np.int64))
    with torch.no_grad():
        ref = reference(x, t).numpy().astype(np.float64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = _run_onnx(sess, x.numpy(), t.numpy(), cfg)
    diff = np.abs(out - ref)
    return {"n": n, "timesteps": t.tolist(), "max_abs_err": float(diff.max()),
            "max_rel_err": float(diff.max() / np.abs(ref).max()), "rel_err": _rel(out, ref),
            "tolerance": cfg.rel_tolerance, "reference": "pytorch fp32",
            "per_timestep": per_timestep_error(sess, reference, model_cfg, diffusion_cfg, cfg)}


def export_onnx(src, cfg: OnnxExportConfig, out: str | Path):
    """Stage: an unrolled (or pruned) model artifact → an `onnx` artifact, verified against PyTorch."""
    import onnx


    _require_onnx()
    clock = PhaseClock()
    ckpt = load_checkpoint(src, kinds=STAGE_IO["export"].accepts)
    require_static(ckpt)
    model_cfg = ckpt.config.model
    clock.lap("load")
    cost = profile_model(ckpt.model, model_cfg)
    clock.lap("profile")
    with ArtifactWriter(out, kind=STAGE_IO["export"].produces(), stage="export", config=to_dict(cfg),
                        parent=ckpt.artifact) as w:
        path = w.dir / ONNX_FILE
        kept_fp32 = _torch_export(copy.deepcopy(ckpt.model), model_cfg, cfg, path)
        clock.lap("torch_export")
        onnx.checker.check_model(str(path), full_check=True)
        nodes_exported = len(onnx.load(str(path)).graph.node)
        clock.lap("check")
        if cfg.simplify:
            _simplify(path)
        clock.lap("simplify")
        _tidy(path)
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        clock.lap("tidy_and_check")
        check = verify_onnx(path, ckpt.model, model_cfg, ckpt.config.diffusion, cfg)
        clock.lap("verify")
        if not check["rel_err"] <= cfg.rel_tolerance:
            raise ExportVerificationError(
                f"ONNX Runtime's output differs from PyTorch's: relative error {check['rel_err']:.3g} > tolerance "
                f"{cfg.rel_tolerance:g} ({cfg.precision}); nothing was written")

        compat = check_tensorrt_compat(proto)
        graph_macs = _graph_macs(proto, 1 if cfg.dynamic_batch else cfg.batch)
        clock.lap("costs_and_compat")
        (w.dir / CONFIG).write_text(json.dumps(to_dict(ckpt.config), indent=2) + "\n")
        w.manifest.update(
            precision=cfg.precision, kept_fp32=kept_fp32, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch,
            batch=cfg.batch,
            signature=_signature(model_cfg, cfg), solver=ckpt.artifact.manifest.get(SOLVER),
            model_cost={k: cost[k] for k in ("params", "macs", "flops", "nfe_per_call")}
            | {"graph_macs": graph_macs},
            verification=check, nodes={"exported": nodes_exported, "simplified": len(proto.graph.node)},
            ops=_op_histogram(proto),
            tensorrt_compat={k: compat[k] for k in ("ok", "problems", "source")},
            timings_s=clock.laps, cpu_timings_s=clock.cpu_laps,  # each phase's wall and CPU seconds (scale studies)
        )
    return w.artifact
