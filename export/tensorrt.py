"""TensorRT engine builds from ONNX artifacts, on the GPU that will run them.

Precision comes from the ONNX where the TensorRT allows it: from 10.0 the network is built
STRONGLY_TYPED (fp16 tensor types and Q/DQ nodes decide; TensorRT 11 has nothing else), while
8.5–9.x (JetPack 5) get the FP16/INT8 builder flags that match the artifact's precision. DLA
builds on 10.x also use the flags: TensorRT 10's DLA path is documented with them, and DLA runs
only FP16 and INT8 layers. Engines only run where they were built (same GPU compute capability
and TensorRT version), so the manifest records both and runners check them.

The build itself (flags, TF32 policy, profile, DLA, timing cache) is export/trt_build.py, the
module deploy bundles copy, so `export` and a bundle's build_engine.py build the same engine.
Everything here that does not touch TensorRT (the trtexec command line, the location check,
the version rules) is a pure function, tested without a GPU; the build runs in the tests against
fakes derived from the real TensorRT APIs (tests/test_trt_surface.py).
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, ArtifactWriter, check_output_path, json_text, write_atomic
from ..checkpoint import read_train_config
from ..config import check_choice, check_positive, to_dict
from ..errors import ConfigError
from ..kinds import STAGE_IO
from ..records import SOLVER
from ..runtimes.engines import ENGINE_FILE, current_platform, import_tensorrt
from ..runtimes.tensorrt_runner import PlanRunner
from . import trt_build, trt_check
from .trt_build import BUILDER_PRECISIONS, BuildError
from .trt_compat import check_tensorrt_compat

__all__ = ["LAYERS_FILE", "TRTEXEC_FILE", "EngineConfig", "build_engine", "builder_flags", "check_int8_target",
           "check_plan", "plan_runner", "trtexec_command", "uses_strong_typing"]

TRTEXEC_FILE = "trtexec.sh"
LAYERS_FILE = "layers.json"  # the engine's layers as its IEngineInspector reports them (trt_build.engine_layers)
ONNX_FILE = "model.onnx"
CONFIG_FILE = "config.json"


def _config_error(fn, *args, **kwargs):
    """Call a trt_build rule; its BuildError (the bundle has no cunet_edge) becomes a ConfigError here."""
    try:
        return fn(*args, **kwargs)
    except BuildError as e:
        raise ConfigError(str(e)) from None


@dataclass(frozen=True)
class EngineConfig:
    """TensorRT build settings (the rules are export/trt_build.py's, shared with deploy bundles).

    Batch range applies to dynamic-batch ONNX; `opt_batch` None = the ONNX's batch; a DLA build
    needs min = opt = max. `builder_precision` "auto" takes the precision from the ONNX; "fp16" also
    lets a weakly typed build (TensorRT < 10, DLA, or asked for on 10.x) pick FP16 kernels for an
    fp32 ONNX. `tf32` False turns TF32 off in an fp32 build (deploy bundles do, for their 1e-3 self-check).
    """

    workspace_mb: int = 1024
    timing_cache: str | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int = 16
    builder_precision: str = "auto"
    tf32: bool = True

    def __post_init__(self):
        for name in ("workspace_mb", "min_batch", "max_batch"):
            check_positive(name, getattr(self, name))
        if self.opt_batch is not None:
            check_positive("opt_batch", self.opt_batch)
        if self.dla_core is not None:
            check_positive("dla_core", self.dla_core, allow_zero=True)
        check_choice("builder_precision", self.builder_precision, BUILDER_PRECISIONS)
        if self.min_batch > self.max_batch:
            raise ConfigError(f"min_batch {self.min_batch} is larger than max_batch {self.max_batch}")

    def batch_range(self, batch: int) -> tuple[int, int, int]:
        """(min, opt, max) batch of the optimization profile; `batch` is the ONNX artifact's typical batch."""
        return _config_error(trt_build.batch_profile, self.min_batch, self.opt_batch or batch, self.max_batch,
                             self.dla_core)

    def settings(self, precision: str, batch: int, timing_cache: bytes | None) -> dict:
        """The trt_build settings of this config for an ONNX of `precision` and typical `batch`."""
        return dict(precision=precision, workspace_mb=self.workspace_mb, min_batch=self.min_batch,
                    opt_batch=self.opt_batch or batch, max_batch=self.max_batch, dla_core=self.dla_core,
                    gpu_fallback=self.gpu_fallback, tf32=self.tf32, builder_precision=self.builder_precision,
                    timing_cache=timing_cache)


def _version(text: str) -> tuple[int, int]:
    return _config_error(trt_build.version_tuple, text)


def uses_strong_typing(tensorrt_version: str, cfg: EngineConfig) -> bool:
    """Whether the build is STRONGLY_TYPED (precision from the ONNX) or weakly typed with builder flags."""
    return _config_error(trt_build.strongly_typed, tensorrt_version, cfg.dla_core, cfg.builder_precision)


def builder_flags(precision: str, cfg: EngineConfig) -> tuple[str, ...]:
    """Precision builder flags of a weakly typed build ("fp16", "int8"), from the ONNX precision and the config."""
    check_choice("precision", precision, ("fp32", "fp16", "int8"))
    return _config_error(trt_build.precision_flags, precision, False, cfg.dla_core, cfg.builder_precision)


def _is_dynamic(signature: dict) -> bool:
    return any(not isinstance(spec["shape"][0], int) for spec in signature["inputs"].values())


def _shapes(signature: dict, batch: int) -> str:
    """trtexec's shape spec for every input at one batch size, e.g. x:1x1x16x16,t:1."""
    specs = []
    for name, spec in signature["inputs"].items():
        dims = [batch, *spec["shape"][1:]]
        if not all(isinstance(d, int) for d in dims):
            raise ConfigError(f"input {name!r} has dynamic dims other than the batch: {spec['shape']}")
        specs.append(f"{name}:" + "x".join(map(str, dims)))
    return ",".join(specs)


def trtexec_command(onnx_file, cfg: EngineConfig, *, precision: str, signature: dict, tensorrt_version: str,
                    engine_file, batch: int = 1) -> list[str]:
    """The trtexec arguments that build the same engine as `build_engine` (for building on the board).

    `batch` is the ONNX artifact's batch, the opt batch of a dynamic profile unless cfg.opt_batch says.
    """
    cmd = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file}"]
    strong = uses_strong_typing(tensorrt_version, cfg)
    flags = _config_error(trt_build.precision_flags, precision, strong, cfg.dla_core, cfg.builder_precision)
    cmd += ["--stronglyTyped"] if strong else [f"--{flag}" for flag in flags]
    if precision == "fp32" and not cfg.tf32:
        cmd.append("--noTF32")
    if _is_dynamic(signature):
        lo, opt, hi = cfg.batch_range(batch)
        cmd += [f"--minShapes={_shapes(signature, lo)}", f"--optShapes={_shapes(signature, opt)}",
                f"--maxShapes={_shapes(signature, hi)}"]
    # --workspace=N left trtexec in 10.0; --memPoolSize takes MiB by default, and unit suffixes from 10.x.
    unit = "M" if _version(tensorrt_version)[0] >= 10 else ""
    cmd.append(f"--memPoolSize=workspace:{cfg.workspace_mb}{unit}")
    if cfg.timing_cache:
        cmd.append(f"--timingCacheFile={cfg.timing_cache}")
    if cfg.dla_core is not None:
        cmd.append(f"--useDLACore={cfg.dla_core}")
        if cfg.gpu_fallback:
            cmd.append("--allowGPUFallback")
    return cmd


