"""`bench`: latency per network call and per image of artifacts on their runtimes, side by side.

Protocol (MLPerf single-stream style): warm-up, then at least `min_iters` calls and
`min_seconds`; p50/p90/p99/mean. Several targets are timed in interleaved rounds, so the
slow phases of a shared machine fall on all of them alike and their ratios can be trusted.
GPU calls are timed with CUDA events. On CPU the achieved GFLOP/s is set against this
machine's float32 matrix-multiply peak, measured in the same run.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import Artifact
from .config import check_choice, check_positive
from .constants import PROFILE_TIMESTEP
from .diffusion import SPACINGS, alphas_cumprod, sampling_schedule
from .errors import ConfigError
from .jetson import power_state
from .kinds import runtime_for
from .limits import check_number, check_threads
from .records import SOLVER, bench_section, write_metrics
from .runtimes.base import open_runner
from .runtimes.numpy_sampler import SAMPLERS
from .timing import collect_samples, summarize_ms, time_call, wall_clock_ms

__all__ = ["BenchConfig", "BenchTarget", "parse_target", "bench", "format_bench", "matmul_peak_gflops",
           "example_feed", "image_call"]


BENCH_LIMITS = {"batch": 65536, "warmup": 100_000, "min_iters": 1_000_000, "min_seconds": 3600.0, "rounds": 1000,
                "image_reps": 1000}


@dataclass(frozen=True)
class BenchConfig:
    """How to measure: batch, protocol limits, rounds, the end-to-end sampler, and runner options."""

    batch: int = 1
    warmup: int = 10
    min_iters: int = 50
    min_seconds: float = 2.0
    rounds: int = 3
    sampler: str = "ddim"
    sampler_steps: int = 50
    spacing: str = "uniform"
    image_reps: int = 3
    provider: str = "cpu"
    precision: str = "fp32"
    device: str = "auto"
    cuda_graphs: bool = False
    threads: int | None = None
    trt_cache: str | None = None  # onnxruntime's TensorRT provider: its engine cache folder

    def __post_init__(self):
        for name in ("batch", "min_iters", "rounds", "sampler_steps", "image_reps"):
            check_positive(name, getattr(self, name))
        check_positive("min_seconds", self.min_seconds)
        check_positive("warmup", self.warmup, allow_zero=True)
        # Sensible ranges: a protocol that cannot end in a day is a typo (10^12 iterations, a year of seconds).
        for name, high in BENCH_LIMITS.items():
            check_number(name, getattr(self, name), high=high)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("spacing", self.spacing, SPACINGS)
        if self.threads is not None:
            check_threads(self.threads)


# Per-target runner options in a target spec (PATH@RUNTIME:OPT,OPT), so that variants of one
# artifact (fp32 vs fp16, with and without CUDA graphs, CPU vs CUDA provider) are timed side by side.
TARGET_OPTIONS = {
    "torch": {"fp32": ("precision", "fp32"), "tf32": ("precision", "tf32"), "fp16": ("precision", "fp16"),
              "graphs": ("cuda_graphs", True), "cpu": ("device", "cpu"), "cuda": ("device", "cuda"),
              "compile": ("compile", True)},
    "onnxruntime": {"cpu": ("provider", "cpu"), "cuda": ("provider", "cuda"), "tensorrt": ("provider", "tensorrt"),
                    "spin": ("spinning", True), "nospin": ("spinning", False)},
}


@dataclass(frozen=True)
class BenchTarget:
    """One artifact on one runtime, with runner options that override the run's (`options`)."""

    path: str
    runtime: str
    options: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        opts = f":{','.join(self.options)}" if self.options else ""
        return f"{Path(self.path).name}@{self.runtime}{opts}"

    def overrides(self) -> dict[str, Any]:
        return dict(TARGET_OPTIONS[self.runtime][o] for o in self.options)


