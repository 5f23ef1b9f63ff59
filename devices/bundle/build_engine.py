#!/usr/bin/env python3
"""Build model.plan from model.onnx with TensorRT's Python API, on the board that will run it.

Engines run only on the GPU and TensorRT version that built them, so this runs on the target.
TensorRT >= 10 builds STRONGLY_TYPED (precision comes from the ONNX: fp16 tensors, Q/DQ nodes);
8.5-9.x (JetPack 5), and DLA builds, get the FP16/INT8 builder flags of the bundle's precision.
FP32 builds turn TF32 off so that the self-check tolerance (1e-3) holds; --tf32 allows it.
If the Python bindings are missing, build_engine.sh runs the same build with trtexec.

    python3 build_engine.py [--dla-core 0] [--workspace-mb 1024] [--max-batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    sys.stderr.write(f"error: {msg}\n")
    sys.exit(2)


def version(text):
    return tuple(int(p) for p in text.split(".")[:2])


def create_network(trt, builder, strong):
    flags = 0
    if version(trt.__version__) < (10, 0):  # explicit batch: required before 10.0, the only mode after
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strong and version(trt.__version__) < (11, 0):  # always on (flag deprecated) from 11.0
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


def parse_onnx(trt, network, logger, path):
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        fail("TensorRT could not parse {}: {}".format(path, "; ".join(errors) or "no detail"))
    return parser


def add_profile(builder, network, config, args, batch):
    """An optimization profile over the batch dimension when the ONNX has a dynamic batch."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if all(d >= 0 for inp in inputs for d in inp.shape):
        return
    opt = args.opt_batch or batch
    if not args.min_batch <= opt <= args.max_batch:
        fail("opt batch %d is outside --min-batch..--max-batch (%d..%d)" % (opt, args.min_batch, args.max_batch))
    profile = builder.create_optimization_profile()
    for inp in inputs:
        rest = tuple(inp.shape)[1:]
        profile.set_shape(inp.name, (args.min_batch,) + rest, (opt,) + rest, (args.max_batch,) + rest)
    config.add_optimization_profile(profile)


def configure(trt, builder, config, args, precision, strong):
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mb << 20)
    if not strong:
        if precision in ("fp16", "int8") or args.dla_core is not None:
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    if precision == "fp32" and not args.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if args.dla_core is not None:
        if args.dla_core >= builder.num_DLA_cores:
            fail("DLA core %d requested; this board has %d" % (args.dla_core, builder.num_DLA_cores))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = args.dla_core
        if not args.no_gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def build(args, bundle):
    try:
        import tensorrt as trt
    except ImportError:
        fail("the tensorrt Python module is not importable (JetPack: sudo apt install python3-libnvinfer); "
             "build with trtexec instead: sh build_engine.sh")
    v = version(trt.__version__)
    if v < (8, 5):
        fail(f"TensorRT {trt.__version__} is too old: this bundle needs TensorRT 8.5 or newer (JetPack 5 or later)")
    strong = v >= (11, 0) or (v >= (10, 0) and args.dla_core is None)
    logger = trt.Logger(trt.Logger.INFO if args.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = create_network(trt, builder, strong)
    parser = parse_onnx(trt, network, logger, os.path.join(HERE, "model.onnx"))  # noqa: F841 (keep alive)
    config = builder.create_builder_config()
    configure(trt, builder, config, args, bundle["precision"], strong)
    add_profile(builder, network, config, args, bundle["batch"])
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        fail("TensorRT could not build the engine (its log above says why)")
    write_atomic(args.out, bytes(plan))
    info = {"tensorrt": trt.__version__, "precision": bundle["precision"], "strongly_typed": strong,
            "dla_core": args.dla_core, "tf32": bool(args.tf32), "plan": os.path.basename(args.out)}
    write_atomic(os.path.join(HERE, "engine.json"), (json.dumps(info, indent=2) + "\n").encode())
    print("engine -> {} (TensorRT {}, {}, {})".format(args.out, trt.__version__, bundle["precision"],
                                                  "strongly typed" if strong else "builder flags"))


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
    build(p.parse_args(argv), bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
