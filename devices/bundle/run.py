#!/usr/bin/env python3
"""Run a cunet-edge deploy bundle on the board: draw samples, check the engine, measure it.

Needs Python >= 3.8, numpy, and TensorRT or ONNX Runtime; no torch and no cunet-edge. TensorRT's GPU
buffers come from cuda-python, else torch (if installed), else libcudart.so through ctypes (cudamem.py;
--cuda picks one, and bench records which). Every path is relative to this file, so it runs from any working directory.

    python3 run.py selfcheck                       # outputs match the ones recorded at deploy time
    python3 run.py sample --n 16 --steps 32 --out samples.npy
    python3 run.py bench --batch 1 --json results.json

--backend auto (the default) takes TensorRT when model.plan exists (python3 build_engine.py)
and the tensorrt module imports, else ONNX Runtime.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cudamem  # noqa: E402  the bundle's CUDA buffers (numpy and ctypes at import: light on a CPU-only board)
PLAN = "model.plan"
ENGINE_INFO = "engine.json"


class BundleError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def here(name):
    return os.path.join(HERE, name)


def load_bundle():
    with open(here("bundle.json")) as fh:
        return json.load(fh)


# ---------------------------------------------------------------- backends

class OnnxRuntimeBackend:
    """model.onnx on ONNX Runtime (CUDA provider when this build has it, else CPU)."""

    name = "onnxruntime"

    def __init__(self, bundle, providers=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError("onnxruntime is not installed: pip3 install onnxruntime (or use --backend tensorrt)")
        if providers is None:
            have = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]
        self.session = ort.InferenceSession(here("model.onnx"), providers=providers)
        self.version = ort.__version__
        self.dtypes = {k: np.dtype(v["dtype"]) for k, v in bundle["signature"]["inputs"].items()}

    def __call__(self, x, t):
        feed = {"x": np.asarray(x, dtype=self.dtypes["x"]), "t": np.asarray(t, dtype=self.dtypes["t"])}
        return np.asarray(self.session.run(["eps"], feed)[0], dtype=np.float32)

    def close(self):
        self.session = None


class TensorRTBackend:
    """model.plan through TensorRT's I/O-tensor API (8.5 and newer: set_tensor_address, execute_async_v3); its
    GPU buffers and stream come from whichever CUDA binding works here (cudamem.py: cuda-python, torch, ctypes)."""

    name = "tensorrt"

    def __init__(self, bundle, cuda="auto", cudart=None, plan=None):
        # plan: another engine file (build_engine.py's check, its debug build)
        try:
            import tensorrt as trt
        except ImportError:
            raise BundleError("tensorrt is not importable: on Jetson it comes with JetPack (python3-libnvinfer)")
        plan = plan or here(PLAN)
        if not os.path.exists(plan):
            raise BundleError(f"no {PLAN} yet: build it on this board with python3 build_engine.py")
        _check_engine_info(trt.__version__)
        try:
            self.cuda = cudamem.open_cuda(cuda, cudart)
        except cudamem.Unavailable as exc:
            raise BundleError(str(exc))
        self.cuda_binding = self.cuda.describe()
        self.trt, self.version = trt, trt.__version__
        with open(plan, "rb") as fh:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(fh.read())
        if self.engine is None:
            self.cuda.close()
            raise BundleError(f"TensorRT could not load {PLAN}: rebuild it with python3 build_engine.py")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.buffers = {}  # name -> (device address, bytes)
        self.batch_range = None  # (min, max) of a dynamic-batch engine's optimization profile 0
        if tuple(self.engine.get_tensor_shape(self.inputs[0]))[0] < 0:
            lo, _, hi = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
            self.batch_range = (tuple(lo)[0], tuple(hi)[0])

    def _device(self, name, nbytes):
        ptr, size = self.buffers.get(name, (None, 0))
        if size < nbytes:
            if ptr is not None:
                self.cuda.free(ptr)
            ptr, size = self.cuda.alloc(nbytes), nbytes
            self.buffers[name] = (ptr, size)
        self.context.set_tensor_address(name, ptr)
        return ptr

    def __call__(self, x, t):
        return np.asarray(self.run_all({"x": x, "t": t})["eps"], dtype=np.float32)

    def run_all(self, feed):
        """Every output of the engine by name (a debug build has every marked tensor as one)."""
        try:
            return self._run(feed)
        except cudamem.CudaError as exc:
            raise BundleError(f"{self.cuda.name}: {exc}")

    def _run(self, feed):
        for name in self.inputs:
            arr = np.ascontiguousarray(feed[name], dtype=self.dtypes[name])  # int64 t -> int32 on TensorRT < 10
            if not self.context.set_input_shape(name, arr.shape):
                raise BundleError("the engine refused input %s of shape %s (its batch range: %s); rebuild it with "
                                  "python3 build_engine.py --max-batch N" % (name, tuple(arr.shape), self.batch_range))
            self.cuda.to_device(self._device(name, max(arr.nbytes, 1)), arr)
        out = {}
        for name in self.outputs:
            out[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name])
            self._device(name, max(out[name].nbytes, 1))
        if not self.context.execute_async_v3(self.cuda.stream_handle()):
            raise BundleError("TensorRT failed to run the engine (its log above says why)")
        for name, arr in out.items():
            self.cuda.to_host(arr, self.buffers[name][0])
        self.cuda.synchronize()
        return out

    def close(self):
        self.buffers = {}
        self.context = self.engine = None
        if self.cuda is not None:
            cuda, self.cuda = self.cuda, None
            try:
                cuda.close()  # frees every buffer it handed out, then its stream
            except cudamem.CudaError as exc:
                raise BundleError(f"{cuda.name}: {exc}")


def _check_engine_info(version):
    """Engines only run on the TensorRT version (and GPU) that built them."""
    if not os.path.exists(here(ENGINE_INFO)):
        return
    with open(here(ENGINE_INFO)) as fh:
        built = json.load(fh).get("tensorrt")
    if built and built != version:
        raise BundleError(f"{PLAN} was built with TensorRT {built}, this is {version}: "
                          "rebuild with python3 build_engine.py")


def open_backend(name, bundle, cuda="auto", cudart=None):
    """cuda / cudart: the CUDA binding of the TensorRT backend (cudamem.BINDINGS, or auto) and libcudart's path."""
    if name == "auto":
        name = "onnxruntime"
        if os.path.exists(here(PLAN)):
            try:
                import tensorrt  # noqa: F401
                name = "tensorrt"
            except ImportError:
                pass
    if name == "tensorrt":
        return TensorRTBackend(bundle, cuda, cudart)
    return OnnxRuntimeBackend(bundle)


