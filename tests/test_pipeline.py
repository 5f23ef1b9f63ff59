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


@pytest.mark.parametrize("search,message", [
    ("[search]\nprune = [1.5]\n", "search.prune values are fractions of the MACs kept, in (0, 1]; got 1.5"),
    ("[search]\nprecision = [\"int4\"]\n", "search.precision 'int4' is not one of: fp32, fp16, int8"),
    ("[search]\nsampler_step = [4]\n", "unknown config key search.sampler_step for SearchConfig"),
    ("[search]\nspacing = \"leading\"\n", "search.spacing 'leading' is not one of: uniform, trailing, karras"),
    ("[search]\nsampler = \"euler\"\n", "search.sampler 'euler' is not one of: ddpm, ddim, dpmpp2m, unipc"),
    ("", "has no [search] table to search over"),
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
    assert "pruned-int8-cpu (quantize) <- pruned-onnx -> onnx-int8" in plain.stdout  # the prune block
    search = cli_in_process("pipeline", recipe, "--out", tmp_path / "run", "--dry-run", "--search")
    assert search.returncode == 0, search.stderr
    assert "search-prune0.6 (prune) <- checkpoint -> checkpoint" in search.stdout
    assert search.stdout.strip().splitlines()[-2].endswith("report (report) -> report")  # the report comes last
    assert not (tmp_path / "run").exists()
