"""TensorRT engine builds from ONNX artifacts, on the GPU that will run them.

Precision comes from the ONNX where the TensorRT allows it: from 10.0 the network is built
STRONGLY_TYPED (fp16 tensor types and Q/DQ nodes decide; TensorRT 11 has nothing else), while
8.5–9.x (JetPack 5) get the FP16/INT8 builder flags that match the artifact's precision. DLA
builds on 10.x also use the flags: TensorRT 10's DLA path is documented with them, and DLA runs
only FP16 and INT8 layers. Engines only run where they were built (same GPU compute capability
and TensorRT version), so the manifest records both and runners check them.

Everything here that does not touch TensorRT (the trtexec command line, the location check,
the version rules) is a pure function, tested without a GPU.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, ArtifactWriter, check_output_path, write_atomic
from ..config import check_choice, check_positive, to_dict
from ..errors import ConfigError
from ..kinds import STAGE_IO
from ..records import SOLVER
from ..runtimes.engines import ENGINE_FILE, current_platform, import_tensorrt
from .trt_compat import check_tensorrt_compat

__all__ = ["TRTEXEC_FILE", "EngineConfig", "build_engine", "builder_flags", "trtexec_command", "uses_strong_typing"]

TRTEXEC_FILE = "trtexec.sh"
ONNX_FILE = "model.onnx"
CONFIG_FILE = "config.json"
MIN_VERSION = (8, 5)
BUILDER_PRECISIONS = ("auto", "fp16")


@dataclass(frozen=True)
class EngineConfig:
    """TensorRT build settings. Batch range applies to dynamic-batch ONNX; `opt_batch` None = the ONNX's batch.

    `builder_precision` "auto" takes the precision from the ONNX; "fp16" also lets a weakly typed
    build (TensorRT < 10, DLA, or asked for on 10.x) pick FP16 kernels for an fp32 ONNX.
    """

    workspace_mb: int = 1024
    timing_cache: str | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int = 16
    builder_precision: str = "auto"

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
        opt = self.opt_batch or batch
        if not self.min_batch <= opt <= self.max_batch:
            raise ConfigError(f"opt batch {opt} is outside min_batch..max_batch ({self.min_batch}..{self.max_batch})")
        return self.min_batch, opt, self.max_batch


def _version(text: str) -> tuple[int, int]:
    parts = [int(p) for p in str(text).split(".")[:2] if p.isdigit()]
    if len(parts) < 2:
        raise ConfigError(f"cannot read TensorRT version {text!r}")
    return parts[0], parts[1]


def uses_strong_typing(tensorrt_version: str, cfg: EngineConfig) -> bool:
    """Whether the build is STRONGLY_TYPED (precision from the ONNX) or weakly typed with builder flags."""
    v = _version(tensorrt_version)
    if v < MIN_VERSION:
        raise ConfigError(f"TensorRT {tensorrt_version} is too old: cunet-edge builds with TensorRT 8.5 or newer "
                          "(JetPack 5 or later)")
    if v[0] >= 11:
        if cfg.builder_precision != "auto":
            raise ConfigError(f"TensorRT {tensorrt_version} has no precision flags (builder_precision "
                              f"{cfg.builder_precision!r}): convert the ONNX to fp16 or quantize it instead")
        return True
    return v[0] == 10 and cfg.dla_core is None and cfg.builder_precision == "auto"


def builder_flags(precision: str, cfg: EngineConfig) -> tuple[str, ...]:
    """Precision builder flags of a weakly typed build ("fp16", "int8"), from the ONNX precision and the config."""
    check_choice("precision", precision, ("fp32", "fp16", "int8"))
    flags = {"fp32": (), "fp16": ("fp16",), "int8": ("int8",)}[precision]
    if cfg.builder_precision == "fp16" and "fp16" not in flags:
        flags += ("fp16",)
    if cfg.dla_core is not None and not flags:
        raise ConfigError("DLA runs FP16 and INT8 layers only, and this ONNX is fp32: export it with precision "
                          "fp16, quantize it, or set builder_precision fp16")
    return flags


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
    if uses_strong_typing(tensorrt_version, cfg):
        cmd.append("--stronglyTyped")
    else:
        cmd += [f"--{flag}" for flag in builder_flags(precision, cfg)]
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


def _network(trt, builder, strongly_typed: bool):
    flags = 0
    v = _version(trt.__version__)
    if v[0] < 10:  # explicit batch is required before 10.0 and the only mode after
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed and v[0] == 10:  # always on (and the flag deprecated) from 11.0
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


def _parse(trt, network, logger, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")


def _configure(trt, builder, cfg: EngineConfig, flags, signature: dict, batches):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag.upper()))
    if batches is not None:
        profile = builder.create_optimization_profile()
        for name, spec in signature["inputs"].items():
            profile.set_shape(name, *[(b, *spec["shape"][1:]) for b in batches])
        config.add_optimization_profile(profile)
    if cfg.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        if cfg.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if cfg.timing_cache:  # loaded if it exists; the build adds its timings, saved back afterwards
        path = Path(cfg.timing_cache)
        cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def _build(trt, onnx_path: Path, cfg: EngineConfig, strongly_typed: bool, flags, signature, batches):
    """Parse and build; returns (serialized engine, serialized timing cache or None)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _network(trt, builder, strongly_typed)
    _parse(trt, network, logger, onnx_path)
    config = _configure(trt, builder, cfg, flags, signature, batches)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ConfigError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    cache = bytes(config.get_timing_cache().serialize()) if cfg.timing_cache else None
    return bytes(plan), cache


