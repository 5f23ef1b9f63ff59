"""`pipeline`: a recipe runs every stage, resumes after SIGKILL, skips what is done, and checks the
whole recipe (stages, keys, types, kinds) before any work."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trt_surface
from cli_helpers import assert_one_line_error, cli_in_process, cli_subprocess
from conftest import TINY

from cunet_edge.artifact import Artifact

pytest.importorskip("onnxruntime")


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _stage(stage: str, name: str, **keys) -> str:
    lines = ["[[stage]]", f'stage = "{stage}"', f'name = "{name}"']
    lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


QUICK_BENCH = dict(min_iters=3, min_seconds=0.05, rounds=1, image_reps=1, sampler_steps=2)


def _recipe(tmp_path, bench_batch=1):
    text = "[pipeline]\nthreads = 1\n\n" + "\n".join([
        _stage("train", "checkpoint", **TINY),
        _stage("unroll", "unrolled", method="euler", steps=2),  # two evaluations per block: a quick export
        _stage("export", "onnx", verify_n=4),
        _stage("bench", "bench", inputs=["unrolled", "onnx"], batch=bench_batch, **QUICK_BENCH),
        _stage("evaluate", "evaluate", inputs=["onnx"], n=20, steps=2),
    ])
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def _pipeline(recipe, out, *extra):
    """`cunet-edge pipeline` in this process (the SIGKILL test starts the real entry point)."""
    return cli_in_process("pipeline", recipe, "--out", out, "--no-progress", *extra)


def _skipped(proc) -> set[str]:
    return {line.split("] ")[1].split(" ")[0] for line in proc.stdout.splitlines() if line.endswith("skipped")}


def test_pipeline_survives_sigkill_and_skips_what_is_done(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    # Kill the run with SIGKILL while the export stage is writing its artifact.
    proc = subprocess.Popen([sys.executable, "-m", "cunet_edge", "pipeline", str(recipe), "--out", str(out),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob(".onnx.tmp-*")):
        assert proc.poll() is None, "the pipeline ended before its export stage was caught"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "onnx").exists()  # nothing half-written that looks valid
    assert Artifact.load(out / "unrolled").kind == "unrolled"

    again = _pipeline(recipe, out)
    assert again.returncode == 0, again.stderr
    assert _skipped(again) == {"checkpoint", "unrolled"}
    assert not list(out.glob(".*.tmp-*"))
    onnx = Artifact.load(out / "onnx")  # verifies every file's hash
    metrics = json.loads((onnx.path / "metrics.json").read_text())
    assert "evaluate:ddim-2" in metrics and "bench:onnxruntime:b1:ddim-2" in metrics
    bench = json.loads((out / "bench" / "result.json").read_text())
    assert [r["runtime"] for r in bench["results"]] == ["torch", "onnxruntime"]

    third = _pipeline(recipe, out, "--json", tmp_path / "s.json")
    assert third.returncode == 0 and _skipped(third) == {"checkpoint", "unrolled", "onnx", "bench", "evaluate"}
    assert all(s["skipped"] for s in json.loads((tmp_path / "s.json").read_text())["stages"])

    changed = _pipeline(_recipe(tmp_path, bench_batch=2), out)  # only the stage whose config changed runs
    assert changed.returncode == 0 and _skipped(changed) == {"checkpoint", "unrolled", "onnx", "evaluate"}
    assert "bench:onnxruntime:b2:ddim-2" in json.loads((onnx.path / "metrics.json").read_text())


def test_load_stage_links_the_model_into_the_run(tiny_checkpoint, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(_stage("load", "model", path=str(tiny_checkpoint)) + _stage("unroll", "unrolled"))
    res = _pipeline(recipe, tmp_path / "run")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run" / "model").resolve() == tiny_checkpoint.resolve()
    assert Artifact.load(tmp_path / "run" / "unrolled").manifest["parent"]["id"] == \
        Artifact.load(tiny_checkpoint).manifest["id"]


def test_distill_stage_makes_a_checkpoint_the_next_stage_takes(tiny_checkpoint, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(_stage("load", "model", path=str(tiny_checkpoint))
                      + _stage("distill", "d4", from_steps=8, to_steps=4, train_steps=3, batch_size=4, warmup_steps=0)
                      + _stage("unroll", "u"))
    res = cli_in_process("pipeline", recipe, "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    d4 = Artifact.load(tmp_path / "run" / "d4")
    assert d4.kind == "checkpoint" and d4.manifest["distillation"]["steps"] == 4
    assert Artifact.load(tmp_path / "run" / "u").manifest["parent"]["id"] == d4.manifest["id"]


def _no_gpu_here():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the stage would build an engine")


def test_tensorrt_stage_is_not_run_without_tensorrt_and_the_report_says_why(tiny_unrolled, tmp_path, monkeypatch):
    """Where TensorRT does not import the stage is recorded as not run, with its reason; a stage taking its engine
    is not run either; the rest of the run goes on, and the report's table says "not measured here"."""
    _no_gpu_here()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as where it is not installed
    why = "tensorrt is not installed"
    recipe, out = tmp_path / "r.toml", tmp_path / "run"
    recipe.write_text(_stage("load", "model", path=str(tiny_unrolled)) + _stage("export", "onnx", verify_n=2)
                      + _stage("tensorrt", "trt", n=8, steps=2, sampler_steps=2)
                      + _stage("bench", "bench-trt", inputs=["trt"], **QUICK_BENCH)
                      + _stage("report", "report", measure=False))
    res = _pipeline(recipe, out)
    assert res.returncode == 0, res.stderr
    assert f"[3/5] trt (tensorrt): not run here: {why}" in res.stdout
    assert "[4/5] bench-trt (bench): not run here: its input trt was not run here (" + why in res.stdout
    assert "5 stages (3 run, 2 not run here, 0 skipped)" in res.stdout
    record = json.loads((out / "trt" / "result.json").read_text())
    assert record["stage"] == "tensorrt" and record["inputs"] == ["onnx"] and record["not_measured"].startswith(why)
    assert sorted(p.name for p in (out / "trt").iterdir()) == ["result.json"]  # no half-built engine
    summary = json.loads((out / ".pipeline" / "summary.json").read_text())
    assert summary["stages"][2]["not_run"].startswith(why) and "not_run" not in summary["stages"][1]
    report = json.loads((out / "report" / "report.json").read_text())
    rows = {r["artifact"]: r for r in report["not_measured"]}
    assert rows["trt"]["stage"] == "tensorrt" and rows["trt"]["not_measured"].startswith(why)
    md = (out / "report" / "report.md").read_text()
    assert "## Stages not measured here" in md and f"| trt | tensorrt | onnx | not measured here: {why}" in md
    assert "not measured here: " + why in (out / "report" / "report.html").read_text()
    # Run again where TensorRT imports (the fake made from 10.3's real API surface) but no CUDA GPU is visible:
    # what ran is done; the stage not run is tried again, and now says why with the new reason.
    monkeypatch.setitem(sys.modules, "tensorrt", trt_surface.FakeTensorRT("10.3.0"))
    recipe.write_text(recipe.read_text().split("[[stage]]\nstage = \"bench\"")[0])  # load, export, tensorrt
    again = _pipeline(recipe, out)
    assert again.returncode == 0, again.stderr
    assert _skipped(again) == {"model", "onnx"}
    assert "trt (tensorrt): not run here: TensorRT needs a CUDA GPU, and PyTorch sees none on this machine" in \
        again.stdout
    record = json.loads((out / "trt" / "result.json").read_text())
    assert record["not_measured"] == "TensorRT needs a CUDA GPU, and PyTorch sees none on this machine"