def batched(backend, static_batch):
    """eps(x, t) for any batch: a static-batch engine gets padded chunks of its batch, a dynamic one chunks of at
    most its profile's max (and padding up to its min)."""
    lo_hi = (static_batch, static_batch) if static_batch else getattr(backend, "batch_range", None)
    if not lo_hi:
        return backend
    return load_sampler().engine_batches(backend, *lo_hi)


# ---------------------------------------------------------------- selfcheck

def verify_files():
    """Every file the bundle shipped, with the size and sha256 its manifest recorded (catches a bad copy)."""
    with open(here("manifest.json")) as fh:
        files = json.load(fh)["files"]
    bad = []
    for name, meta in sorted(files.items()):
        h = hashlib.sha256()
        try:
            with open(here(name), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            bad.append(name + " (missing)")
            continue
        if h.hexdigest() != meta["sha256"]:
            bad.append(name)
    return bad


def cmd_selfcheck(args, bundle):
    if not args.no_verify:
        bad = verify_files()
        if bad:
            raise BundleError("bundle files differ from manifest.json (copy again): " + ", ".join(bad))
    data = np.load(here("selfcheck.npz"))
    tol = args.tolerance if args.tolerance is not None else bundle["tolerance"]
    backend = open_backend(args.backend, bundle, args.cuda, args.cudart)
    try:
        got = batched(backend, bundle["static_batch"])(data["x"], data["t"])
    finally:
        backend.close()
    want = data["eps"].astype(np.float32)
    err = float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-12))
    ok = bool(np.isfinite(err) and err <= tol)
    status = "passed" if ok else "FAILED"
    print(f"selfcheck {status}: {backend.name} eps relative error {err:.3g} vs ONNX Runtime CPU at deploy time "
          f"(tolerance {tol:g}, {bundle['precision']})")
    return 0 if ok else 1


# ---------------------------------------------------------------- sample

def jetson_state():
    """Power mode and clock lock on a Jetson, None elsewhere (jetson.py: cunet_edge's module, copied verbatim)."""
    try:
        import jetson
    except ImportError:  # a bundle from before jetson.py was added
        return None
    return jetson.power_state()


def load_sampler():
    import sampler  # the bundle's copy of cunet_edge's numpy sampler
    return sampler


def sampler_options(bundle):
    """clip and prediction for the sampler steps, from bundle.json (older bundles without them: ε, [-1, 1])."""
    clip = tuple(bundle.get("data_range", (-1.0, 1.0))) if bundle["clip_denoised"] else False
    return {"clip": clip, "prediction": bundle.get("prediction", "epsilon")}


