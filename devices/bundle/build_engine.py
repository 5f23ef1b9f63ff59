#!/usr/bin/env python3
"""Build model.plan from model.onnx with TensorRT's Python API, on the board that will run it.

Engines run only on the GPU and TensorRT version that built them, so this runs on the target.
The build rules are trt_build.py's, the module `cunet-edge export --format tensorrt` builds with:
TensorRT >= 10 builds STRONGLY_TYPED (precision comes from the ONNX: fp16 tensors, Q/DQ nodes);
8.5-9.x (JetPack 5), and DLA builds on 10.x, get the FP16/INT8 builder flags of the bundle's precision.
FP32 builds turn TF32 off so that the self-check tolerance (1e-3) holds; --tf32 allows it.
DLA builds take static shapes (--min-batch = --max-batch) and FP16/INT8 models only.
If the Python bindings are missing, build_engine.sh runs the same build with trtexec.

After the build, as `cunet-edge export --format tensorrt` does: the engine's layers (IEngineInspector)
go to layers.json, with a summary in engine.json, and the engine is checked against ONNX Runtime on
model.onnx at several timesteps (trt_check.py; needs onnxruntime, and a CUDA binding for the engine:
cuda-python, torch or libcudart; with the onnx package a failed check also names the first diverging
layer). A failed check exits 1.

    python3 build_engine.py [--dla-core 0 --min-batch 1 --max-batch 1] [--workspace-mb 1024] [--max-batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import trt_build  # noqa: E402  (beside this script)


def fail(msg):
    sys.stderr.write(f"error: {msg}\n")
    sys.exit(2)


NO_TENSORRT = ("the tensorrt Python module is not importable (JetPack: sudo apt install python3-libnvinfer); "
               "build with trtexec instead: sh build_engine.sh")


def build(args, bundle):
    try:
        import tensorrt as trt
    except ImportError:
        if args.skip_without_tensorrt:  # deploy --host: run.py then selfchecks and benches with ONNX Runtime
            print("engine build skipped: " + NO_TENSORRT)
            return
        fail(NO_TENSORRT)
    settings = {"precision": bundle["precision"], "workspace_mb": args.workspace_mb, "min_batch": args.min_batch,
                "opt_batch": args.opt_batch or bundle["batch"], "max_batch": args.max_batch,
                "dla_core": args.dla_core, "gpu_fallback": not args.no_gpu_fallback, "tf32": bool(args.tf32),
                "builder_precision": "auto", "timing_cache": None}
    weak_dla = args.dla_core is not None and trt_build.version_tuple(trt.__version__) < (11, 0)
    if weak_dla and bundle["precision"] == "fp32":
        settings["builder_precision"] = "fp16"  # a weakly typed DLA build runs an fp32 ONNX in FP16 (none from 11)
    try:
        plan, _, record = trt_build.build(trt, os.path.join(HERE, "model.onnx"), settings, verbose=args.verbose)
    except trt_build.BuildError as e:
        fail(str(e))
    write_atomic(args.out, plan)
    try:
        layers = trt_build.engine_layers(trt, plan)
    except trt_build.BuildError as e:
        fail(str(e))
    summary = trt_build.layer_summary(layers, bundle["precision"])
    write_atomic(os.path.join(HERE, "layers.json"), (json.dumps({"tensorrt_version": trt.__version__,
                                                                  "layers": layers}, indent=2) + "\n").encode())
    info = dict(record, tensorrt=trt.__version__, precision=bundle["precision"], plan=os.path.basename(args.out),
                engine_layers=dict(summary, file="layers.json"))
    print(trt_build.layers_line(summary))
    checked = None if args.no_check else engine_check(trt, bundle, args.out, settings, record)
    info["engine_check"] = checked
    write_atomic(os.path.join(HERE, "engine.json"), (json.dumps(info, indent=2) + "\n").encode())
    print("engine -> {} (TensorRT {}, {}, {})".format(args.out, trt.__version__, bundle["precision"],
                                                  "strongly typed" if record["strongly_typed"] else "builder flags"))
    if record["dla_gpu_fallback_layers"]:
        print("%d layer(s) run on the GPU, not the DLA: %s" % (len(record["dla_gpu_fallback_layers"]),
                                                              ", ".join(record["dla_gpu_fallback_layers"])))
    return 1 if checked is not None and not checked["ok"] else 0


def _open_engine(bundle):
    """plan path -> feed -> every output of that engine, on this board's GPU (run.py's TensorRT backend)."""
    import run

    return lambda path: run.TensorRTBackend(bundle, plan=path).run_all


def engine_check(trt, bundle, plan_path, settings, record, open_engine=None):
    """The engine just built against ONNX Runtime on model.onnx (trt_check.py, as export checks): seeded inputs at
    timesteps across the schedule; on a mismatch, with the onnx package, a debug build with every ONNX tensor
    marked as an output names the first diverging layer. The record, or None (said why) when it cannot run here."""
    try:
        import onnxruntime  # noqa: F401
        import trt_check
    except ImportError:
        print("engine check skipped: onnxruntime is not installed (pip3 install onnxruntime)")
        return None
    try:
        import onnx
    except ImportError:
        onnx = None
    model_path = os.path.join(HERE, "model.onnx")
    tol = trt_check.tolerance(bundle["precision"], tf32=bool(settings["tf32"]))
    batch = record["profile"]["opt"] if record.get("profile") else (bundle["static_batch"] or 1)
    feeds = trt_check.check_feeds(bundle["signature"], bundle["timesteps"], batch=batch)
    open_engine = open_engine or _open_engine(bundle)

    def divergence(feed):
        model = onnx.load(model_path)
        order = trt_check.onnx_tensor_order(model)
        try:
            debug, _, rec = trt_build.build(trt, model_path, dict(settings, timing_cache=None),
                                            mark=[tensor for tensor, _, _ in order])
        except trt_build.BuildError as e:  # the engine stands, its check failed: say why the search could not run
            return {"tensor": None, "compared": 0, "error": "the debug build failed: %s" % (e,)}
        debug_path = os.path.join(HERE, "debug.plan")
        write_atomic(debug_path, debug)
        try:
            found = trt_check.onnx_divergence(model, open_engine(debug_path), tol)(feed)
        finally:
            os.remove(debug_path)
        return dict(found, marked=len(rec["marked_outputs"] or []))

    try:
        engine = open_engine(plan_path)
    except Exception as e:  # noqa: BLE001 -- run.BundleError (no CUDA binding, ...): the build stands, unchecked
        print("engine check skipped: %s" % (e,))
        return None
    try:
        result = trt_check.check(trt_check.ort_outputs(model_path), engine, feeds, tol, outputs=["eps"],
                                 divergence=divergence if onnx is not None else None)
    except (trt_check.CheckError, trt_build.BuildError) as e:
        fail("the engine check could not run: %s" % (e,))
    result["reference"] = "ONNX Runtime CPU, graph optimizations off"
    print(trt_check.summary_line(result))
    if not result["ok"] and onnx is None:
        print("install the onnx package (pip3 install onnx) to find the first diverging layer")
    return result


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def main(argv=None):
    with open(os.path.join(HERE, "bundle.json")) as fh:
        bundle = json.load(fh)
    eng = bundle["engine"]
    p = argparse.ArgumentParser(description="Build model.plan from model.onnx with TensorRT on this board.")
    p.add_argument("--out", default=os.path.join(HERE, "model.plan"))
    p.add_argument("--dla-core", type=int, help="build for this DLA core (FP16/INT8 layers; GPU fallback for the rest)")
    p.add_argument("--no-gpu-fallback", action="store_true", help="with --dla-core: fail on layers the DLA cannot run")
    p.add_argument("--workspace-mb", type=int, default=eng["workspace_mb"])
    p.add_argument("--min-batch", type=int, default=eng["min_batch"])
    p.add_argument("--opt-batch", type=int)
    p.add_argument("--max-batch", type=int, default=eng["max_batch"])
    p.add_argument("--tf32", action="store_true", help="allow TF32 in an fp32 build (faster; selfcheck may need "
                                                        "--tolerance 1e-2)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--no-check", action="store_true", help="skip the check of the engine against ONNX Runtime")
    p.add_argument("--skip-without-tensorrt", action="store_true",
                   help="without the tensorrt module, say so and exit 0 (run.py then uses ONNX Runtime)")
    return build(p.parse_args(argv), bundle) or 0


if __name__ == "__main__":
    sys.exit(main())