BAD = [
    ("stage = [", "is not TOML"),
    ('[[stage]]\nstage = "distil"\n', "stage 1: unknown stage 'distil'; valid stages: train, load"),
    ('[[stage]]\nstage = "load"\npath = "{ckpt}"\n[[stage]]\nstage = "unroll"\nmethd = "rk4"\n',
     "stage 'unroll' (unroll): unknown config key methd for UnrollConfig; valid keys: method, steps"),
    ('[[stage]]\nstage = "load"\npath = "{ckpt}"\n[[stage]]\nstage = "unroll"\n'
     '[[stage]]\nstage = "bench"\nbatch = "four"\n', "stage 'bench' (bench): batch: expected an integer, got 'four'"),
    ('[[stage]]\nstage = "load"\npath = "{ckpt}"\n[[stage]]\nstage = "unroll"\n[[stage]]\nstage = "quantize"\n',
     "stage 'quantize' (quantize): input 'unroll' makes unrolled; quantize takes onnx"),
    ('[[stage]]\nstage = "unroll"\n', "stage 'unroll' (unroll): needs an input stage, and none comes before it"),
    ('[[stage]]\nstage = "load"\npath = "{ckpt}"\n[[stage]]\nstage = "export"\ninput = "nowhere"\n',
     "stage 'export' (export): input 'nowhere' is not an earlier stage"),
    ('[[stage]]\nstage = "load"\npath = "/no/such/model"\n', "stage load: artifact /no/such/model does not exist"),
    ('[[stage]]\nstage = "load"\nname = "m"\npath = "{ckpt}"\n[[stage]]\nstage = "load"\nname = "m"\npath = "{ckpt}"\n',
     "stage 'm' (load): name 'm' is used by an earlier stage"),
    ('[pipelin]\nthreads = 1\n', "unknown table 'pipelin'"),
    ('[pipeline]\nthreads = 0\n[[stage]]\nstage = "load"\npath = "{ckpt}"\n', "threads must be > 0"),
    ("", "has no stages"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(":")[0][:30] for _, m in BAD])