def parse_target(spec: str, runtime: str | None = None) -> BenchTarget:
    """`PATH`, `PATH@RUNTIME` or `PATH@RUNTIME:OPT,OPT`; without a runtime, the one for the artifact's kind.

    Options: torch takes fp32, tf32, fp16, graphs, cpu, cuda, compile (torch.compile); onnxruntime takes cpu, cuda,
    tensorrt, spin, nospin (whether idle intra-op threads spin-wait; ONNX Runtime spins by default).
    """
    path, _, rest = spec.partition("@")
    rt, _, opts = rest.partition(":")
    rt = rt or runtime
    if not rt:
        rt = runtime_for(Artifact.load(path, verify=False).kind, path)
    options = tuple(o for o in opts.split(",") if o) if opts else ()
    valid = TARGET_OPTIONS.get(rt, {})
    for o in options:
        if o not in valid:
            raise ConfigError(f"unknown option {o!r} for runtime {rt!r} in {spec!r}; valid: "
                              f"{', '.join(valid) or 'none'}")
    return BenchTarget(path, rt, options)


def _runner_options(runtime: str, cfg: BenchConfig) -> dict[str, Any]:
    if runtime == "torch":
        return {"device": cfg.device, "precision": cfg.precision, "cuda_graphs": cfg.cuda_graphs, "threads": cfg.threads}
    if runtime == "onnxruntime":
        return {"provider": cfg.provider, "threads": cfg.threads, "trt_cache": cfg.trt_cache}
    return {}


def _cuda_event_ms(fn) -> float:
    """One call timed between two CUDA events on the current stream."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def matmul_peak_gflops(threads: int | None = None, n: int = 1024, seconds: float = 1.0) -> float:
    """This CPU's float32 matrix-multiply rate (GFLOP/s) with the given torch thread count: the peak to compare with."""
    import torch


    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = time_call(lambda: torch.mm(a, b), warmup=3, min_iters=10, min_seconds=seconds)["p50_ms"]
    return 2 * n**3 / (ms / 1e3) / 1e9


def example_feed(runner, batch: int, seed: int = 0) -> dict:
    import numpy as np

    sig = runner.signature["inputs"]
    fixed = runner.static_batch()
    if fixed is not None and fixed != batch:
        raise ConfigError(f"{runner.artifact.path} was exported for batch {fixed}; asked to bench batch {batch}")
    shape = [batch] + [d for d in sig["x"]["shape"][1:]]
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal(shape).astype(sig["x"]["dtype"]), "t": np.full((batch,), PROFILE_TIMESTEP, dtype=np.int64)}


def image_call(runner, cfg: BenchConfig, diffusion, shape):
    """One image (or one static batch) through the numpy sampler with `sampler_steps` network calls."""
    import numpy as np


    b = runner.static_batch() or 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, *shape), dtype=np.float32)
    abar = alphas_cumprod(diffusion)
    ts, levels = sampling_schedule(diffusion, cfg.sampler_steps, sampler=cfg.sampler, spacing=cfg.spacing)
    eps = runner.eps_fn()

    def run():
        SAMPLERS[cfg.sampler](eps, x.copy(), abar, ts, noise=lambda s: rng.standard_normal(s, dtype=np.float32),
                              levels=levels, **diffusion.sampler_options())
        runner.synchronize()

    return run, b


def _machine(threads: int | None) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}


def _peak_rss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024 if platform.system() != "Darwin" else kb / 2**20


def _target_options(t: BenchTarget, cfg: BenchConfig) -> dict[str, Any]:
    opts = _runner_options(t.runtime, cfg) | t.overrides()
    if opts.get("provider") != "tensorrt":
        opts.pop("trt_cache", None)  # the cache belongs to the targets on the TensorRT provider only
    return opts