def _check_onnx(art, tensorrt_version: str | None = None) -> dict:
    report = check_tensorrt_compat(art.file(ONNX_FILE), tensorrt_version=tensorrt_version)
    if not report["ok"]:
        raise ConfigError(f"{art.path}/{ONNX_FILE} cannot be built with TensorRT: " + "; ".join(report["problems"]))
    return report


def _engine_record(m: dict, here: dict, flags, strongly_typed: bool, batches, cfg: EngineConfig, report: dict):
    """What an engine's manifest says beyond the common fields: where it runs, how it was built."""
    precision = "fp16" if "fp16" in flags and m["precision"] == "fp32" else m["precision"]
    return dict(
        here, precision=precision, signature=m["signature"], solver=m.get(SOLVER), strongly_typed=strongly_typed,
        builder_flags=list(flags), dynamic_batch=batches is not None, batch=batches[1] if batches else m.get("batch"),
        profile=dict(zip(("min", "opt", "max"), batches)) if batches else None, dla_core=cfg.dla_core,
        onnx_ops=report["ops"], onnx_notes=report["notes"], model_cost=m.get("model_cost"),
        op_list={k: report[k] for k in ("source", "tensorrt_version")},
    )


def build_engine(src, cfg: EngineConfig, out) -> Artifact:
    """Stage: an ONNX artifact (fp32, fp16 or Q/DQ int8) → a `tensorrt-engine` artifact for this GPU."""
    check_output_path(out)
    art = Artifact.load(src, kinds=STAGE_IO["export-tensorrt"].accepts)
    m = art.manifest
    _check_onnx(art)
    trt = import_tensorrt()
    version = trt.__version__
    report = _check_onnx(art, version)
    here = current_platform()
    strongly_typed = uses_strong_typing(version, cfg)
    flags = () if strongly_typed else builder_flags(m["precision"], cfg)
    batches = cfg.batch_range(m.get("batch", 1)) if _is_dynamic(m["signature"]) else None
    plan, cache = _build(trt, art.file(ONNX_FILE), cfg, strongly_typed, flags, m["signature"], batches)
    cmd = trtexec_command(art.file(ONNX_FILE).resolve(), cfg, precision=m["precision"], signature=m["signature"],
                          tensorrt_version=version, engine_file=ENGINE_FILE, batch=m.get("batch", 1))
    with ArtifactWriter(out, kind=STAGE_IO["export-tensorrt"].produces(), stage="export", config=to_dict(cfg), parent=art) as w:
        (w.dir / ENGINE_FILE).write_bytes(plan)
        (w.dir / TRTEXEC_FILE).write_text("#!/bin/sh\n# The same build with trtexec, run in this folder.\n"
                                          + shlex.join(map(str, cmd)) + "\n")
        shutil.copyfile(art.file(CONFIG_FILE), w.dir / CONFIG_FILE)
        w.manifest.update(_engine_record(m, here, flags, strongly_typed, batches, cfg, report))
    if cache is not None:
        write_atomic(cfg.timing_cache, cache)
    return w.artifact