def cmd_sample(args, bundle):
    sampler = load_sampler()
    abar = np.load(here("schedule.npy"))
    backend = open_backend(args.backend, bundle, args.cuda, args.cudart)
    try:
        eps = batched(backend, bundle["static_batch"])
        t0 = time.perf_counter()
        images = sampler.sample(eps, args.n, tuple(bundle["image_shape"]), abar, sampler=args.sampler,
                                steps=args.steps, eta=args.eta, seed=args.seed, batch_size=args.batch,
                                spacing=args.spacing, data_range=bundle.get("data_range", (-1.0, 1.0)),
                                **sampler_options(bundle))
        seconds = time.perf_counter() - t0
    finally:
        backend.close()
    np.save(args.out, images.astype(np.float32))
    print("%d images %s -> %s (%s, %.2f s)" % (args.n, images.shape[1:], args.out, backend.name, seconds))
    png = os.path.splitext(args.out)[0] + ".png"
    if save_png(images, png):
        print("grid -> " + png)
    return 0


def save_png(images, path):
    """A square grid of the images as PNG, if Pillow is installed; otherwise say so and skip it."""
    try:
        from PIL import Image
    except ImportError:
        print("Pillow is not installed: no PNG grid (the images are in the .npy file)")
        return False
    n, c, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / float(cols)))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    pix = np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = pix[i]
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
    return True


# ---------------------------------------------------------------- power and clocks

class PowerMonitor:
    """Power rails and clocks while a block runs: jetson-stats (jtop), else tegrastats, else not available."""

    def __init__(self, interval_ms=100):
        self.interval_ms, self.samples, self.source = interval_ms, [], "not available"
        self._stop, self._thread, self._proc = threading.Event(), None, None

    def __enter__(self):
        try:
            from jtop import jtop  # noqa: F401
            self.source, target = "jtop", self._poll_jtop
        except ImportError:
            target = None
            if shutil.which("tegrastats"):
                self.source, target = "tegrastats", self._poll_tegrastats
        if target is not None:
            self._thread = threading.Thread(target=target)
            self._thread.daemon = True
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
        if self._thread is not None:
            self._thread.join(5)

    def _poll_jtop(self):
        try:
            from jtop import jtop
            with jtop(interval=self.interval_ms / 1000.0) as jetson:
                while not self._stop.is_set() and jetson.ok():
                    self.samples.append(numeric(jetson.stats))
        except Exception as exc:  # noqa: BLE001 -- the jtop service may be down: record why, never fail the bench
            self.source = f"jtop failed: {exc}"

    def _poll_tegrastats(self):
        try:
            self._proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
            for line in self._proc.stdout:
                self.samples.append(parse_tegrastats(line))
                if self._stop.is_set():
                    break
        except OSError as exc:
            self.source = f"tegrastats failed: {exc}"

    def summary(self):
        if not self.samples:
            return {"source": self.source if self.source != "not available" else "not available"}
        keys = sorted({k for s in self.samples for k in s})
        mean = {k: float(np.mean([s[k] for s in self.samples if k in s])) for k in keys}
        return {"source": self.source, "samples": len(self.samples), "interval_ms": self.interval_ms, "mean": mean}


def numeric(stats):
    return {str(k): float(v) for k, v in dict(stats).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


def parse_tegrastats(line):
    """Loose parse of one tegrastats line: rails in mW, GPU (GR3D) and EMC load % and MHz."""
    out = {}
    rails = re.findall(r"([A-Za-z0-9_]+) (\d+)mW/\d+mW", line)  # JetPack 5/6: VDD_IN 4647mW/4647mW
    rails = rails or re.findall(r"((?:POM|VDD)_[A-Z0-9_]+) (\d+)/\d+", line)  # JetPack 4: POM_5V_IN 3125/3125
    for rail, now in rails:
        out["power_mw." + rail] = float(now)
    for unit in ("GR3D_FREQ", "EMC_FREQ"):
        m = re.search(unit + r" (\d+)%(?:@\[?(\d+))?", line)
        if m:
            out[unit + ".percent"] = float(m.group(1))
            if m.group(2):
                out[unit + ".mhz"] = float(m.group(2))
    return out


# ---------------------------------------------------------------- bench

def percentile_stats(ms):
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "iters": int(a.size)}


