"""The one definition of a cunet-edge TensorRT engine build, shared by `cunet-edge export --format tensorrt`
(export/tensorrt.py) and a deploy bundle's build_engine.py, so both build the same engine.

It is copied verbatim into every deploy bundle (as trt_build.py), where neither cunet-edge nor torch is
installed and Python may be 3.8 (JetPack 5): standard library only, no imports from the package,
3.8 syntax. Errors are BuildError (export/tensorrt.py turns them into ConfigError).

The rules, by TensorRT version (names checked against the real 8.6, 10.3, 10.x and 11.x Python APIs by
tests/test_trt_surface.py):

- 8.5 to 9.x: EXPLICIT_BATCH network, weakly typed: the FP16/INT8 builder flags of the ONNX's precision.
- 10.x: STRONGLY_TYPED (the ONNX's fp16 tensors and Q/DQ nodes decide), except DLA builds and
  builder_precision "fp16", which take the flags.
- 11.x: always strongly typed: the precision flags, EXPLICIT_BATCH and the INT8 calibrators are gone.
- TF32: an fp32 build turns TF32 off unless `tf32` is set (export allows it by default; the bundle does
  not, so its self-check tolerance 1e-3 holds).
- DLA: FP16/INT8 layers only, static shapes only (min = opt = max batch); GPU fallback on unless refused;
  the layers the DLA cannot run are listed (IBuilderConfig.can_run_on_DLA).
- Every build is made with ProfilingVerbosity.DETAILED, so that IEngineInspector reports each layer's
  kernel (tactic) and tensor formats: `engine_layers` reads them, `layer_summary` counts layers per
  precision and names the convolution/matmul layers that did not run INT8.
- A debug build (`mark`) also marks as network outputs the tensors whose names are in `mark` (the ONNX
  tensor names the parser kept), as Polygraphy's `--trt-outputs mark all` does, for the layer-by-layer
  comparison with ONNX Runtime (trt_check.py).
"""

from __future__ import annotations

import json
import re

MIN_VERSION = (8, 5)
PRECISIONS = ("fp32", "fp16", "int8")
BUILDER_PRECISIONS = ("auto", "fp16")


class BuildError(ValueError):
    """A build request TensorRT (or this board) cannot honour; one line."""


def version_tuple(text) -> tuple:
    parts = [int(p) for p in str(text).split(".")[:2] if p.isdigit()]
    if len(parts) < 2:
        raise BuildError("cannot read TensorRT version %r" % (text,))
    return parts[0], parts[1]


def strongly_typed(tensorrt_version, dla_core=None, builder_precision="auto") -> bool:
    """Whether the build is STRONGLY_TYPED (precision from the ONNX) or weakly typed with builder flags."""
    v = version_tuple(tensorrt_version)
    if v < MIN_VERSION:
        raise BuildError(f"TensorRT {tensorrt_version} is too old: cunet-edge builds with TensorRT 8.5 or newer "
                         "(JetPack 5 or later)")
    if builder_precision not in BUILDER_PRECISIONS:
        raise BuildError(f"builder_precision {builder_precision!r} is not one of {', '.join(BUILDER_PRECISIONS)}")
    if v[0] >= 11:
        if builder_precision != "auto":
            raise BuildError(f"TensorRT {tensorrt_version} has no precision flags (builder_precision "
                             f"{builder_precision!r}): convert the ONNX to fp16 or quantize it instead")
        return True
    return v[0] == 10 and dla_core is None and builder_precision == "auto"


def precision_flags(precision, strong, dla_core=None, builder_precision="auto") -> tuple:
    """Lower-case names of the BuilderFlag precision flags of a weakly typed build ("fp16", "int8")."""
    if precision not in PRECISIONS:
        raise BuildError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if dla_core is not None and precision == "fp32" and (strong or builder_precision != "fp16"):
        raise BuildError("DLA runs FP16 and INT8 layers only, and this ONNX is fp32: export it with precision "
                         "fp16 or quantize it" + ("" if strong else ", or set builder_precision fp16"))
    if strong:
        return ()
    flags = {"fp32": (), "fp16": ("fp16",), "int8": ("int8",)}[precision]
    if builder_precision == "fp16" and "fp16" not in flags:
        flags += ("fp16",)
    return flags


