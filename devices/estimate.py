"""Roofline latency estimate of an ONNX artifact on a device profile, and its calibration on this CPU.

Per ONNX node: FLOPs and bytes moved (inputs + outputs + weights, at the element size of the
precision the node runs in) from ONNX shape inference with the batch fixed; time = max(FLOPs /
peak, bytes / bandwidth) plus a fixed launch overhead per executed node. Nodes are not fused
(TensorRT fuses bias, activations and Q/DQ into convolutions), so bytes and overhead are upper
bounds; peaks are never reached, so the roofline part is a lower bound. `calibrate` measures how
far the two errors leave the estimate from a real ONNX Runtime run on this machine's CPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import check_choice, check_positive
from ..errors import ConfigError
from .profiles import DeviceProfile, check_request, list_profiles, load_profile

__all__ = [
    "CPU_DEVICE", "DEFAULT_LAUNCH_US", "ESTIMATE_PRECISIONS", "FLOPS_PER_ELEMENT", "CalibrateConfig",
    "EstimateConfig", "NodeCost", "calibrate", "calibrate_on_this_cpu", "estimate", "format_estimate",
    "graph_costs", "measure_copy_bandwidth_gbs", "measure_node_overhead_us", "roofline", "with_batch",
]

ONNX_KINDS = ("onnx", "onnx-int8")
ESTIMATE_PRECISIONS = ("fp32", "fp16", "int8")
FLOAT_BYTES = {"fp32": 4, "fp16": 2}
CPU_DEVICE = "cpu"
# Kernel launch plus scheduling per executed node: CUDA launches cost ~2-5 us on desktop GPUs and
# more behind a Jetson's slower CPU; 5 us is a round figure, override it with --launch-us.
DEFAULT_LAUNCH_US = 5.0
# FLOPs per element, a count of the arithmetic each op does (not a measurement):
# 1 for plain arithmetic; 4 for exp/log/sin/sqrt-like functions (a short polynomial); 8 for a
# normalization (mean 1 + variance 3 + normalize 2 + affine 2) and for softmax (max, subtract,
# exp 4, sum, divide). Data movement costs 0 FLOPs. Bias adds of Conv/Gemm are not counted.
_ARITH = ("Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "LeakyRelu", "PRelu", "Max", "Min", "Clip", "Where",
          "Sum", "Mean", "Equal", "Greater", "Less", "Not", "And", "Or", "Floor", "Ceil", "Round", "Sign", "Mod",
          "Reciprocal", "BatchNormalization")
_TRANSCENDENTAL = ("Sigmoid", "Tanh", "Exp", "Log", "Sin", "Cos", "Erf", "Sqrt", "Pow", "Softplus", "HardSigmoid",
                   "HardSwish", "Gelu", "Elu", "Selu", "Mish")
_NORM = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "Softmax", "LogSoftmax")
_MOVE = ("Concat", "Split", "Slice", "Transpose", "Resize", "Upsample", "Pad", "Gather", "GatherElements", "Expand",
         "Tile", "Cast", "CastLike", "DepthToSpace", "SpaceToDepth", "ScatterND")
FLOPS_PER_ELEMENT = {**{op: 1 for op in _ARITH}, **{op: 4 for op in _TRANSCENDENTAL}, **{op: 8 for op in _NORM},
                     **{op: 0 for op in _MOVE}}
_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "GlobalAveragePool")  # 1 per input
_MATMUL = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Views and metadata, and Q/DQ that TensorRT folds into weights or fuses into the layers around them.
FREE_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Shape", "Size", "Identity", "Constant",
            "ConstantOfShape", "Dropout", "QuantizeLinear", "DequantizeLinear")
# ONNX TensorProto element types: float ones take the precision's size; others keep their own.
_FLOAT_TYPES = {1, 10, 11, 16}
_INT_BYTES = {2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 12: 4, 13: 8}


@dataclass(frozen=True)
class EstimateConfig:
    """What to estimate: precisions (empty = the artifact's own), batch, sampler steps and the overhead term.

    `float_layers` is the precision of the layers left unquantized in an INT8 estimate: fp32 is what the
    default engine build runs (the Q/DQ ONNX is fp32 elsewhere), fp16 what builder_precision "fp16" runs.
    `launch_us` None means DEFAULT_LAUNCH_US on a profile and the measured per-node cost on this CPU.
    """

    precisions: tuple[str, ...] = ()
    batch: int = 1
    sampler_steps: int = 50
    float_layers: str = "fp32"
    launch_us: float | None = None
    top: int = 10

    def __post_init__(self):
        for p in self.precisions:
            check_choice("precision", p, ESTIMATE_PRECISIONS)
        check_choice("float_layers", self.float_layers, tuple(FLOAT_BYTES))
        check_positive("batch", self.batch)
        check_positive("sampler_steps", self.sampler_steps)
        check_positive("top", self.top)
        if self.launch_us is not None:
            check_positive("launch_us", self.launch_us, allow_zero=True)


@dataclass(frozen=True)
class CalibrateConfig:
    """How to measure this CPU: threads (None: torch's default, also given to ONNX Runtime), copy size, timing."""

    threads: int | None = None
    copy_mb: int = 256
    min_iters: int = 20
    min_seconds: float = 1.0

    def __post_init__(self):
        if self.threads is not None:
            check_positive("threads", self.threads)
        check_positive("copy_mb", self.copy_mb)
        check_positive("min_iters", self.min_iters)
        check_positive("min_seconds", self.min_seconds)


@dataclass(frozen=True)
class NodeCost:
    """One ONNX node's work. `precision` is what it runs in ("int8" = quantized layer); not executed = free."""

    name: str
    op: str
    flops: int
    bytes: int
    precision: str
    executed: bool = True
    note: str = ""  # why the count may be short: "unknown shape" or "op not in FLOPS_PER_ELEMENT"


# --- per-graph counting ---------------------------------------------------------------------------------


def with_batch(model, batch: int):
    """A copy of `model` with every symbolic dim of the inputs' first axis set to `batch`, shapes inferred."""
    from onnx import shape_inference

    model = type(model).FromString(model.SerializeToString())
    g = model.graph
    firsts = [i.type.tensor_type.shape.dim[0] for i in g.input if i.type.tensor_type.shape.dim]
    names = {d.dim_param for d in firsts} - {""}
    fixed = {d.dim_value for d in firsts if not d.dim_param and d.dim_value}
    if not names and fixed and fixed != {batch}:
        raise ConfigError(f"the model was exported for batch {min(fixed)} (static); ask for --batch {min(fixed)}")
    for v in [*g.input, *g.output, *g.value_info]:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_value = batch
    try:
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except shape_inference.InferenceError as exc:
        raise ConfigError(f"ONNX shape inference failed at batch {batch}: {str(exc).splitlines()[0]}") from None


def _tensor_info(model) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """name -> (shape or None when not fully known, element type) for every typed value of the graph."""
    g = model.graph
    info = {i.name: (tuple(i.dims), i.data_type) for i in g.initializer}
    for v in [*g.input, *g.output, *g.value_info]:
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        info[v.name] = (None if not tt.HasField("shape") or -1 in dims else dims, tt.elem_type)
    return info


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def _flops(node, info) -> int:
    """FLOPs of one node: 2 per multiply-add for Conv/MatMul/Gemm, FLOPS_PER_ELEMENT for the rest."""
    op, out = node.op_type, info.get(node.output[0], (None, 0))[0]

    def shape(i: int):
        return info.get(node.input[i], (None, 0))[0]

    if op == "Conv":  # 2·N·Cout·Hout·Wout·(Cin/group)·kh·kw; weight is [Cout, Cin/group, kh, kw]
        return 2 * _numel(out) * math.prod(shape(1)[1:])
    if op == "ConvTranspose":  # every input element meets (Cout/group)·kh·kw weights
        return 2 * _numel(shape(0)) * math.prod(shape(1)[1:])
    if op == "MatMul":  # 2·M·K·N per batch matrix
        return 2 * _numel(out) * shape(0)[-1]
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return 2 * _numel(out) * shape(0)[0 if trans_a else 1]
    if op in _REDUCE:
        return _numel(shape(0))
    return FLOPS_PER_ELEMENT.get(op, 1) * _numel(out)


def _elem_bytes(elem_type: int, float_bytes: int) -> int:
    return float_bytes if elem_type in _FLOAT_TYPES else _INT_BYTES.get(elem_type, 4)


def _bytes(node, info, float_bytes: int, quantized: bool, out_bytes: int) -> int:
    """Distinct inputs (weights included) and outputs; a quantized layer reads data and weights in 1 byte."""
    total, seen = 0, set()
    for i, name in enumerate(node.input):
        if not name or name in seen:
            continue
        seen.add(name)
        shape, et = info.get(name, (None, 1))
        size = (1 if i < 2 else 4) if quantized else _elem_bytes(et, float_bytes)  # int32/fp32 bias
        total += _numel(shape) * size
    for name in node.output:
        shape, et = info.get(name, (None, 1))
        total += _numel(shape) * (out_bytes if et in _FLOAT_TYPES else _elem_bytes(et, float_bytes))
    return total


def _graph_index(g):
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    return producer, consumers, has_qdq


def _is_quantized(node, producer, has_qdq: bool) -> bool:
    """Conv/MatMul/Gemm whose data and weight come through DequantizeLinear (every one of them without Q/DQ)."""
    if node.op_type not in _MATMUL:
        return False
    return not has_qdq or all(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in node.input[:2])


def _is_free(node, info, consts: set[str]) -> bool:
    """Folded constants, views/metadata, Q/DQ, and integer shape arithmetic (TensorRT does it on the host)."""
    if node.op_type in FREE_OPS or all(i in consts for i in node.input if i):
        return True
    outs = [info.get(o, (None, 1)) for o in node.output]
    return all(et not in _FLOAT_TYPES and shape is not None and len(shape) <= 1 for shape, et in outs)


def graph_costs(model, batch: int, precision: str, float_layers: str = "fp32") -> list[NodeCost]:
    """FLOPs and bytes of every node of `model` at `batch` in `precision` (int8: quantized layers in 1 byte)."""
    check_choice("precision", precision, ESTIMATE_PRECISIONS)
    model = with_batch(model, batch)
    info, g = _tensor_info(model), model.graph
    producer, consumers, has_qdq = _graph_index(g)
    fl = precision if precision != "int8" else float_layers
    fbytes, consts = FLOAT_BYTES[fl], {i.name for i in g.initializer}
    costs = []
    for node in g.node:
        name = node.name or node.output[0]
        if _is_free(node, info, consts):
            if all(i in consts for i in node.input if i):
                consts.update(node.output)
            costs.append(NodeCost(name, node.op_type, 0, 0, "", executed=False))
            continue
        q = precision == "int8" and _is_quantized(node, producer, has_qdq)
        users = consumers.get(node.output[0], [])
        q_out = q and has_qdq and bool(users) and all(c.op_type == "QuantizeLinear" for c in users)
        out_bytes = 1 if q_out else fbytes
        costs.append(NodeCost(name, node.op_type, _flops(node, info), _bytes(node, info, fbytes, q, out_bytes),
                              "int8" if q else fl, note=_note(node, info)))
    return costs


def _note(node, info) -> str:
    if any(info.get(n, (None, 0))[0] is None for n in [*node.input, *node.output] if n):
        return "unknown shape"
    known = node.op_type in FLOPS_PER_ELEMENT or node.op_type in _MATMUL or node.op_type in _REDUCE
    return "" if known else "op not in FLOPS_PER_ELEMENT"


def _warnings(costs: list[NodeCost]) -> list[str]:
    """What the counts leave out: tensors shape inference could not size (counted as 0), unlisted ops."""
    out = []
    for note, what in (("unknown shape", "counted 0 for the tensors shape inference left unsized"),
                       ("op not in FLOPS_PER_ELEMENT", "counted 1 FLOP per output element")):
        ops = sorted({c.op for c in costs if c.note == note})
        if ops:
            out.append(f"{sum(c.note == note for c in costs)} nodes ({', '.join(ops)}): {note}, {what}")
    return out


# --- roofline ---------------------------------------------------------------------------------------------


def _peak_figure(profile: DeviceProfile, precision: str) -> tuple[float | None, str]:
    if precision == "int8":
        return profile.int8_tops, "int8_tops"
    return getattr(profile, f"{precision}_tflops"), f"{precision}_tflops"


def _figures(profile: DeviceProfile, precision: str, float_layers: str) -> tuple[dict[str, float], float] | str:
    """(peak FLOP/s per node precision, bandwidth B/s), or the reason why the profile cannot say."""
    needed = [precision] + ([float_layers] if precision == "int8" else [])
    peaks, missing = {}, []
    for p in needed:
        value, field = _peak_figure(profile, p)
        if value is None:
            missing.append(field)
        else:
            peaks[p] = value * 1e12
    if profile.memory_bandwidth_gbs is None:
        missing.append("memory_bandwidth_gbs")
    if missing:
        why = " (total_int8_tops counts the DLAs and is not used)" if "int8_tops" in missing and \
            profile.total_int8_tops else ""
        return (f"{precision}: {profile.name} has no {' or '.join(missing)} figure{why}; devices/README.md "
                f"leaves out what no source gives, so this precision is skipped")
    return peaks, profile.memory_bandwidth_gbs * 1e9


def roofline(costs: list[NodeCost], peaks: dict[str, float], bandwidth: float, launch_us: float,
             top: int = 10) -> dict[str, Any]:
    """Roofline time per node, max(FLOPs / peak, bytes / bandwidth), summed; plus launch_us per executed node."""
    rows, compute_bound = [], 0
    for c in costs:
        if not c.executed:
            continue
        t_compute, t_memory = c.flops / peaks[c.precision], c.bytes / bandwidth
        compute_bound += t_compute >= t_memory
        rows.append((max(t_compute, t_memory), c, "compute" if t_compute >= t_memory else "memory"))
    roof_s = sum(r[0] for r in rows)
    overhead_s = len(rows) * launch_us * 1e-6
    rows.sort(key=lambda r: -r[0])
    top_nodes = [{"name": c.name, "op": c.op, "precision": c.precision, "flops": c.flops, "bytes": c.bytes,
                  "time_us": t * 1e6, "bound": b, "share": t / roof_s if roof_s else 0.0} for t, c, b in rows[:top]]
    return {"per_call_ms": (roof_s + overhead_s) * 1e3, "roofline_ms": roof_s * 1e3, "overhead_ms": overhead_s * 1e3,
            "launch_us": launch_us, "executed_nodes": len(rows), "free_nodes": len(costs) - len(rows),
            "flops_per_call": sum(c.flops for c in costs), "bytes_per_call": sum(c.bytes for c in costs),
            "matmul_flops_per_call": sum(c.flops for c in costs if c.op in _MATMUL),
            "compute_bound_nodes": compute_bound, "memory_bound_nodes": len(rows) - compute_bound,
            "quantized_nodes": sum(c.precision == "int8" for c in costs), "top_nodes": top_nodes,
            "warnings": _warnings(costs)}


# --- artifacts and devices --------------------------------------------------------------------------------


def _resolve_device(name: str) -> DeviceProfile:
    if name not in list_profiles():
        raise ConfigError(f"unknown device {name!r}; valid devices: {CPU_DEVICE} (this machine, measured), "
                          f"{', '.join(list_profiles())}")
    return load_profile(name)


def _precisions(art, cfg: EstimateConfig) -> tuple[str, ...]:
    own = art.manifest.get("precision", "fp32")
    return cfg.precisions or (own,)


def _one(model, art, profile: DeviceProfile, precision: str, cfg: EstimateConfig, launch_us: float) -> dict | str:
    figures = _figures(profile, precision, cfg.float_layers)
    if isinstance(figures, str):
        return figures
    peaks, bandwidth = figures
    res = roofline(graph_costs(model, cfg.batch, precision, cfg.float_layers), peaks, bandwidth, launch_us, cfg.top)
    macs = (art.manifest.get("model_cost") or {}).get("macs")
    per_image = res["per_call_ms"] * cfg.sampler_steps
    return {"device": profile.name, "device_name": profile.display_name, "precision": precision,
            "float_layers": cfg.float_layers if precision == "int8" else precision, "batch": cfg.batch,
            "sampler_steps": cfg.sampler_steps, **res, "per_image_ms": per_image,
            "images_per_s": cfg.batch / (per_image / 1e3), "peak_tflops": {p: v / 1e12 for p, v in peaks.items()},
            "memory_bandwidth_gbs": bandwidth / 1e9, "model_cost_flops": 2 * macs * cfg.batch if macs else None}


def _estimate_all(art, profile: DeviceProfile, precisions, cfg: EstimateConfig, launch_us: float) -> dict:
    """Every precision that the profile has figures for; the others are listed in `skipped` with the reason."""
    import onnx

    model = onnx.load(str(art.file("model.onnx")))
    done, skipped = [], {}
    for p in precisions:
        res = _one(model, art, profile, p, cfg, launch_us)
        (skipped.__setitem__(p, res) if isinstance(res, str) else done.append(res))
    if not done:
        raise ConfigError("; ".join(skipped.values()))
    solver = art.manifest.get("solver") or {}
    nfe = solver.get("nfe_per_call", (art.manifest.get("model_cost") or {}).get("nfe_per_call"))
    return {**done[0], "artifact": str(art.path), "kind": art.kind, "artifact_precision":
            art.manifest.get("precision"), "nfe_per_call": nfe, "estimates": done, "skipped": skipped}


def estimate(path: str | Path, device: str, cfg: EstimateConfig) -> dict:
    """Roofline latency per network call and per image of ONNX artifact `path` on device profile `device`."""
    from ..artifact import Artifact

    profile = _resolve_device(device)
    art = Artifact.load(path, kinds=ONNX_KINDS)
    precisions = _precisions(art, cfg)
    for p in precisions:
        check_request(profile, precision=p, model_bytes=art.file("model.onnx").stat().st_size)
    launch = DEFAULT_LAUNCH_US if cfg.launch_us is None else cfg.launch_us
    return _estimate_all(art, profile, precisions, cfg, launch)


# --- calibration on this CPU ------------------------------------------------------------------------------


def measure_copy_bandwidth_gbs(megabytes: int = 256, reps: int = 3) -> float:
    """This machine's memory bandwidth: a numpy copy of a large array, bytes read + written / time (best of reps)."""
    import time

    import numpy as np

    src = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch: page faults stay out of the timing
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def measure_node_overhead_us(threads: int | None = None, nodes: int = 200, seconds: float = 0.3) -> float:
    """ONNX Runtime's cost per node here: a chain of `nodes` one-element Adds, p50 time / nodes."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ..timing import time_call

    one = numpy_helper.from_array(np.ones(1, np.float32), "one")
    chain = [helper.make_node("Add", [f"v{i}", "one"], [f"v{i + 1}"]) for i in range(nodes)]
    graph = helper.make_graph(chain, "chain", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"v{nodes}", TensorProto.FLOAT, [1])], [one])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads or 0, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the chain unfused
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"v0": np.zeros(1, np.float32)}
    ms = time_call(lambda: sess.run(None, feed), warmup=5, min_iters=20, min_seconds=seconds)["p50_ms"]
    return ms * 1e3 / nodes


def calibrate_on_this_cpu(threads: int | None = None, *, peak_gflops: float | None = None,
                          copy_mb: int = 256) -> DeviceProfile:
    """An ad-hoc profile of this CPU: measured fp32 matmul peak and copy bandwidth (fp32 only)."""
    import platform

    from ..benchmark import matmul_peak_gflops

    peak = peak_gflops if peak_gflops is not None else matmul_peak_gflops(threads)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return DeviceProfile(name=CPU_DEVICE, display_name=f"this CPU ({platform.machine()}, measured)", kind="cpu",
                         gpu_arch="none", compute_capability="0.0", memory_gb=memory, precisions=("fp32",),
                         memory_bandwidth_gbs=measure_copy_bandwidth_gbs(copy_mb), fp32_tflops=peak / 1e3,
                         notes="measured now: torch float32 matmul peak, numpy copy bandwidth")


def calibrate(path: str | Path, cfg: EstimateConfig, cal: CalibrateConfig = CalibrateConfig()) -> dict:
    """Estimate on a profile measured on this CPU, time ONNX Runtime here at the same batch, report the ratio."""
    import torch

    from ..artifact import Artifact
    from ..benchmark import BenchConfig, bench, parse_target

    art = Artifact.load(path, kinds=ONNX_KINDS)
    if _precisions(art, cfg) != ("fp32",):
        raise ConfigError(f"calibration measures only this CPU's float32 peak; {art.path} is "
                          f"{art.manifest.get('precision')}: ask for --precision fp32 alone")
    threads = cal.threads or torch.get_num_threads()
    bcfg = BenchConfig(batch=cfg.batch, threads=threads, min_iters=cal.min_iters, min_seconds=cal.min_seconds,
                       rounds=1, sampler_steps=1, image_reps=1, warmup=5)
    measured = bench([parse_target(str(art.path))], bcfg, progress=False, record=False)
    profile = calibrate_on_this_cpu(threads, peak_gflops=measured["matmul_peak_gflops"], copy_mb=cal.copy_mb)
    launch = measure_node_overhead_us(threads) if cfg.launch_us is None else cfg.launch_us
    res = _estimate_all(art, profile, ("fp32",), replace(cfg, precisions=("fp32",)), launch)
    ms = measured["results"][0]["p50_ms"]
    extra = {"measured_ms": ms, "estimate_over_measured": res["per_call_ms"] / ms, "threads": threads,
             "cpu": measured["machine"]["cpu"], "matmul_peak_gflops": measured["matmul_peak_gflops"]}
    res["estimates"][0].update(extra)
    return {**res, **extra}


# --- output -------------------------------------------------------------------------------------------------


def _fmt_si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _format_one(e: dict, result: dict) -> list[str]:
    peaks = ", ".join(f"{p} {v:g} T/s" for p, v in e["peak_tflops"].items())
    other = f" (other layers {e['float_layers']})" if e["precision"] == "int8" else ""
    lines = [
        f"{result['artifact']} on {e['device']} ({e['device_name']}): {e['precision']}{other}, batch {e['batch']}",
        (f"  per call  {e['per_call_ms']:.3f} ms = roofline {e['roofline_ms']:.3f} ms + launch overhead "
         f"{e['overhead_ms']:.3f} ms ({e['executed_nodes']} nodes x {e['launch_us']:.2f} us)"),
        (f"  per image {e['per_image_ms']:.1f} ms for the batch = {e['sampler_steps']} sampler steps x per call "
         f"(nfe_per_call {result['nfe_per_call']} is inside each call); {e['images_per_s']:.1f} img/s"),
        (f"  work      {_fmt_si(e['flops_per_call'], 'FLOP')}, {_fmt_si(e['bytes_per_call'], 'B')} per call; "
         f"{e['compute_bound_nodes']} compute-bound, {e['memory_bound_nodes']} memory-bound, "
         f"{e['free_nodes']} free nodes; peak {peaks}, {e['memory_bandwidth_gbs']:g} GB/s"),
    ]
    lines += [f"  warning   {w}" for w in e["warnings"]]
    if "measured_ms" in e:
        lines.append(f"  measured  {e['measured_ms']:.3f} ms per call on ONNX Runtime here (threads={e['threads']}); "
                     f"estimate / measured = {e['estimate_over_measured']:.2f}")
    lines.append(f"  {'node':32} {'op':22} {'prec':5} {'MFLOP':>9} {'KB':>9} {'us':>9} {'bound':7} {'share':>6}")
    lines += [f"  {n['name'][:32]:32} {n['op'][:22]:22} {n['precision']:5} {n['flops'] / 1e6:9.3f} "
              f"{n['bytes'] / 1e3:9.1f} {n['time_us']:9.2f} {n['bound']:7} {n['share']:6.1%}" for n in e["top_nodes"]]
    return lines


def format_estimate(result: dict) -> str:
    """One block per estimated precision (totals, top nodes by time), then the precisions skipped and why."""
    lines = []
    for e in result["estimates"]:
        lines += _format_one(e, result) + [""]
    lines += [f"skipped {reason}" for reason in result["skipped"].values()]
    return "\n".join(lines).rstrip()
