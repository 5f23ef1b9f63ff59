"""`bench`: the protocol's figures, side-by-side targets with ratios, metrics.json, and bad input."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_one_line_error, cli_in_process, cli_subprocess, run

from cunet_edge.benchmark import BenchConfig, bench, parse_target
from cunet_edge.records import bench_section as metrics_section
from cunet_edge.errors import ConfigError

QUICK = ["--min-iters", 3, "--min-seconds", 0.05, "--rounds", 2, "--sampler-steps", 2, "--threads", 1]


def test_bench_compares_torch_and_onnxruntime(tiny_unrolled, tiny_onnx, tmp_path):
    out = tmp_path / "b.json"
    res = run("bench", tiny_unrolled, "--compare", tiny_onnx, "--compare", f"{tiny_unrolled}@torch", "--batch", 2,
              *QUICK, "--json", out)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    rows = data["results"]
    assert [r["runtime"] for r in rows] == ["torch", "onnxruntime", "torch"]
    for r in rows:
        for key in ("runtime", "precision", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "images_per_s",
                    "peak_mem_mb", "image_latency_ms", "image_p90_ms", "sampler_steps", "gflops_achieved",
                    "fraction_of_matmul_peak"):
            assert key in r, key
        assert r["batch"] == 2 and r["sampler_steps"] == 2 and r["iters"] >= 3
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["peak_mem_mb"] > 10
        assert r["image_latency_ms"] <= r["image_p90_ms"] and r["image_reps"] == 3
        assert r["images_per_s"] == pytest.approx(2 / (r["mean_ms"] / 1e3))
        assert r["solver"]["method"] == "euler" and r["macs_per_call"] == rows[0]["macs_per_call"] > 0
    assert rows[0]["speedup_vs_first"] == 1.0
    assert rows[1]["speedup_vs_first"] == pytest.approx(rows[0]["p50_ms"] / rows[1]["p50_ms"])
    assert data["matmul_peak_gflops"] > 0.1 and data["machine"]["cpu_count"] >= 1
    assert "x first" in res.output and "onnxruntime" in res.output
    metrics = json.loads((tiny_onnx / "metrics.json").read_text())
    assert metrics["bench:onnxruntime:b2:ddim-2"]["p50_ms"] == rows[1]["p50_ms"]


def test_target_options_override_the_run_and_keep_their_own_metrics(tiny_unrolled):
    t = parse_target(f"{tiny_unrolled}@torch:fp32,cpu")
    assert t.label == f"{tiny_unrolled.name}@torch:fp32,cpu"
    assert t.overrides() == {"precision": "fp32", "device": "cpu"}
    assert parse_target(f"{tiny_unrolled}@onnxruntime:cuda").overrides() == {"provider": "cuda"}
    with pytest.raises(ConfigError, match=r"unknown option 'int8' for runtime 'torch'.*valid: fp32, tf32, fp16"):
        parse_target(f"{tiny_unrolled}@torch:int8")
    cfg = BenchConfig(min_iters=3, min_seconds=0.05, rounds=1, image_reps=1, sampler_steps=2, threads=1,
                      device="cuda")  # the run asks for CUDA; the target's own option puts it on the CPU
    row = bench([t], cfg, progress=False, record=False)["results"][0]
    assert row["device"] == "cpu" and row["label"] == t.label
    assert metrics_section(row) == "bench:torch:b1:ddim-2"
    gpu_row = {**row, "device": "cuda", "precision": "fp16", "cuda_graphs": True, "batch": 16}
    assert metrics_section(gpu_row) == "bench:torch-cuda-fp16-graphs:b16:ddim-2"
    assert metrics_section({"runtime": "onnxruntime", "provider": "cuda", "batch": 1, "sampler": "ddpm",
                            "sampler_steps": 50}) == "bench:onnxruntime-cuda:b1:ddpm-50"


def test_onnxruntime_spinning_is_a_target_option(tiny_onnx):
    """`:nospin` really reaches the session (its config entry) and gets a metrics section of its own."""
    from cunet_edge.runtimes.base import open_runner

    cfg = BenchConfig(min_iters=3, min_seconds=0.05, rounds=1, image_reps=1, sampler_steps=2, threads=1)
    rows = bench([parse_target(str(tiny_onnx)), parse_target(f"{tiny_onnx}@onnxruntime:nospin")], cfg,
                 progress=False, record=False)["results"]
    assert [r["spinning"] for r in rows] == ["default", False]
    assert [metrics_section(r) for r in rows] == ["bench:onnxruntime:b1:ddim-2", "bench:onnxruntime-nospin:b1:ddim-2"]
    runner = open_runner(tiny_onnx, "onnxruntime", spinning=False)
    runner._open()
    assert runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_image_latency_counts_every_sampler_step(tiny_onnx):
    cfg = dict(min_iters=3, min_seconds=0.05, rounds=1, image_reps=2, threads=1)
    few = bench([parse_target(str(tiny_onnx))], BenchConfig(sampler_steps=2, **cfg), progress=False, record=False)
    many = bench([parse_target(str(tiny_onnx))], BenchConfig(sampler_steps=40, **cfg), progress=False, record=False)
    assert many["results"][0]["image_latency_ms"] > 5 * few["results"][0]["image_latency_ms"]


def test_bench_bad_input(tiny_unrolled, tiny_onnx, tmp_path):
    assert_one_line_error(cli_subprocess("bench", tiny_onnx, "--batch", 0), "batch must be")  # the real entry point
    assert_one_line_error(cli_in_process("bench", tiny_onnx, "--runtime", "tensorrt"),
                          "kind 'onnx'; runtime 'tensorrt' runs tensorrt-engine (use --runtime onnxruntime)")
    assert_one_line_error(cli_in_process("bench", tiny_onnx, "--provider", "cuda", *QUICK), "CUDAExecutionProvider")
    assert_one_line_error(cli_in_process("bench", tiny_onnx, "--solver", "midpoint"),
                          "solver baked in at unroll time (euler x3); it cannot run midpoint x3")
    assert_one_line_error(cli_in_process("bench", tmp_path / "nothing"), "nothing")
    with pytest.raises(ConfigError, match="rounds"):
        BenchConfig(rounds=0)


# `nvpmodel -q` and `jetson_clocks --show` as JetPack 6 prints them on an Orin Nano (15 W mode, DVFS on; then locked).
NVPMODEL_Q = "NV Power Mode: 15W\n0\n"
CLOCKS_DVFS = """SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano Developer Kit
Online CPUs: 0-5
cpu0:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1510400 CurrentFreq=960000 IdleStates: WFI=1 c7=1
cpu1:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1510400 CurrentFreq=729600 IdleStates: WFI=1 c7=1
cpu2:  Online=0 Governor=schedutil MinFreq=729600 MaxFreq=1510400 CurrentFreq=729600 IdleStates: WFI=1 c7=1
GPU MinFreq=306000000 MaxFreq=624750000 CurrentFreq=306000000
Active GPU TPCs: 4
EMC MinFreq=204000000 MaxFreq=2133000000 CurrentFreq=2133000000 FreqOverride=0
FAN Dynamic Speed control=active hwmon2_pwm=64
NV Power Mode: 15W
"""
CLOCKS_LOCKED = """SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano Developer Kit
Online CPUs: 0-5
cpu0:  Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 c7=0
cpu1:  Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 c7=0
cpu2:  Online=0 Governor=schedutil MinFreq=729600 MaxFreq=1510400 CurrentFreq=729600 IdleStates: WFI=1 c7=1
GPU MinFreq=624750000 MaxFreq=624750000 CurrentFreq=624750000
EMC MinFreq=204000000 MaxFreq=2133000000 CurrentFreq=2133000000 FreqOverride=1
NV Power Mode: 15W
"""


def _fake_jetson(tmp_path, monkeypatch, clocks: str) -> None:
    """A release file and fake nvpmodel / jetson_clocks executables (shell scripts) first on PATH."""
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, flag, out in (("nvpmodel", "-q", NVPMODEL_Q), ("jetson_clocks", "--show", clocks)):
        (bindir / f"{name}.out").write_text(out)
        script = bindir / name
        script.write_text(f'#!/bin/sh\n[ "$1" = "{flag}" ] || exit 64\ncat "$(dirname "$0")/{name}.out"\n')
        script.chmod(0o755)
    monkeypatch.setenv("CUNET_EDGE_TEGRA_RELEASE", str(release))
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")


def test_bench_on_a_jetson_records_power_mode_and_clock_lock_and_warns(tiny_onnx, tmp_path, monkeypatch):
    from cunet_edge.jetson import parse_jetson_clocks, power_state

    monkeypatch.setenv("CUNET_EDGE_TEGRA_RELEASE", str(tmp_path / "absent"))
    assert power_state() is None  # not a Jetson: nothing recorded
    _fake_jetson(tmp_path, monkeypatch, CLOCKS_DVFS)
    proc = cli_in_process("bench", tiny_onnx, "--batch", 3, *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert "Jetson (# R36 (release), REVISION: 4.0" in proc.stdout
    assert "power mode 15W (0); clocks NOT locked" in proc.stdout
    assert ("warning: clocks are not locked (cpu0, cpu1, gpu scale with the load): run `sudo jetson_clocks`"
            in proc.stderr)
    record = json.loads((tiny_onnx / "metrics.json").read_text())["bench:onnxruntime:b3:ddim-2"]
    assert record["jetson"] == {"power_mode": "15W", "power_mode_id": 0, "clocks_locked": False}
    # Locked clocks (the offline core is left out); a tool that fails is a warning, not a guess.
    locked = parse_jetson_clocks(CLOCKS_LOCKED)
    assert locked["locked"] and locked["online_cpus"] == 2 and locked["gpu_hz"]["current"] == 624750000
    (tmp_path / "bin" / "jetson_clocks.out").write_text(CLOCKS_LOCKED)
    (tmp_path / "bin" / "nvpmodel").write_text("#!/bin/sh\necho 'NVPM ERROR: failed to open file' >&2\nexit 1\n")
    state = power_state()
    assert state["clocks_locked"] is True and state["power_mode"] is None
    assert state["warnings"] == ["power mode unknown: nvpmodel -q exited 1: NVPM ERROR: failed to open file "
                                 "(it may need sudo)"]


def test_torch_compile_is_a_target_option_refused_without_warmup(tiny_unrolled):
    t = parse_target(f"{tiny_unrolled}@torch:compile")
    assert t.overrides() == {"compile": True} and t.label == f"{tiny_unrolled.name}@torch:compile"
    cfg = BenchConfig(warmup=0, min_iters=3, min_seconds=0.05, rounds=1, image_reps=1, sampler_steps=2, threads=1)
    with pytest.raises(ConfigError, match="compiles on the first call: a compiled target needs warmup >= 1"):
        bench([parse_target(str(tiny_unrolled)), t], cfg, progress=False, record=False)
    from cunet_edge.runtimes.base import open_runner

    with pytest.raises(ConfigError, match="torch.compile and CUDA graphs: pick one"):
        open_runner(tiny_unrolled, "torch", compile=True, cuda_graphs=True)
    row = {"runtime": "torch", "device": "cpu", "compiled": True, "batch": 8, "sampler_steps": 2}
    assert metrics_section(row) == "bench:torch-compile:b8:ddim-2"


@pytest.mark.slow  # inductor compiles C++ for the CPU: tens of seconds even for the tiny model
def test_torch_compile_runs_beside_eager(tiny_unrolled):
    """`@torch:compile` is timed side by side with eager: the compile happens in the warm-up, not in the figures."""
    cfg = BenchConfig(min_iters=5, min_seconds=0.05, rounds=1, image_reps=2, sampler_steps=2, threads=1, batch=2)
    rows = bench([parse_target(f"{tiny_unrolled}@torch"), parse_target(f"{tiny_unrolled}@torch:compile")], cfg,
                 progress=False, record=False)["results"]
    assert [r["compiled"] for r in rows] == [False, True]
    assert [metrics_section(r) for r in rows] == ["bench:torch:b2:ddim-2", "bench:torch-compile:b2:ddim-2"]
    # A compile (seconds) inside the timed calls or the per-image reps would dwarf eager's milliseconds.
    assert rows[1]["p90_ms"] < 20 * rows[0]["p90_ms"] and rows[1]["image_latency_ms"] < 20 * rows[0]["image_latency_ms"]