def check_int8_target(art) -> None:
    """An INT8 artifact must be quantized for TensorRT: `--target cpu` is U8S8 with zero points, which it refuses."""
    m = art.manifest
    target = m.get("target") or "unknown"
    if m.get("precision") == "int8" and target != "tensorrt":
        raise ConfigError(f"{art.path} was quantized for target {target!r}, which TensorRT cannot run (it needs "
                          "symmetric INT8 Q/DQ): quantize the fp32 ONNX again with --target tensorrt")


def _check_onnx(art, tensorrt_version: str | None = None) -> dict:
    report = check_tensorrt_compat(art.file(ONNX_FILE), tensorrt_version=tensorrt_version)
    if not report["ok"]:
        raise ConfigError(f"{art.path}/{ONNX_FILE} cannot be built with TensorRT: " + "; ".join(report["problems"]))
    return report


def _engine_record(m: dict, here: dict, record: dict, report: dict):
    """What an engine's manifest says beyond the common fields: where it runs, how it was built."""
    flags, batches = record["builder_flags"], record["profile"]
    precision = "fp16" if "fp16" in flags and m["precision"] == "fp32" else m["precision"]
    return dict(
        here, precision=precision, signature=m["signature"], solver=m.get(SOLVER),
        **{k: record[k] for k in ("strongly_typed", "builder_flags", "tf32", "profile", "dla_core", "gpu_fallback",
                                  "dla_gpu_fallback_layers")},
        dynamic_batch=batches is not None, batch=batches["opt"] if batches else m.get("batch"),
        onnx_ops=report["ops"], onnx_notes=report["notes"], model_cost=m.get("model_cost"),
        op_list={k: report[k] for k in ("source", "tensorrt_version")},
    )


