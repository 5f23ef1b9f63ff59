"""Paper-scale models side by side: every preset at its size, every runtime variant, in one run.

For each model (the default model at 16 px, cunet32 and ddpm32 at 32 px, paper64 at 64 px) this
script gives the params, the MACs per call, and the latency per call at each batch (2 threads by
default) of: PyTorch eager, torch.compile, ONNX Runtime FP32, ONNX Runtime INT8 (`quantize
--target cpu`) and the pruned model on ONNX Runtime FP32. Beside each: GFLOP/s against this
machine's matrix-multiply peak (measured in the same run: a large fp32 GEMM in torch and in ONNX
Runtime, and an u8 x s8 MatMulInteger in ONNX Runtime for the INT8 peak), and the ε relative error
of each variant against ONNX Runtime FP32 on noisy test images spread over the schedule. The
issue-16 targets are checked and, where one misses, ONNX Runtime's per-op profile says where the
time goes.

The models are built by the project's own stages: for each model the script writes a pipeline
recipe (train a few steps, unroll, export, quantize cpu, prune with a short fine-tune, export the
pruned model) into the work folder and runs it with `cunet_edge.pipeline.run_pipeline`. The
pipeline is resumable, so a rerun with the same work folder reuses every artifact. Latency is
timed with `cunet_edge.benchmark.bench` (interleaved rounds, side by side). This is a speed study:
the models are trained for a few steps only; latency does not depend on the weights.

    python benchmarks/scale.py --work runs/scale --json runs/scale.json --md runs/scale.md
    python benchmarks/scale.py --models paper64 --run paper64=runs/paper64     # artifacts of recipes/paper64.toml
    python benchmarks/scale.py --models default --quick --json /tmp/s.json       # tiny settings (the test)

Expensive variants can be given or skipped: `--int8 NAME=PATH` / `--pruned NAME=PATH` (an INT8 or a
pruned ONNX artifact made elsewhere from the same checkpoint), `--run NAME=RUNDIR` (take every
artifact from a run folder of a recipe with the same stage names, e.g. recipes/paper64.toml; build
nothing), `--skip compile,int8,pruned` (leave variants out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from cunet_edge.artifact import Artifact, write_atomic, write_json_atomic
from cunet_edge.errors import CunetEdgeError

# name: (preset or None for the default model, image size)
MODELS = {"default": (None, 16), "cunet32": ("cunet32", 32), "ddpm32": ("ddpm32", 32), "paper64": ("paper64", 64)}
VARIANTS = ("eager", "compile", "ort-fp32", "ort-int8", "pruned")
# The pipeline stage names (also those of recipes/paper64.toml, so its run folder can be measured with --run).
STAGE_OF = {"checkpoint": "checkpoint", "unrolled": "unrolled", "onnx": "onnx", "int8": "int8-cpu",
            "pruned": "pruned-onnx"}
MAIN_SAMPLER_STEPS = 50  # recipes/digits.toml: the main recipe's sampler (DDIM 50)

# Stage settings. A speed study: few training steps, a cheaper quantize calibration than the default (64
# denoiser inputs instead of 640) and a short prune fine-tune; the quantize stage still keeps its 3% ε gate.
FULL = {
    "train": {"steps": 2, "batch_size": 4},
    "quantize": {"target": "cpu", "val_n": 16, "sensitivity_n": 4, "compare_fp16": False, "drift_samples": 2,
                 "bench_batch": 8, "calibration": {"n_images": 4, "sampler_steps": 16}},
    "prune": {"target_macs": 0.6, "ratio_step": 0.05, "importance_batches": 2, "finetune_steps": 4, "batch_size": 8,
              "warmup_steps": 1, "val_n": 16, "drift_samples": 2},
    "bench": {"warmup": 2, "min_iters": 10, "min_seconds": 2.0, "rounds": 2},
    "eps_n": 32,
}
QUICK = {
    "train": {"steps": 2, "batch_size": 4},
    "quantize": {"target": "cpu", "val_n": 8, "sensitivity_n": 2, "max_float_layers": 2, "compare_fp16": False,
                 "drift_samples": 1, "bench_batch": 2, "calibration": {"n_images": 4, "sampler_steps": 16}},
    "prune": {"target_macs": 0.6, "ratio_step": 0.1, "importance_batches": 1, "finetune_steps": 1, "batch_size": 4,
              "warmup_steps": 0, "val_n": 4, "drift_samples": 1, "drift_sampler_steps": 2},
    "bench": {"warmup": 1, "min_iters": 3, "min_seconds": 0.05, "rounds": 1},
    "eps_n": 8,
}


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    p.add_argument("--work", default="runs/scale", help="work folder (one pipeline run per model; reruns reuse it)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    p.add_argument("--skip", default="", help=f"variants to leave out, comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--int8", action="append", default=[], metavar="NAME=PATH", help="an existing INT8 artifact")
    p.add_argument("--pruned", action="append", default=[], metavar="NAME=PATH",
                   help="an existing pruned ONNX (fp32) artifact")
    p.add_argument("--run", action="append", default=[], metavar="NAME=RUNDIR",
                   help="take the model's artifacts from this run folder (stage names checkpoint, unrolled, onnx, "
                        "int8-cpu, pruned-onnx); build nothing")
    p.add_argument("--train-steps", type=int, default=None, help="training steps (default 2)")
    p.add_argument("--min-iters", type=int, default=None, help="timed calls per target and batch")
    p.add_argument("--eps-n", type=int, default=None, help="noisy test images for the ε error")
    p.add_argument("--sampler-steps", type=int, default=MAIN_SAMPLER_STEPS,
                   help="network calls per image for the per-image figure (the main recipe's DDIM 50)")
    p.add_argument("--profile", choices=("miss", "always", "never"), default="miss",
                   help="ONNX Runtime per-op profile of FP32 and INT8 at the largest batch: when a target misses")
    p.add_argument("--quick", action="store_true", help="tiny settings (the test): a few calls, tiny stages")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--md", default=None, help="write the markdown tables here")
    return p.parse_args(argv)


def _pairs(items, what) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in MODELS or not path:
            fail(f"{what} {item!r}: give NAME=PATH with NAME one of {', '.join(MODELS)}")
        if not Path(path).is_dir():
            fail(f"{what} {item!r}: {path} is not a folder")
        out[name] = Path(path)
    return out


def _check_args(a):
    a.models = [m for m in a.models.split(",") if m]
    bad = [m for m in a.models if m not in MODELS]
    if bad or not a.models:
        fail(f"--models: unknown model {bad[0] if bad else ''!r}; valid: {', '.join(MODELS)}")
    a.skip = {s for s in a.skip.split(",") if s}
    if a.skip - set(VARIANTS):
        fail(f"--skip: unknown variant {sorted(a.skip - set(VARIANTS))[0]!r}; valid: {', '.join(VARIANTS)}")
    try:
        a.batches = [int(b) for b in a.batches.split(",") if b]
    except ValueError:
        fail(f"--batches {a.batches!r}: give integers, comma-separated")
    for name, v in (("--threads", a.threads), ("--sampler-steps", a.sampler_steps), ("--train-steps", a.train_steps),
                    ("--min-iters", a.min_iters), ("--eps-n", a.eps_n)):
        if v is not None and v < 1:
            fail(f"{name} must be at least 1, got {v}")
    if not a.batches or min(a.batches) < 1 or max(a.batches) > 256:
        fail(f"--batches must be between 1 and 256, got {a.batches}")
    a.int8, a.pruned, a.run = _pairs(a.int8, "--int8"), _pairs(a.pruned, "--pruned"), _pairs(a.run, "--run")
    s = json.loads(json.dumps(QUICK if a.quick else FULL))
    if a.train_steps:
        s["train"]["steps"] = a.train_steps
    if a.min_iters:
        s["bench"]["min_iters"] = a.min_iters
    if a.eps_n:
        s["eps_n"] = a.eps_n
    a.settings = s
    return a


# --- building the artifacts through the project's pipeline -------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string for these names
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def recipe_text(stages: list[dict], threads: int) -> str:
    """A pipeline recipe: [pipeline] and one [[stage]] per dict (nested dicts become [stage.KEY] tables).

    Written by hand: only flat values and one level of sub-tables occur, and no TOML writer is a dependency."""
    lines = ["# written by benchmarks/scale.py (a speed study: models trained for a few steps)", "",
             "[pipeline]", f"threads = {threads}"]
    for st in stages:
        lines += ["", "[[stage]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in st.items() if not isinstance(v, dict)]
        for k, v in st.items():
            if isinstance(v, dict):
                lines += [f"[stage.{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def model_stages(name: str, a) -> list[dict]:
    preset, size = MODELS[name]
    s = a.settings
    cunet = preset != "ddpm32"
    train = {"stage": "train", "name": "checkpoint", **({"preset": preset} if preset else {}),
             **s["train"], "sample_n": 1, "sample_steps": 2, "save_every": s["train"]["steps"],
             "data": {"name": "digits", "image_size": size}}
    stages = [train]
    if cunet:
        stages.append({"stage": "unroll", "name": "unrolled"})
    stages.append({"stage": "export", "name": "onnx", "input": "unrolled" if cunet else "checkpoint"})
    if "ort-int8" not in a.skip and name not in a.int8:
        stages.append({"stage": "quantize", "name": STAGE_OF["int8"], "input": "onnx", **s["quantize"]})
    if cunet and "pruned" not in a.skip and name not in a.pruned:
        stages.append({"stage": "prune", "name": "pruned", "input": "unrolled", **s["prune"]})
        stages.append({"stage": "export", "name": STAGE_OF["pruned"], "input": "pruned"})
    return stages


def build(name: str, a) -> dict:
    """Run (or resume) the model's pipeline in the work folder; its stage times; the run folder."""
    from cunet_edge.pipeline import run_pipeline

    if name in a.run:
        return {"run_dir": a.run[name], "built_here": False}
    where = Path(a.work) / name
    where.mkdir(parents=True, exist_ok=True)
    recipe = where / "recipe.toml"
    recipe.write_text(recipe_text(model_stages(name, a), a.threads))
    t0 = time.perf_counter()
    summary = run_pipeline(recipe, where / "run", progress=False, echo=lambda s: print(f"  [{name}] {s}", flush=True))
    return {"run_dir": where / "run", "built_here": True, "pipeline_wall_s": time.perf_counter() - t0,
            "recipe": str(recipe), "stages": summary.get("stages", summary)}