def _open_all(stack, targets, cfg: BenchConfig) -> list:
    if cfg.warmup == 0 and any(_target_options(t, cfg).get("compile") for t in targets):
        raise ConfigError("torch.compile compiles on the first call: a compiled target needs warmup >= 1 "
                          "(untimed calls first)")
    if cfg.trt_cache is not None and not any("trt_cache" in _target_options(t, cfg) for t in targets):
        raise ConfigError("--trt-cache is for onnxruntime targets on the TensorRT provider (--provider tensorrt, "
                          "or PATH@onnxruntime:tensorrt); no target uses it")
    runners = [stack.enter_context(open_runner(t.path, t.runtime, **_target_options(t, cfg))) for t in targets]
    for r in runners:  # the sampler options every runtime takes, checked before any timing (a ConfigError)
        sampling_schedule(r.train_config().diffusion, cfg.sampler_steps, sampler=cfg.sampler, spacing=cfg.spacing)
    return runners


# Idle time before each timed image when several targets are open. ONNX Runtime's intra-op workers spin for a while
# after a call; timed right after another target's image, an image shared the second core with those spinning
# threads: on the digits model at DDIM 16 with four sessions open, 28 to 55 ms per image against 13 to 17 ms after a
# 50 ms pause, and 14 ms with one session open (docs/results/2026-12-02-paper64-quiet.md). Per-call timings are
# robust to it (warm-up calls, medians over many calls); three images are not.
SETTLE_S = 0.05


def _timers(runners, cfg: BenchConfig, bar, task) -> tuple[list[list[float]], list[list[float]]]:
    """Per-call and per-image milliseconds of every runner, the runners taken in turn in each round."""
    import math


    calls, images = [], []
    for r in runners:
        measure = _cuda_event_ms if r.device == "cuda" else wall_clock_ms
        calls.append((r.bind(example_feed(r, cfg.batch)), measure))
        tc = r.train_config()
        shape = tuple(r.signature["inputs"]["x"]["shape"][1:])
        images.append(image_call(r, cfg, tc.diffusion, shape))
    per_call: list[list[float]] = [[] for _ in runners]
    per_image: list[list[float]] = [[] for _ in runners]
    for k in range(cfg.rounds):
        for i, (fn, measure) in enumerate(calls):
            per_call[i] += collect_samples(fn, warmup=cfg.warmup if k == 0 else 2, measure=measure,
                                           min_iters=math.ceil(cfg.min_iters / cfg.rounds),
                                           min_seconds=cfg.min_seconds / cfg.rounds)
            bar.update(task, advance=1)
    if cfg.warmup and cfg.image_reps:  # one untimed image each: its batch's first call may compile or capture a graph
        for fn, _b in images:
            fn()
    for _ in range(cfg.image_reps):
        for i, (fn, _b) in enumerate(images):
            if len(images) > 1:
                time.sleep(SETTLE_S)
            per_image[i].append(wall_clock_ms(fn))
            bar.update(task, advance=1)
    return per_call, per_image


