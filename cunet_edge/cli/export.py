"""`cunet-edge export`: an unrolled model to ONNX, an ONNX model to a TensorRT engine, or torch-tensorrt."""

import click

from ..artifact import check_output_path
from ..config import check_choice
from ..errors import CunetEdgeError
from ..export.onnx import DEFAULT_TOLERANCE, OnnxExportConfig, export_onnx
from ..export.tensorrt import EngineConfig, build_engine
from ..export.torch_tensorrt import TorchTensorRTConfig, compile_torch_tensorrt
from ..inspection import inspect_engine
from .inspect import engine_lines
from ._common import JSON_OPTION, config_option, write_json

FORMATS = ("onnx", "tensorrt", "torch-tensorrt")
# Options both model formats take: None when not given, so each format's config applies its own default.
BOTH = {"onnx": OnnxExportConfig, "torch-tensorrt": TorchTensorRTConfig}


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--format", "fmt", default=FORMATS[0], show_default=True, help="onnx, tensorrt or torch-tensorrt.")
@click.option("--out", required=True, type=click.Path(), help="Directory of the exported artifact.")
@config_option(BOTH, "--precision",
               help="onnx / torch-tensorrt: fp32 or fp16 (a typed FP16 graph). Engines take the ONNX's.")
@config_option(BOTH, "--dynamic-batch/--static-batch", help="Batch dimension of the inputs.")
@config_option(BOTH, "--batch", help="Static batch size (or the typical one when dynamic).")
@config_option(OnnxExportConfig, "--opset", help="ONNX opset (>= 18).")
@click.option("--tolerance", type=float, help="Max relative error vs PyTorch (default "
              + ", ".join(f"{v:g} {p}" for p, v in DEFAULT_TOLERANCE.items()) + ").")
@config_option(EngineConfig, "--workspace-mb", help="tensorrt: builder workspace limit.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="tensorrt: timing cache file to reuse.")
@click.option("--dla-core", type=int, help="tensorrt: DLA core (FP16/INT8 models, static batch: min = opt = max).")
@config_option(EngineConfig, "--gpu-fallback/--no-gpu-fallback", help="tensorrt: DLA layers it cannot run go to "
               "the GPU (else the build fails).")
@config_option(EngineConfig, "--min-batch", help="tensorrt: smallest batch of a dynamic-batch engine.")
@config_option(EngineConfig, "--opt-batch", type=int, help="tensorrt: batch the engine is tuned for "
               "(default: the ONNX's).")
@config_option(EngineConfig, "--max-batch", help="tensorrt: largest batch (runners split bigger ones).")
@config_option(EngineConfig, "--tf32/--no-tf32", help="tensorrt: allow TF32 in an fp32 build.")
@JSON_OPTION
def export(artifact, fmt, out, precision, dynamic_batch, batch, opset, tolerance, workspace_mb, timing_cache,
           dla_core, gpu_fallback, min_batch, opt_batch, max_batch, tf32, json_path):
    """Export ARTIFACT (unrolled model → onnx / torch-tensorrt; onnx → tensorrt engine)."""
    check_choice("format", fmt, FORMATS)
    check_output_path(out)
    given = {k: v for k, v in dict(precision=precision, dynamic_batch=dynamic_batch, batch=batch).items()
             if v is not None}
    if fmt == "onnx":

        cfg = OnnxExportConfig(**given, opset=opset, tolerance=tolerance)
        art = export_onnx(artifact, cfg, out)
        v = art.manifest["verification"]
        summary = (f"onnx {cfg.precision}, {art.manifest['nodes']['simplified']} nodes, vs PyTorch: rel err "
                   f"{v['rel_err']:.2e}, max abs {v['max_abs_err']:.2e}")
    elif fmt == "tensorrt":

        cfg = EngineConfig(workspace_mb=workspace_mb, timing_cache=timing_cache, dla_core=dla_core,
                           gpu_fallback=gpu_fallback, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                           tf32=tf32)
        art = build_engine(artifact, cfg, out)
        prof = art.manifest.get("profile")
        batches = f", batch {prof['min']}..{prof['max']} (opt {prof['opt']})" if prof else ""
        summary = (f"TensorRT {art.manifest['tensorrt_version']} engine for {art.manifest['gpu_name']} "
                   f"(sm {art.manifest['compute_capability']}){batches}; trtexec equivalent in {art.path}/trtexec.sh")
        summary += "\n" + "\n".join(engine_lines(inspect_engine(art))[1:])  # its layers, its check vs ONNX Runtime
    else:

        cfg = TorchTensorRTConfig(**given)
        art = compile_torch_tensorrt(artifact, cfg, out)
        summary = f"torch-tensorrt ExportedProgram ({cfg.precision})"
    click.echo(f"{art.path}  {summary}")
    write_json(json_path, {"path": str(art.path), "id": art.manifest["id"], "kind": art.kind,
                           **{k: art.manifest.get(k)
                              for k in ("precision", "verification", "model_cost", "engine_layers", "engine_check")}})
    check = art.manifest.get("engine_check")
    if check and not check.get("ok"):  # as Polygraphy and the bundle's build_engine.py: a mismatch fails the command
        raise CunetEdgeError(f"the engine does not match ONNX Runtime (see the check above); it is kept in {art.path} "
                             "for `cunet-edge inspect`, but do not deploy it")