def _artifact(path: Path | None) -> Artifact | None:
    if path is None or not (path / "manifest.json").exists():
        return None
    return Artifact.load(path)


def _root_checkpoint(art: Artifact) -> str | None:
    """The id of the checkpoint an artifact descends from (its lineage walked through the parents' paths)."""
    seen = 0
    while art.kind != "checkpoint" or art.manifest.get("stage") == "prune":
        parent = art.manifest.get("parent") or {}
        if not parent.get("path") or seen > 20:
            return None
        art, seen = Artifact.load(parent["path"], verify=False), seen + 1
    return art.manifest.get("id")


def artifacts(name: str, built: dict, a) -> dict[str, Artifact | None]:
    run = Path(built["run_dir"])
    arts = {k: _artifact(run / v) for k, v in STAGE_OF.items()}
    if name in a.int8:
        arts["int8"] = Artifact.load(a.int8[name])
    if name in a.pruned:
        arts["pruned"] = Artifact.load(a.pruned[name])
    if arts["onnx"] is None:
        fail(f"{name}: no FP32 ONNX artifact in {run / STAGE_OF['onnx']}")
    root = _root_checkpoint(arts["onnx"])
    for k in ("int8", "pruned"):
        if arts[k] is not None and _root_checkpoint(arts[k]) != root:
            fail(f"{name}: {arts[k].path} does not descend from the checkpoint of {arts['onnx'].path} ({root}); "
                 "its ε error against that FP32 model would mean nothing")
    if arts["int8"] is not None and arts["int8"].kind != "onnx-int8":
        fail(f"{name}: {arts['int8'].path} is a {arts['int8'].kind!r} artifact, not onnx-int8")
    if arts["pruned"] is not None and arts["pruned"].kind != "onnx":
        fail(f"{name}: {arts['pruned'].path} is a {arts['pruned'].kind!r} artifact; give the pruned model's "
             "ONNX export")
    return arts