def plan_runner(plan: bytes, signature: dict, where: str):
    """The engine side of the check: a context manager giving feed -> every output of the serialized engine."""
    return PlanRunner(plan, signature, where)


def check_plan(trt, art, plan: bytes, settings: dict, record: dict) -> dict:
    """The engine against ONNX Runtime (CPU) on seeded inputs across the diffusion schedule (trt_check.py); on a
    mismatch, a debug build with every ONNX tensor marked as an output finds the first diverging layer."""
    import onnx

    m = art.manifest
    model = onnx.load(str(art.file(ONNX_FILE)))
    tol = trt_check.tolerance(m["precision"], tf32=bool(record.get("tf32")))
    batch = record["profile"]["opt"] if record.get("profile") else m.get("batch", 1)
    feeds = trt_check.check_feeds(m["signature"], read_train_config(art).diffusion.timesteps, batch=batch)
    order = trt_check.onnx_tensor_order(model)

    def divergence(feed):
        try:
            debug, _, rec = trt_build.build(trt, art.file(ONNX_FILE), dict(settings, timing_cache=None),
                                            mark=[tensor for tensor, _, _ in order])
        except BuildError as e:  # the engine stands, its check failed: say why the search could not run
            return {"tensor": None, "compared": 0, "error": f"the debug build failed: {e}"}
        with plan_runner(debug, m["signature"], f"{art.path} (debug build)") as test_all:
            found = trt_check.onnx_divergence(model, test_all, tol)(feed)
        return dict(found, marked=len(rec["marked_outputs"] or []))

    with plan_runner(plan, m["signature"], f"the engine built from {art.path}") as engine:
        try:
            result = trt_check.check(trt_check.ort_outputs(model), engine, feeds, tol,
                                     outputs=list(m["signature"]["outputs"]), divergence=divergence)
        except trt_check.CheckError as e:
            raise ConfigError(f"the engine check of {art.path} failed to run: {e}") from None
    result["reference"] = "ONNX Runtime CPU, graph optimizations off"
    return result


def build_engine(src, cfg: EngineConfig, out) -> Artifact:
    """Stage: an ONNX artifact (fp32, fp16 or Q/DQ int8) → a `tensorrt-engine` artifact for this GPU.

    After the build: the engine's layers (IEngineInspector, layers.json) and its check against ONNX Runtime
    (manifest `engine_check`); a failed check is recorded, printed by the CLI, and the engine still written."""
    check_output_path(out)
    art = Artifact.load(src, kinds=STAGE_IO["export-tensorrt"].accepts)
    m = art.manifest
    check_int8_target(art)
    _check_onnx(art)
    batch = m.get("batch", 1)
    if _is_dynamic(m["signature"]):
        cfg.batch_range(batch)  # the profile (and DLA's static-shape rule) before TensorRT is loaded
    if cfg.dla_core is not None:
        builder_flags(m["precision"], cfg)  # DLA runs FP16/INT8 only
    trt = import_tensorrt()
    version = trt.__version__
    report = _check_onnx(art, version)
    here = current_platform()
    cache_file = Path(cfg.timing_cache) if cfg.timing_cache else None
    cache_in = (cache_file.read_bytes() if cache_file.is_file() else b"") if cache_file else None
    settings = cfg.settings(m["precision"], batch, cache_in)
    plan, cache, record = _config_error(trt_build.build, trt, art.file(ONNX_FILE), settings)
    layers = _config_error(trt_build.engine_layers, trt, plan)
    summary = trt_build.layer_summary(layers, m["precision"])
    checked = check_plan(trt, art, plan, settings, record)
    cmd = trtexec_command(art.file(ONNX_FILE).resolve(), cfg, precision=m["precision"], signature=m["signature"],
                          tensorrt_version=version, engine_file=ENGINE_FILE, batch=batch)
    kind = STAGE_IO["export-tensorrt"].produces()
    with ArtifactWriter(out, kind=kind, stage="export", config=to_dict(cfg), parent=art) as w:
        (w.dir / ENGINE_FILE).write_bytes(plan)
        (w.dir / TRTEXEC_FILE).write_text("#!/bin/sh\n# The same build with trtexec, run in this folder.\n"
                                          + shlex.join(map(str, cmd)) + "\n")
        (w.dir / LAYERS_FILE).write_text(json_text({"tensorrt_version": version, "layers": layers}))
        shutil.copyfile(art.file(CONFIG_FILE), w.dir / CONFIG_FILE)
        w.manifest.update(_engine_record(m, here, record, report), engine_layers=dict(summary, file=LAYERS_FILE),
                          engine_check=checked)
    if cache is not None:
        write_atomic(cfg.timing_cache, cache)
    return w.artifact
