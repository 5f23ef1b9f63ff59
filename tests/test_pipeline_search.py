"""`pipeline --search`: the [search] grid expanded into stages, run, and ranked by the pareto stage
(a file of its own so that pytest-xdist's per-file workers share the pipeline tests' time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, cli_in_process
from test_pipeline import _pipeline, _skipped, _stage

from cunet_edge.errors import ConfigError

pytest.importorskip("onnxruntime")

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