def time_calls(fn, warmup, min_iters, min_seconds):
    for _ in range(warmup):
        fn()
    ms, start = [], time.perf_counter()
    while len(ms) < min_iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def cmd_bench(args, bundle):
    static = bundle["static_batch"]
    if static and args.batch != static:
        raise BundleError("this model was exported for batch %d; asked to bench batch %d" % (static, args.batch))
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal([args.batch] + bundle["image_shape"]).astype(np.float32)
    t = np.full((args.batch,), len(np.load(here("schedule.npy"))) // 2, dtype=np.int64)
    backend = open_backend(args.backend, bundle, args.cuda, args.cudart)
    try:
        with PowerMonitor(args.power_interval_ms) as power:
            call_ms = time_calls(lambda: backend(x, t), args.warmup, args.min_iters, args.min_seconds)
            image_ms = [one_image_ms(backend, bundle, args) for _ in range(args.image_reps)]
    finally:
        backend.close()
    stats = percentile_stats(call_ms)
    board = jetson_state()
    result = dict(stats, runtime=backend.name, runtime_version=backend.version, precision=bundle["precision"],
                  batch=args.batch, images_per_s=args.batch / (stats["mean_ms"] / 1e3), peak_mem_mb=peak_rss_mb(),
                  image_latency_ms=float(np.median(image_ms)), image_batch=static or 1, sampler=args.sampler,
                  sampler_steps=args.steps, spacing=args.spacing, device=bundle["device"], bundle_id=bundle_id(),
                  power=power.summary(), machine={"python": platform.python_version(), "platform": platform.platform()},
                  cuda_binding=getattr(backend, "cuda_binding", None))  # TensorRT's CUDA binding (None: ONNX Runtime)
    if board is not None:  # on a Jetson: the figures hold for this power mode and clock state only
        result["jetson"] = board
        for warning in board["warnings"]:
            sys.stderr.write("warning: %s\n" % warning)
    print("%s %s batch %d: p50 %.3f ms, p90 %.3f ms, %.1f images/s per call; image (%s x%d) %.1f ms; power: %s"
          % (backend.name, bundle["precision"], args.batch, stats["p50_ms"], stats["p90_ms"], result["images_per_s"],
             args.sampler, args.steps, result["image_latency_ms"], result["power"]["source"]))
    if args.json:
        write_json(args.json, result)
    return 0


def one_image_ms(backend, bundle, args):
    sampler = load_sampler()
    b = bundle["static_batch"] or 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal([b] + bundle["image_shape"]).astype(np.float32)
    t0 = time.perf_counter()
    abar = np.load(here("schedule.npy"))
    ts, levels = sampler.sampling_schedule(abar, args.steps, sampler=args.sampler, spacing=args.spacing)
    sampler.SAMPLERS[args.sampler](backend, x, abar, ts, levels=levels,
                                   noise=lambda s: rng.standard_normal(s).astype(np.float32),
                                   **sampler_options(bundle))
    return (time.perf_counter() - t0) * 1e3


def bundle_id():
    with open(here("manifest.json")) as fh:
        return json.load(fh).get("id")


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
    print("results -> " + path)


# ---------------------------------------------------------------- command line

# The samplers and spacings of the bundle's sampler.py (listed here so that --help needs no import).
SAMPLER_NAMES = ["ddim", "ddpm", "dpmpp2m", "unipc"]
SPACINGS = ["uniform", "trailing", "karras"]


def parser():
    p = argparse.ArgumentParser(description="Run this cunet-edge bundle: selfcheck, sample, bench.")
    sub = p.add_subparsers(dest="command")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime"], default="auto")
    common.add_argument("--cuda", choices=["auto", "cuda-python", "torch", "ctypes"], default="auto",
                        help="CUDA binding for TensorRT's buffers (auto: the first that works, in this order)")
    common.add_argument("--cudart", help="path of libcudart.so for --cuda ctypes (default: the loader's, then "
                                         "/usr/local/cuda)")
    s = sub.add_parser("selfcheck", parents=[common], help="compare outputs with the ones recorded at deploy time")
    s.add_argument("--tolerance", type=float, help="relative error allowed (default: bundle.json's)")
    s.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle's files")
    s = sub.add_parser("sample", parents=[common], help="draw images with the numpy sampler")
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--steps", type=int, default=32)
    s.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim")
    s.add_argument("--spacing", choices=SPACINGS, default="uniform", help="timestep spacing (see the docs)")
    s.add_argument("--eta", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--out", default="samples.npy")
    s = sub.add_parser("bench", parents=[common], help="latency per call and per image, with power if available")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--json", help="write the result here")
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument("--min-iters", type=int, default=50)
    s.add_argument("--min-seconds", type=float, default=2.0)
    s.add_argument("--steps", type=int, default=50, help="sampler steps of one image")
    s.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim")
    s.add_argument("--spacing", choices=SPACINGS, default="uniform", help="timestep spacing (see the docs)")
    s.add_argument("--image-reps", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--power-interval-ms", type=int, default=100)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    commands = {"selfcheck": cmd_selfcheck, "sample": cmd_sample, "bench": cmd_bench}
    if args.command not in commands:
        parser().print_help()
        return 2
    try:
        return commands[args.command](args, load_bundle())
    except BundleError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except ValueError as exc:  # the sampler's refusal of a bad setting (steps, eta, spacing)
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
