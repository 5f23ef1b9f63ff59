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
from cunet_edge.errors import ConfigError

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


SEARCH = """
[search]
sampler_steps = [4, 2]
solver_steps = [1]
precision = ["fp32", "int8"]
n = 20
quality_tolerance = 0.5
quantize_config = {calibration = {n_images = 4, sampler_steps = 16, method = "minmax"}, tolerance = 0.5, \
select = "fewest-float", val_n = 16, drift_samples = 4, compare_fp16 = false}
bench_config = {min_iters = 3, min_seconds = 0.05, rounds = 1, image_reps = 1}
"""


def test_search_names_the_pareto_front_and_the_fastest_variant(tiny_checkpoint, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(_stage("load", "checkpoint", path=str(tiny_checkpoint)) + SEARCH)
    plain = cli_in_process("pipeline", recipe, "--out", tmp_path / "plain", "--dry-run")
    assert plain.returncode == 0 and "1 stages" in plain.stdout  # [search] is only expanded with --search
    # Another run's evaluation of the loaded model at the same sampler setting (n = 8, not the search's 20): the
    # search must rank the model by its own run's evaluation, not by this one.
    assert cli_in_process("evaluate", tiny_checkpoint, "--n", "8", "--steps", "4", "--seed", "3").returncode == 0
    loaded_metrics = (tiny_checkpoint / "metrics.json").read_bytes() if (tiny_checkpoint / "metrics.json").exists() \
        else None
    res = _pipeline(recipe, tmp_path / "run", "--search")
    assert res.returncode == 0, res.stderr
    # The loaded model lies outside the run: the run never writes into it (issue 19); its evaluations are in the
    # evaluate stages' result.json.
    assert ((tiny_checkpoint / "metrics.json").read_bytes() if (tiny_checkpoint / "metrics.json").exists()
            else None) == loaded_metrics
    result = json.loads((tmp_path / "run" / "search-pareto" / "result.json").read_text())
    rows = result["rows"]
    assert len(rows) == 3 * 2  # (checkpoint, fp32 ONNX, INT8 ONNX) x 2 sampler step counts
    ref = result["reference"]
    assert ref["variant"] == f"{tiny_checkpoint.name} · ddim 4" and ref["runtime"] == "torch"
    for r in rows:
        if Path(r["artifact"]).resolve() == tiny_checkpoint.resolve():
            stage = json.loads((tmp_path / "run" / f"search-eval-ddim{r['sampler_steps']}" / "result.json").read_text())
            recorded = next(m for m in stage["results"] if Path(m["artifact"]).resolve() == tiny_checkpoint.resolve())
        else:
            metrics = json.loads((Path(r["artifact"]) / "metrics.json").read_text())
            recorded = metrics[f"evaluate:ddim-{r['sampler_steps']}"]
        assert r["fid"] == recorded["fid"]
        assert r["image_ms"] == pytest.approx(r["call_ms"] * r["sampler_steps"])
        # on the front exactly when no other row is at least as fast and better
        beaten = any(o is not r and o["image_ms"] <= r["image_ms"] and o["fid"] < r["fid"] for o in rows)
        assert r["on_front"] == (not beaten), r["variant"]
    ok = [r for r in rows if r["fid"] <= ref["fid"] * 1.5]
    assert result["fastest_within_tolerance"]["image_ms"] == min(r["image_ms"] for r in ok)
    assert "fastest within FID +50%" in res.stdout
    again = _pipeline(recipe, tmp_path / "run", "--search")
    assert again.returncode == 0 and "search-pareto" not in _skipped(again)  # summaries always rerun
    assert {"search-full-solver1-int8", "search-eval-ddim4", "search-bench"} <= _skipped(again)


def test_search_distill_axis_ranks_students_at_their_own_steps(tiny_checkpoint, tmp_path):
    """distill = [0, 2]: a student for 2 DDIM steps and its ONNX variant join the grid, evaluated (and ranked) at
    DDIM 2 trailing, the grid they were distilled for, beside the model's own variants at the search's steps."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(_stage("load", "checkpoint", path=str(tiny_checkpoint))
                      + "[search]\nsampler_steps = [4]\nprecision = [\"fp32\"]\ndistill = [0, 2]\nn = 20\n"
                      + "quality_tolerance = 0.5\nbench_config = {min_iters = 3, min_seconds = 0.05, rounds = 1, "
                      + "image_reps = 1}\ndistill_config = {from_steps = 8, train_steps = 6, batch_size = 8, "
                      + "warmup_steps = 0, save_every = 3}\n")
    res = _pipeline(recipe, tmp_path / "run", "--search")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "run"
    student = json.loads((run / "search-distill2" / "manifest.json").read_text())
    assert student["distillation"]["steps"] == 2 and student["distillation"]["settings"]["from_steps"] == 8
    result = json.loads((run / "search-pareto" / "result.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {f"{tiny_checkpoint.name} · ddim 4", "search-full-solver1-fp32 · ddim 4",
                         "search-distill2 · ddim 2 trailing", "search-distill2-solver1-fp32 · ddim 2 trailing"}
    evaluated = json.loads((run / "search-eval-distill2" / "result.json").read_text())["results"]
    assert [(m["sampler"], m["sampler_steps"], m["spacing"]) for m in evaluated] == [("ddim", 2, "trailing")] * 2
    for m in evaluated:
        r = rows[f"{Path(m['artifact']).name} · ddim 2 trailing"]
        assert r["fid"] == m["fid"] and r["distilled_steps"] == 2 and r["image_ms"] == pytest.approx(2 * r["call_ms"])
    assert result["reference"]["variant"] == f"{tiny_checkpoint.name} · ddim 4"
    # Without 0 only the model (the reference) and the students; to_steps belongs to the axis.
    from cunet_edge.search import SearchConfig, expand_search

    names = [s["name"] for s in expand_search(SearchConfig(distill=(4,), precision=("fp32",)))]
    assert "search-full-solver1" not in names and {"search-distill4", "search-eval-distill4"} <= set(names)
    with pytest.raises(ConfigError, match="to_steps"):
        SearchConfig(distill=(4,), distill_config={"to_steps": 2})


@pytest.mark.parametrize("search,message", [
    ("[search]\nprune = [1.5]\n", "search.prune values are fractions of the MACs kept, in (0, 1]; got 1.5"),
    ("[search]\nprecision = [\"int4\"]\n", "search.precision 'int4' is not one of: fp32, fp16, int8"),
    ("[search]\nsampler_step = [4]\n", "unknown config key search.sampler_step for SearchConfig"),
    ("[search]\nspacing = \"leading\"\n", "search.spacing 'leading' is not one of: uniform, trailing, karras"),
    ("[search]\nsampler = \"euler\"\n", "search.sampler 'euler' is not one of: ddpm, ddim, dpmpp2m, unipc"),
    ("", "has no [search] table to search over"),
    ("[search]\ndistill = [-4]\n", "search.distill values (0: no distillation) must be >= 0, got -4"),
    ("[search]\ndistill = [3]\n", "does not halve down to to_steps 3"),
])
def test_bad_search_tables(search, message, tiny_checkpoint, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(_stage("load", "checkpoint", path=str(tiny_checkpoint)) + search)
    assert_one_line_error(cli_in_process("pipeline", recipe, "--out", tmp_path / "run", "--search", "--dry-run"),
                          message)


def test_search_with_another_sampler_and_spacing_passes_it_to_every_stage(tiny_checkpoint, tmp_path):
    """The generated evaluate, bench and pareto stages all get the search's sampler and spacing (dry run)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(_stage("load", "checkpoint", path=str(tiny_checkpoint))
                      + "[search]\nsampler = \"unipc\"\nspacing = \"karras\"\nsampler_steps = [8, 6]\n"
                      + "precision = [\"fp32\"]\n")
    res = cli_in_process("pipeline", recipe, "--out", tmp_path / "run", "--search", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "search-eval-unipc-karras8 (evaluate)" in res.stdout and "search-eval-unipc-karras6 (evaluate)" in res.stdout
    from cunet_edge.search import SearchConfig, expand_search

    specs = expand_search(SearchConfig(sampler="unipc", spacing="karras", sampler_steps=(8, 6), precision=("fp32",)))
    for spec in specs:
        if spec["stage"] in ("evaluate", "bench", "pareto"):
            assert (spec["sampler"], spec["spacing"]) == ("unipc", "karras"), spec["name"]


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