def _result(runner, cfg: BenchConfig, call_ms, image_ms, image_batch, peak) -> dict:
    import numpy as np


    stats = summarize_ms(call_ms)
    cost = runner.model_cost() or {}
    out = {"artifact": str(runner.artifact.path), "artifact_id": runner.artifact.manifest.get("id"),
           "kind": runner.artifact.kind, **runner.describe(), "batch": cfg.batch, **stats,
           "images_per_s": cfg.batch / (stats["mean_ms"] / 1e3), "image_latency_ms": float(np.median(image_ms)),
           "image_p90_ms": float(np.percentile(image_ms, 90)), "image_reps": len(image_ms),
           "image_batch": image_batch, "sampler": cfg.sampler, "sampler_steps": cfg.sampler_steps,
           "spacing": cfg.spacing,
           "solver": runner.artifact.manifest.get(SOLVER), "macs_per_call": cost.get("macs"),
           "params": cost.get("params"), "nfe_per_call": cost.get("nfe_per_call"),
           "graph_macs_per_call": cost.get("graph_macs")}
    macs = cost.get("graph_macs") or cost.get("macs")  # what the exported graph really computes, if known
    if macs:
        out["gflops_achieved"] = 2 * macs * cfg.batch / (stats["p50_ms"] / 1e3) / 1e9
        if runner.device == "cpu" and peak:
            out["fraction_of_matmul_peak"] = out["gflops_achieved"] / peak
    if runner.device == "cuda":
        import torch

        out["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def bench(targets: list[BenchTarget], cfg: BenchConfig, *, progress: bool = True, record: bool = True) -> dict:
    """Benchmark each target (artifact on a runtime) side by side; ratios are against the first target."""
    from contextlib import ExitStack

    from rich.progress import Progress

    if not targets:
        raise ConfigError("nothing to benchmark")
    with ExitStack() as stack:
        runners = _open_all(stack, targets, cfg)
        peak = matmul_peak_gflops(cfg.threads) if any(r.device == "cpu" for r in runners) else None
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("bench", total=len(runners) * (cfg.rounds + cfg.image_reps))
            per_call, per_image = _timers(runners, cfg, bar, task)
        rows = [_result(r, cfg, c, im, r.static_batch() or 1, peak) for r, c, im in zip(runners, per_call, per_image)]
    rss = _peak_rss_mb()
    jetson = power_state()  # None off a Jetson
    for row, t in zip(rows, targets):
        if jetson is not None:  # in each record: the figures hold for this power mode and clock state only
            row["jetson"] = {k: jetson[k] for k in ("power_mode", "power_mode_id", "clocks_locked")}
        row["peak_mem_mb"] = rss  # process peak RSS: with several targets, they share it
        row["label"] = t.label
        row["speedup_vs_first"] = rows[0]["p50_ms"] / row["p50_ms"]
        row["image_speedup_vs_first"] = rows[0]["image_latency_ms"] / row["image_latency_ms"]
    machine = _machine(cfg.threads) | ({"jetson": jetson} if jetson is not None else {})
    result = {"results": rows, "machine": machine, "matmul_peak_gflops": peak,
              "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    if record:
        for row in rows:
            write_metrics(row["artifact"], bench_section(row), row)
    return result


def format_bench(result: dict) -> str:
    """A table of the targets with ratios to the first one."""
    head = f"{'target':44} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'img/s':>8} {'image ms':>9} {'GFLOP/s':>8} {'x first':>8}"
    lines = [head]
    for r in result["results"]:
        gf = f"{r['gflops_achieved']:8.2f}" if "gflops_achieved" in r else f"{'-':>8}"
        lines.append(f"{r['label'][:44]:44} {r['p50_ms']:8.3f} {r['p90_ms']:8.3f} {r['p99_ms']:8.3f} "
                     f"{r['images_per_s']:8.1f} {r['image_latency_ms']:9.1f} {gf} {r['speedup_vs_first']:8.2f}")
    first = result["results"][0]
    spacing = "" if first.get("spacing", "uniform") == "uniform" else f" ({first['spacing']} spacing)"
    lines.append(f"batch {first['batch']}; image = {first['sampler']} x{first['sampler_steps']} sampler steps"
                 f"{spacing}; peak RSS {first['peak_mem_mb']:.0f} MB")
    jetson = result["machine"].get("jetson")
    if jetson:
        locked = {True: "locked", False: "NOT locked", None: "unknown"}[jetson["clocks_locked"]]
        lines.append(f"Jetson ({jetson['l4t']}): power mode {jetson['power_mode'] or 'unknown'}"
                     f"{'' if jetson['power_mode_id'] is None else ' (' + str(jetson['power_mode_id']) + ')'}; "
                     f"clocks {locked}")
    if result["matmul_peak_gflops"]:
        lines.append(f"CPU fp32 matmul peak here: {result['matmul_peak_gflops']:.1f} GFLOP/s "
                     f"({result['machine']['torch_threads']} threads)")
    return "\n".join(lines)