def batch_profile(min_batch, opt_batch, max_batch, dla_core=None) -> tuple:
    """(min, opt, max) batch of a dynamic-batch optimization profile, checked; DLA takes static shapes only."""
    for name, value in (("min_batch", min_batch), ("opt_batch", opt_batch), ("max_batch", max_batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BuildError(f"{name} must be a positive integer, got {value!r}")
    if not min_batch <= opt_batch <= max_batch:
        raise BuildError(f"opt batch {opt_batch} is outside min_batch..max_batch ({min_batch}..{max_batch})")
    if dla_core is not None and not min_batch == opt_batch == max_batch:
        raise BuildError(f"DLA builds take static shapes only, and the batch profile is {min_batch}..{max_batch}: "
                         f"set min, opt and max batch to one size (e.g. {opt_batch})")
    return min_batch, opt_batch, max_batch


def network_flags(trt, strong) -> int:
    flags = 0
    major = version_tuple(trt.__version__)[0]
    if major < 10:  # explicit batch is required before 10.0 and the only mode after (the flag is gone in 11)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strong and major == 10:  # always on from 11.0
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _inputs(network):
    return [network.get_input(i) for i in range(network.num_inputs)]


def is_dynamic(network) -> bool:
    return any(d < 0 for inp in _inputs(network) for d in tuple(inp.shape))


def dla_fallback_layers(network, config) -> list:
    """Names of the layers the DLA cannot run (they fall back to the GPU, or fail the build without fallback)."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    return [layer.name for layer in layers if not config.can_run_on_DLA(layer)]


def configure(trt, builder, network, config, s) -> dict:
    """Apply settings `s` (see SETTINGS) to a builder config; returns what the build record lists."""
    strong = strongly_typed(trt.__version__, s["dla_core"], s["builder_precision"])
    flags = precision_flags(s["precision"], strong, s["dla_core"], s["builder_precision"])
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, s["workspace_mb"] << 20)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag.upper()))
    if s["precision"] == "fp32" and not s["tf32"]:
        config.clear_flag(trt.BuilderFlag.TF32)
    batches = None
    if is_dynamic(network):
        batches = batch_profile(s["min_batch"], s["opt_batch"], s["max_batch"], s["dla_core"])
        profile = builder.create_optimization_profile()
        for inp in _inputs(network):
            rest = tuple(inp.shape)[1:]
            profile.set_shape(inp.name, *[(b,) + rest for b in batches])
        config.add_optimization_profile(profile)
    fallback = None
    if s["dla_core"] is not None:
        if s["dla_core"] >= builder.num_DLA_cores:
            raise BuildError("DLA core %d requested; this GPU has %d" % (s["dla_core"], builder.num_DLA_cores))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = s["dla_core"]
        if s["gpu_fallback"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        fallback = dla_fallback_layers(network, config)
        if fallback and not s["gpu_fallback"]:
            raise BuildError("%d layer(s) cannot run on the DLA and GPU fallback is off: %s"
                             % (len(fallback), ", ".join(fallback[:5]) + (" ..." if len(fallback) > 5 else "")))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer kernels and formats for engine_layers
    if s.get("timing_cache") is not None:  # bytes (empty: a new cache); the build adds its timings
        cache = config.create_timing_cache(s["timing_cache"])
        config.set_timing_cache(cache, ignore_mismatch=False)
    return {"tensorrt_version": trt.__version__, "strongly_typed": strong, "builder_flags": list(flags),
            "tf32": bool(s["tf32"]) if s["precision"] == "fp32" else None,
            "profile": dict(zip(("min", "opt", "max"), batches)) if batches else None,
            "dla_core": s["dla_core"], "gpu_fallback": bool(s["gpu_fallback"]) if s["dla_core"] is not None else None,
            "dla_gpu_fallback_layers": fallback}


# The settings one build takes; both callers fill every key.
SETTINGS = ("precision", "workspace_mb", "min_batch", "opt_batch", "max_batch", "dla_core", "gpu_fallback", "tf32",
            "builder_precision", "timing_cache")


def mark_outputs(trt, network, names) -> list:
    """Mark every FP32/FP16 layer output tensor whose name is in `names` as a network output (integer, boolean and
    INT8 tensors are shapes, indices and quantized values: not what the comparison measures); returns those marked."""
    marked, floats = [], (trt.DataType.FLOAT, trt.DataType.HALF)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            if tensor.name in names and not tensor.is_network_output and tensor.dtype in floats:
                network.mark_output(tensor)
                marked.append(tensor.name)
    return marked


def build(trt, onnx_path, s, verbose=False, mark=None) -> tuple:
    """Parse `onnx_path` and build: (serialized engine bytes, timing cache bytes or None, record dict).

    `mark`: tensor names to mark as outputs too (a debug build); the record lists those marked."""
    missing = [k for k in SETTINGS if k not in s]
    if missing:
        raise BuildError("build settings lack " + ", ".join(missing))
    strong = strongly_typed(trt.__version__, s["dla_core"], s["builder_precision"])
    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, strong))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors or 'no detail'}")
    marked = mark_outputs(trt, network, set(mark)) if mark else None
    config = builder.create_builder_config()
    record = configure(trt, builder, network, config, s)
    record["marked_outputs"] = marked
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    cache = bytes(config.get_timing_cache().serialize()) if s.get("timing_cache") is not None else None
    return bytes(plan), cache, record


# ---------------------------------------------------------------- what the engine runs (IEngineInspector)

# A tensor's "Format/Datatype" text ("Row major linear FP32", "Thirty-two wide channel vectorized row major Int8
# format", "Channel major FP16 format where channel % 8 == 0") or a weights "Type" ("Int8", "Half", "Float"):
# its precision. Order matters: "FP8" before "FP16"... each pattern is whole-word.
_PRECISIONS = (("INT8", r"int8"), ("FP8", r"fp8|e4m3"), ("FP4", r"fp4|e2m1"), ("INT4", r"int4"),
               ("BF16", r"bf16|bfloat16"), ("FP16", r"fp16|half"), ("FP32", r"fp32|float"), ("INT32", r"int32"),
               ("INT64", r"int64"), ("BOOL", r"bool"), ("UINT8", r"uint8"))
# Layer types (LayerType / ParameterType of the JSON) that do the arithmetic INT8 is for.
_COMPUTE = re.compile(r"conv|gemm|matmul|matrixmultiply|fullyconnected|deconv", re.I)


def tensor_precision(text):
    """The precision named in an inspector format or type string, or None."""
    text = str(text or "")
    for name, pattern in _PRECISIONS:
        if re.search(r"(?<![a-z0-9])(%s)(?![a-z0-9])" % pattern, text, re.I):
            return name
    return None


def _layer_record(entry):
    """One inspector layer (a dict at DETAILED verbosity, a bare name below it) as a small flat record."""
    if not isinstance(entry, dict):
        return {"name": str(entry), "type": None, "precision": None, "inputs": [], "outputs": [], "tactic": None,
                "compute": False}

    def formats(key):
        tensors = entry.get(key) if isinstance(entry.get(key), list) else []
        return [tensor_precision(t.get("Format/Datatype") or t.get("DataType") or t.get("Format"))
                if isinstance(t, dict) else None for t in tensors]

    weights = entry.get("Weights") if isinstance(entry.get("Weights"), dict) else {}
    inputs, outputs = formats("Inputs"), formats("Outputs")
    kind = " ".join(str(entry.get(k) or "") for k in ("LayerType", "ParameterType"))
    # A layer runs in the precision of its weights (convolutions, matmuls), else of its first typed input/output.
    precision = tensor_precision(weights.get("Type")) or next((p for p in inputs + outputs if p), None)
    tactic = entry.get("TacticName") or entry.get("Tactic") or entry.get("TacticValue")
    return {"name": str(entry.get("Name", "")), "type": entry.get("LayerType"), "precision": precision,
            "inputs": inputs, "outputs": outputs, "tactic": None if tactic is None else str(tactic),
            "compute": bool(_COMPUTE.search(kind))}


def parse_engine_information(text):
    """The layers of IEngineInspector.get_engine_information(LayerInformationFormat.JSON): a list of records
    (name, type, precision, input/output precisions, tactic, compute). Raises BuildError if it is not that JSON."""
    try:
        info = json.loads(text)
    except (TypeError, ValueError) as e:
        raise BuildError("the engine inspector's output is not JSON (%s)" % (str(e).splitlines()[0],))
    layers = info.get("Layers") if isinstance(info, dict) else None
    if not isinstance(layers, list):
        raise BuildError("the engine inspector's JSON has no Layers list")
    return [_layer_record(entry) for entry in layers]


def engine_layers(trt, plan):
    """The per-layer record of a serialized engine (needs the GPU that built it): its inspector's JSON."""
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    if engine is None:
        raise BuildError("TensorRT could not deserialize the engine it just built")
    inspector = engine.create_engine_inspector()
    return parse_engine_information(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def layer_summary(layers, precision):
    """Layers per precision, and which convolution/matmul layers run INT8 and which fell back (an int8 engine)."""
    by_precision = {}
    for layer in layers:
        key = layer["precision"] or "unknown"
        by_precision[key] = by_precision.get(key, 0) + 1
    compute = [layer for layer in layers if layer["compute"]]
    summary = {"layers": len(layers), "by_precision": dict(sorted(by_precision.items())),
               "compute_layers": len(compute), "detailed": any(layer["type"] for layer in layers)}
    if precision == "int8":
        summary["compute_int8"] = sum(1 for layer in compute if layer["precision"] == "INT8")
        summary["fell_back"] = [{"name": layer["name"], "precision": layer["precision"] or "unknown"}
                                for layer in compute if layer["precision"] != "INT8"]
    return summary


def layers_line(summary, shown=8):
    """One line of a layer_summary: layers per precision, convolution/matmul layers, and (INT8) which fell back."""
    counts = ", ".join("%s %d" % kv for kv in sorted(summary["by_precision"].items(), key=lambda kv: -kv[1]))
    line = "%d layers (%s); %d convolution/matmul" % (summary["layers"], counts, summary["compute_layers"])
    if not summary.get("detailed", True):
        line += " (names only: the engine was built below DETAILED profiling verbosity)"
    if "compute_int8" in summary:
        fell = summary.get("fell_back") or []
        line += ", %d of them INT8" % summary["compute_int8"]
        if fell:
            line += "; fell back: " + ", ".join("%s (%s)" % (r["name"], r.get("precision")) for r in fell[:shown])
            line += " and %d more" % (len(fell) - shown) if len(fell) > shown else ""
    return line