def test_bad_recipes_are_refused_before_any_work(text, message, tiny_checkpoint, tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text.replace("{ckpt}", str(tiny_checkpoint)))
    for extra in (["--dry-run"], []):  # the first recipe through the real entry point, the rest in process
        cli = cli_subprocess if text == BAD[0][0] else cli_in_process
        assert_one_line_error(cli("pipeline", recipe, "--out", tmp_path / "run", *extra), message)
    assert not (tmp_path / "run").exists()


def test_dry_run_lists_the_stages(tiny_checkpoint, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(_stage("load", "model", path=str(tiny_checkpoint)) + _stage("unroll", "u")
                      + _stage("export", "o") + _stage("quantize", "q", target="cpu")
                      + _stage("bench", "b", inputs=["o", "q"]))
    res = cli_in_process("pipeline", recipe, "--out", tmp_path / "run", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "[4/5] q (quantize) <- o -> onnx-int8" in res.stdout and "5 stages, all valid" in res.stdout
    assert not (tmp_path / "run").exists()


def test_the_digits_recipe_is_valid(tmp_path):
    """recipes/digits.toml (the README's main job), with and without its search grid, passes --dry-run."""
    recipe = Path(__file__).parent.parent / "recipes" / "digits.toml"
    plain = cli_in_process("pipeline", recipe, "--out", tmp_path / "run", "--dry-run")
    assert plain.returncode == 0, plain.stderr
    assert "(report)" in plain.stdout and "int8-cpu (quantize) <- onnx -> onnx-int8" in plain.stdout
    assert "int8-trt (quantize) <- onnx -> onnx-int8" in plain.stdout
    assert "tensorrt (tensorrt) <- int8-trt -> tensorrt-engine" in plain.stdout
    assert "pruned-int8-cpu (quantize) <- pruned-onnx -> onnx-int8" in plain.stdout  # the prune block
    search = cli_in_process("pipeline", recipe, "--out", tmp_path / "run", "--dry-run", "--search")
    assert search.returncode == 0, search.stderr
    assert "search-prune0.6 (prune) <- checkpoint -> checkpoint" in search.stdout
    assert search.stdout.strip().splitlines()[-2].endswith("report (report) -> report")  # the report comes last
    assert not (tmp_path / "run").exists()