# --- peaks ---------------------------------------------------------------------------------------------------------

def _ort_gemm_model(int8: bool, n: int):
    """A one-node ONNX graph: C = A·B (n x n), fp32 MatMul or u8 x s8 MatMulInteger (ONNX Runtime's MLAS GEMMs)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        b = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["C"])
        a_type, c_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["C"])
        a_type = c_type = TensorProto.FLOAT
    g = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [n, n])],
                          [helper.make_tensor_value_info("C", c_type, [n, n])], initializer=[b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(), (
        rng.integers(0, 256, (n, n), dtype=np.uint8) if int8 else rng.standard_normal((n, n)).astype(np.float32))


def _ort_options(threads: int, profile: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()  # as OnnxRuntimeRunner opens its sessions
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = profile
    return opts


def measure_peaks(threads: int, n: int, seconds: float) -> dict:
    """GEMM rates on this machine now (GOP/s, 2·n³ per product): torch fp32, ONNX Runtime fp32 and u8 x s8."""
    import onnxruntime as ort
    import torch

    from cunet_edge.timing import time_call

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"n": n, "threads": threads,
           "torch_fp32": 2 * n**3 / (time_call(lambda: torch.mm(a, b), warmup=3, min_iters=10,
                                                min_seconds=seconds)["p50_ms"] / 1e3) / 1e9}
    for key, int8 in (("ort_fp32", False), ("ort_int8", True)):
        model, x = _ort_gemm_model(int8, n)
        sess = ort.InferenceSession(model, _ort_options(threads), providers=["CPUExecutionProvider"])
        ms = time_call(lambda: sess.run(None, {"A": x}), warmup=3, min_iters=10, min_seconds=seconds)["p50_ms"]
        out[key] = 2 * n**3 / (ms / 1e3) / 1e9
    out["fp32_peak"] = max(out["torch_fp32"], out["ort_fp32"])  # the higher one: the stricter target
    return out


# --- timing and error ------------------------------------------------------------------------------------------------

def targets_for(arts: dict, skip: set) -> list[tuple[str, str, str, tuple]]:
    """(variant, path, runtime, options) of every variant present."""
    model = arts["unrolled"] or arts["checkpoint"]  # the discrete U-Net has nothing to unroll
    rows = []
    if model is not None and "eager" not in skip:
        rows.append(("eager", model.path, "torch", ()))
    if model is not None and "compile" not in skip:
        rows.append(("compile", model.path, "torch", ("compile",)))
    rows.append(("ort-fp32", arts["onnx"].path, "onnxruntime", ()))
    if arts["int8"] is not None and "ort-int8" not in skip:
        rows.append(("ort-int8", arts["int8"].path, "onnxruntime", ()))
    if arts["pruned"] is not None and "pruned" not in skip:
        rows.append(("pruned", arts["pruned"].path, "onnxruntime", ()))
    return rows


def time_variants(variants, batch: int, a) -> list[dict]:
    """Latency per call of every variant at `batch`, side by side in one `bench` run (interleaved rounds)."""
    from cunet_edge.benchmark import BenchConfig, BenchTarget, bench

    cfg = BenchConfig(batch=batch, threads=a.threads, sampler_steps=1, image_reps=1, **a.settings["bench"])
    targets = [BenchTarget(str(p), rt, opts) for _v, p, rt, opts in variants]
    return bench(targets, cfg, progress=False, record=False)["results"]


def eps_errors(variants, n: int, a) -> dict[str, float]:
    """ε relative error of each variant against ONNX Runtime FP32 on n noisy test images spread over the schedule."""
    import numpy as np

    from cunet_edge.drift import rel_err, schedule_inputs
    from cunet_edge.runtimes.base import open_runner

    outs = {}
    x = t = None
    for v, path, rt, opts in variants:
        kw = {"threads": a.threads} | ({"compile": True} if "compile" in opts else {})
        with open_runner(path, rt, **kw) as r:
            if x is None:
                xt, tt = schedule_inputs(r.train_config(), n, seed=0)
                x, t = xt.numpy().astype(np.float32), tt.numpy().astype(np.int64)
            chunk = max(a.batches)
            outs[v] = np.concatenate([r.infer({"x": x[i:i + chunk], "t": t[i:i + chunk]})["eps"]
                                      for i in range(0, len(x), chunk)])
    ref = outs["ort-fp32"]
    return {v: rel_err(o, ref) for v, o in outs.items()}


def profile_ops(path: Path, batch: int, threads: int, runs: int = 3) -> dict:
    """ONNX Runtime's per-node kernel time (enable_profiling), summed by op type, ms per call (the first, warm-up
    call left out), with a split of an INT8 graph into Q/DQ, integer ops and float ops."""
    import numpy as np
    import onnxruntime as ort

    art = Artifact.load(path)
    opts = _ort_options(threads, profile=True)
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"scale-prof-{os.getpid()}")
    sess = ort.InferenceSession(str(art.file("model.onnx")), opts, providers=["CPUExecutionProvider"])
    shape = [batch] + list(art.manifest["signature"]["inputs"]["x"]["shape"][1:])
    feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32),
            "t": np.full((batch,), 500, dtype=np.int64)}
    for _ in range(runs + 1):
        sess.run(None, feed)
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink()
    model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    after = model_runs[0][1] if len(model_runs) > 1 else -1
    kept = max(len(model_runs) - 1, 1)
    by_op: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < after:
            continue
        op = e.get("args", {}).get("op_name", "?")
        d = by_op.setdefault(op, {"ms": 0.0, "nodes": set()})
        d["ms"] += e["dur"] / 1e3 / kept
        d["nodes"].add(e["name"])
    table = {op: {"ms": d["ms"], "nodes": len(d["nodes"])} for op, d in
             sorted(by_op.items(), key=lambda kv: -kv[1]["ms"])}
    total = sum(d["ms"] for d in table.values())
    groups = {"quantize/dequantize": 0.0, "integer ops": 0.0, "float conv/matmul": 0.0, "layout (transpose)": 0.0,
              "other float ops": 0.0}
    for op, d in table.items():
        if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            g = "quantize/dequantize"
        elif op.startswith("QLinear") or op.endswith("Integer") or op in ("QGemm", "QAttention"):
            g = "integer ops"
        elif op in ("Conv", "FusedConv", "NhwcFusedConv", "MatMul", "FusedMatMul", "Gemm", "NchwcConv"):
            g = "float conv/matmul"
        elif op in ("Transpose", "ReorderInput", "ReorderOutput"):
            g = "layout (transpose)"
        else:
            g = "other float ops"
        groups[g] += d["ms"]
    return {"artifact": str(path), "batch": batch, "threads": threads, "runs": kept, "kernel_ms_per_call": total,
            "by_op": table, "groups_ms": groups}


# --- one model -------------------------------------------------------------------------------------------------------

def measure_model(name: str, a, peaks: dict) -> dict:
    preset = MODELS[name][0]
    print(f"[{name}] building (pipeline in {Path(a.work) / name})" if name not in a.run else
          f"[{name}] artifacts from {a.run[name]}", flush=True)
    built = build(name, a)
    arts = artifacts(name, built, a)
    variants = targets_for(arts, a.skip)
    cost = arts["onnx"].manifest.get("model_cost") or {}
    macs = cost.get("graph_macs") or cost.get("macs")  # what the FP32 graph computes (the INT8 graph: the same)
    size = arts["onnx"].manifest["signature"]["inputs"]["x"]["shape"][-1]  # what was built (a --run may differ)
    print(f"[{name}] variants: {', '.join(v for v, *_ in variants)}; ε error on {a.settings['eps_n']} inputs",
          flush=True)
    eps = eps_errors(variants, a.settings["eps_n"], a)
    rows = []
    for batch in a.batches:
        print(f"[{name}] timing batch {batch}", flush=True)
        res = time_variants(variants, batch, a)
        ref = next(r for (v, *_), r in zip(variants, res) if v == "ort-fp32")
        for (v, path, rt, opts), r in zip(variants, res):
            own = r.get("graph_macs_per_call") or r.get("macs_per_call") or macs
            row = {"model": name, "preset": preset, "image_size": size, "variant": v, "batch": batch,
                   "artifact": str(path), "runtime": rt, "options": list(opts), "threads": a.threads,
                   "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "mean_ms": r["mean_ms"], "n_calls": r.get("iters"),
                   "ms_per_image": r["p50_ms"] / batch * a.sampler_steps, "macs_per_call": own,
                   "params": r.get("params") or cost.get("params"),
                   "gflops": 2 * own * batch / (r["p50_ms"] / 1e3) / 1e9 if own else None,
                   # INT8 and FP32 do the same arithmetic: the FP32 graph's MACs give the INT8 model's effective rate
                   "gflops_fp32_macs": 2 * macs * batch / (r["p50_ms"] / 1e3) / 1e9 if macs else None,
                   "speedup_vs_ort_fp32": ref["p50_ms"] / r["p50_ms"], "eps_rel_err": eps.get(v)}
            row["fraction_of_fp32_peak"] = (row["gflops_fp32_macs"] if v == "ort-int8" else row["gflops"] or 0) / \
                peaks["fp32_peak"]
            rows.append(row)
    return {"name": name, "preset": preset, "image_size": size, "params": cost.get("params"), "macs_per_call": macs,
            "model_macs_per_call": cost.get("macs"),
            "nfe_per_call": cost.get("nfe_per_call"), "build": built, "rows": rows, "eps_rel_err": eps,
            "artifacts": {k: (str(v.path) if v is not None else None) for k, v in arts.items()}}


# --- targets ---------------------------------------------------------------------------------------------------------

def _row(models: dict, name: str, variant: str, batch: int) -> dict | None:
    m = models.get(name)
    return next((r for r in m["rows"] if r["variant"] == variant and r["batch"] == batch), None) if m else None


def check_targets(models: dict, peaks: dict, batches: list[int]) -> list[dict]:
    """The issue-16 targets, each with its measured value; those whose rows were not measured are left out."""
    out = []

    def add(what, value, op, bound, **kw):
        if value is not None:
            out.append({"target": what, "value": value, "bound": bound, "op": op,
                        "met": value >= bound if op == ">=" else value <= bound, **kw})

    for b in batches:
        i8, f32 = _row(models, "paper64", "ort-int8", b), _row(models, "paper64", "ort-fp32", b)
        if i8 and f32:
            add(f"paper64 INT8 speed-up over FP32 per call, ORT, batch {b}", f32["p50_ms"] / i8["p50_ms"], ">=", 2.0,
                model="paper64", batch=b)
    i8 = _row(models, "paper64", "ort-int8", batches[0])
    if i8:
        add("paper64 INT8 ε rel. error vs FP32", i8["eps_rel_err"], "<=", 0.03, model="paper64")
    bmax = max(batches)
    f32, i8 = _row(models, "paper64", "ort-fp32", bmax), _row(models, "paper64", "ort-int8", bmax)
    if f32:
        add(f"paper64 FP32 GFLOP/s / fp32 matmul peak, ORT, batch {bmax}", f32["gflops"] / peaks["fp32_peak"], ">=",
            0.8, model="paper64", batch=bmax)
    if i8:
        add(f"paper64 INT8 effective GFLOP/s (FP32 MACs) / fp32 matmul peak, ORT, batch {bmax}",
            i8["gflops_fp32_macs"] / peaks["fp32_peak"], ">=", 1.6, model="paper64", batch=bmax)
    for variant in ("ort-fp32", "ort-int8"):
        for b in batches:
            c, d = _row(models, "cunet32", variant, b), _row(models, "ddpm32", variant, b)
            if c and d:
                # per image = per call x the same number of calls per sampler step: the ratio is the same number
                add(f"cunet32 / ddpm32 latency per call (and per image at {c['ms_per_image'] / c['p50_ms'] * b:.0f} "
                    f"steps), {variant}, batch {b}", c["p50_ms"] / d["p50_ms"], "<=", 0.5, batch=b, variant=variant)
    return out


# --- output ----------------------------------------------------------------------------------------------------------

def _f(v, fmt="{:.3g}"):
    return "–" if v is None else fmt.format(v)


def markdown(result: dict) -> str:
    p = result["peaks"]
    lines = [f"Matmul peaks ({p['threads']} threads, {p['n']}x{p['n']} GEMM): torch fp32 {p['torch_fp32']:.1f}, "
             f"ORT fp32 {p['ort_fp32']:.1f} GFLOP/s, ORT u8xs8 {p['ort_int8']:.1f} GOP/s; fp32 peak used: "
             f"{p['fp32_peak']:.1f} GFLOP/s.", "",
             "| model | px | params | MACs/call | batch | variant | ms/call (p50) | ms/image | GFLOP/s | of fp32 peak "
             "| × ORT FP32 | ε rel. err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        for r in m["rows"]:
            gf = r["gflops_fp32_macs"] if r["variant"] == "ort-int8" else r["gflops"]
            lines.append(
                f"| {m['name']} | {m['image_size']} | {_f(r['params'] and r['params'] / 1e6, '{:.2f} M')} | "
                f"{_f(r['macs_per_call'] and r['macs_per_call'] / 1e9, '{:.3f} G')} | {r['batch']} | {r['variant']} | "
                f"{r['p50_ms']:.2f} | {r['ms_per_image']:.0f} | {_f(gf, '{:.1f}')}"
                f"{'*' if r['variant'] == 'ort-int8' else ''} | {_f(r['fraction_of_fp32_peak'], '{:.0%}')} | "
                f"{r['speedup_vs_ort_fp32']:.2f}× | {_f(r['eps_rel_err'], '{:.2%}')} |")
    lines += ["", f"ms/image = ms/call ÷ batch × {result['sampler_steps']} network calls (one per sampler step). "
              "\\* INT8: effective rate, the FP32 graph's MACs over the INT8 time.", "",
              "| target | measured | bound | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        met = "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {t['value']:.3f} | {t['op']} {t['bound']} | {met} |")
    for prof in result.get("profiles", []):
        lines += ["", f"ORT profile: {prof['artifact']} (batch {prof['batch']}, {prof['threads']} threads, "
                      f"kernel time {prof['kernel_ms_per_call']:.1f} ms per call, mean of {prof['runs']} calls)", "",
                  "| group | ms/call | share |", "|---|---|---|"]
        tot = prof["kernel_ms_per_call"] or 1.0
        lines += [f"| {g} | {ms:.1f} | {ms / tot:.0%} |" for g, ms in prof["groups_ms"].items() if ms]
        lines += ["", "| op type | nodes | ms/call | share |", "|---|---|---|---|"]
        lines += [f"| {op} | {d['nodes']} | {d['ms']:.2f} | {d['ms'] / tot:.0%} |"
                  for op, d in list(prof["by_op"].items())[:12]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = _check_args(_parse(argv))
    import onnxruntime
    import torch

    for out in (a.json, a.md):
        if out and not Path(out).parent.is_dir():
            fail(f"cannot write {out}: its folder does not exist")
    t0 = time.perf_counter()
    load = os.getloadavg()
    quick = a.quick
    peaks = measure_peaks(a.threads, 512 if quick else 2048, 0.2 if quick else 2.0)
    print(f"peaks: {json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in peaks.items()})}", flush=True)
    models: dict = {}
    result: dict = {}

    def finish(profiles: list) -> None:
        """The results so far, written after every model: a run cut short keeps what it measured."""
        result.clear()
        result.update({
            "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "quick": quick, "settings": a.settings, "threads": a.threads, "batches": a.batches,
            "sampler_steps": a.sampler_steps, "peaks": peaks, "models": list(models.values()),
            "targets": check_targets(models, peaks, a.batches), "profiles": profiles,
            "complete": len(models) == len(a.models), "wall_s": time.perf_counter() - t0,
            "load_average_start": load, "load_average_end": os.getloadavg(),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "python": sys.version.split()[0]}})
        if a.json:
            write_json_atomic(a.json, result)
        if a.md:
            write_atomic(a.md, markdown(result))

    try:
        for name in a.models:
            models[name] = measure_model(name, a, peaks)
            finish([])
    except CunetEdgeError as exc:
        fail(str(exc))
    profiles = []
    if a.profile != "never":
        targets = result["targets"]
        for name in ("paper64",) if a.profile == "miss" else a.models:
            missed = any(not t["met"] and t.get("model") == name for t in targets)
            if name in models and (a.profile == "always" or missed):
                for v in ("ort-fp32", "ort-int8"):
                    row = _row(models, name, v, max(a.batches))
                    if row:
                        print(f"[{name}] ORT profile of {v} at batch {row['batch']}", flush=True)
                        profiles.append(profile_ops(Path(row["artifact"]), row["batch"], a.threads,
                                                    runs=1 if quick else 3) | {"model": name, "variant": v})
    finish(profiles)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
