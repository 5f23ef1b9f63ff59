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

from ..artifact import Artifact
from ..benchmark import BenchConfig, bench, matmul_peak_gflops, parse_target
from ..config import check_choice, check_positive
from ..errors import ConfigError
from ..export.graph_cost import ESTIMATE_PRECISIONS, FLOAT_BYTES, MATMUL_OPS, NodeCost, cost_warnings, graph_costs
from ..kinds import STAGE_IO
from ..records import SOLVER, precision_of
from ..timing import time_call
from .profiles import DeviceProfile, check_request, list_profiles, load_profile
from ..limits import check_threads

__all__ = ["CPU_DEVICE", "DEFAULT_LAUNCH_US", "CalibrateConfig", "EstimateConfig", "calibrate", "calibrate_on_this_cpu",
           "estimate", "format_estimate", "measure_copy_bandwidth_gbs", "measure_node_overhead_us", "roofline"]

CPU_DEVICE = "cpu"
# Kernel launch plus scheduling per executed node: CUDA launches cost ~2-5 us on desktop GPUs and
# more behind a Jetson's slower CPU; 5 us is a round figure, override it with --launch-us.
DEFAULT_LAUNCH_US = 5.0


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
            check_threads(self.threads)
        check_positive("copy_mb", self.copy_mb)
        check_positive("min_iters", self.min_iters)
        check_positive("min_seconds", self.min_seconds)


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
            "matmul_flops_per_call": sum(c.flops for c in costs if c.op in MATMUL_OPS),
            "compute_bound_nodes": compute_bound, "memory_bound_nodes": len(rows) - compute_bound,
            "quantized_nodes": sum(c.precision == "int8" for c in costs), "top_nodes": top_nodes,
            "warnings": cost_warnings(costs)}


# --- artifacts and devices --------------------------------------------------------------------------------


def _resolve_device(name: str) -> DeviceProfile:
    if name not in list_profiles():
        raise ConfigError(f"unknown device {name!r}; valid devices: {CPU_DEVICE} (this machine, measured), "
                          f"{', '.join(list_profiles())}")
    return load_profile(name)


def _precisions(art, cfg: EstimateConfig) -> tuple[str, ...]:
    own = precision_of(art.manifest)
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
    solver = art.manifest.get(SOLVER) or {}
    nfe = solver.get("nfe_per_call", (art.manifest.get("model_cost") or {}).get("nfe_per_call"))
    return {**done[0], "artifact": str(art.path), "kind": art.kind, "artifact_precision":
            art.manifest.get("precision"), "nfe_per_call": nfe, "estimates": done, "skipped": skipped}


def estimate(path: str | Path, device: str, cfg: EstimateConfig) -> dict:
    """Roofline latency per network call and per image of ONNX artifact `path` on device profile `device`."""
    profile = _resolve_device(device)
    art = Artifact.load(path, kinds=STAGE_IO["estimate"].accepts)
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


    peak = peak_gflops if peak_gflops is not None else matmul_peak_gflops(threads)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return DeviceProfile(name=CPU_DEVICE, display_name=f"this CPU ({platform.machine()}, measured)", kind="cpu",
                         gpu_arch="none", compute_capability="0.0", memory_gb=memory, precisions=("fp32",),
                         memory_bandwidth_gbs=measure_copy_bandwidth_gbs(copy_mb), fp32_tflops=peak / 1e3,
                         notes="measured now: torch float32 matmul peak, numpy copy bandwidth")


def calibrate(path: str | Path, cfg: EstimateConfig, cal: CalibrateConfig = CalibrateConfig()) -> dict:
    """Estimate on a profile measured on this CPU, time ONNX Runtime here at the same batch, report the ratio."""
    import torch


    art = Artifact.load(path, kinds=STAGE_IO["estimate"].accepts)
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
