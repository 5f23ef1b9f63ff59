"""Hostile inputs: values that parse but are wrong, numbers out of range, paths that hurt, and writes that must
never touch what the user did not ask to be written (issue 19). The fuzz campaign is in tests/test_fuzz.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from cunet_edge.records import read_metrics


def test_metrics_updates_from_two_processes_keep_every_section(tmp_path):
    """Two processes each merge N sections into one metrics.json at once: all 2N are there (the read-merge-write
    is locked; without the lock a two-process run lost a quarter of them)."""
    n = 60
    code = textwrap.dedent(f"""
        import sys
        from cunet_edge.records import write_metrics
        for i in range({n}):
            write_metrics(sys.argv[1], f"{{sys.argv[2]}}:{{i}}", {{"i": i, "pad": "x" * 2000}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    sections = read_metrics(tmp_path)
    missing = sorted({f"{t}:{i}" for t in "ab" for i in range(n)} - set(sections))
    assert not missing, f"{len(missing)} of {2 * n} sections lost: {missing[:5]}"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    json.loads((tmp_path / "metrics.json").read_text())


# --- never touch what the user did not ask to be written ------------------------------------------------------

import hashlib  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from cli_helpers import assert_one_line_error, cli_in_process  # noqa: E402

from cunet_edge.artifact import ArtifactWriter  # noqa: E402
from cunet_edge.errors import OutputPathError  # noqa: E402


def tree_hash(root: Path) -> dict[str, str]:
    """Every file (and link) under root, by relative path: its content's hash (a link: its target)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "->" + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


QUICK_BENCH = 'min_iters = 3\nmin_seconds = 0.05\nrounds = 1\nimage_reps = 1\nsampler_steps = 2\n'


def _recipe(tmp_path, ckpt, *more) -> Path:
    text = f'[[stage]]\nstage = "load"\nname = "model"\npath = "{ckpt}"\n' + "".join(more)
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_pipeline_refuses_an_out_holding_the_users_folders(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    (run / "photos").mkdir(parents=True)
    (run / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (run / "model").mkdir()
    (run / "model" / "notes.txt").write_text("mine")
    before = tree_hash(run)
    recipe = _recipe(tmp_path, tiny_checkpoint)
    res = cli_in_process("pipeline", recipe, "--out", run, "--no-progress")
    assert_one_line_error(res, "is not empty and is not a pipeline run folder (it holds model, photos)")
    assert tree_hash(run) == before
    # A pipeline's own folder in which the user put a folder by a stage's name: that stage is refused, nothing removed.
    shutil.rmtree(run / "photos")
    (run / ".pipeline").mkdir()
    before = tree_hash(run)
    res = cli_in_process("pipeline", recipe, "--out", run, "--no-progress")
    assert_one_line_error(res, "model was not written by this pipeline; stage 'model' would replace it")
    assert tree_hash(run) == before


def test_pipeline_into_an_artifact_or_while_another_runs_is_refused(tiny_checkpoint, tmp_path):
    from filelock import FileLock

    before = tree_hash(tiny_checkpoint)
    recipe = _recipe(tmp_path, tiny_checkpoint)
    assert_one_line_error(cli_in_process("pipeline", recipe, "--out", tiny_checkpoint, "--no-progress"),
                          "is an artifact; a run folder must be")
    assert_one_line_error(cli_in_process("pipeline", recipe, "--out", tiny_checkpoint / "run", "--no-progress"),
                          f"is inside artifact {tiny_checkpoint.resolve()}")
    assert tree_hash(tiny_checkpoint) == before
    run = tmp_path / "run"
    (run / ".pipeline").mkdir(parents=True)
    with FileLock(str(run / ".pipeline" / "lock")):  # another run holds the run folder
        res = cli_in_process("pipeline", recipe, "--out", run, "--no-progress")
    assert_one_line_error(res, f"another pipeline run is writing into {run}")
    assert not (run / "model").exists()


@pytest.mark.parametrize("command", [
    ["unroll", "{ckpt}", "--out", "{ckpt}/unrolled"],
    ["export", "{ckpt}", "--out", "{ckpt}/../{name}/onnx"],
    ["inspect", "{ckpt}", "--json", "{ckpt}/model.safetensors"],
    ["sample", "{ckpt}", "--out", "{ckpt}/grid.png"],
])
def test_outputs_inside_an_input_artifact_are_refused(command, tiny_checkpoint, tmp_path):
    before = tree_hash(tiny_checkpoint)
    args = [a.format(ckpt=tiny_checkpoint, name=tiny_checkpoint.name) for a in command]
    res = cli_in_process(*args)
    assert_one_line_error(res, f"is inside artifact {tiny_checkpoint.resolve()}")
    assert tree_hash(tiny_checkpoint) == before


def test_report_replace_replaces_only_a_report(tiny_checkpoint, tmp_path):
    pytest.importorskip("matplotlib")
    mine = tmp_path / "thesis"
    (mine / "chapters").mkdir(parents=True)
    (mine / "chapters" / "one.tex").write_text("years of work")
    (mine / "report.json").write_text('{"variants": []}')
    before = tree_hash(mine)
    res = cli_in_process("report", tiny_checkpoint, "--out", mine, "--replace", "--no-measure")
    assert_one_line_error(res, f"--replace replaces only a report, and {mine} is not one (it holds chapters)")
    assert tree_hash(mine) == before
    assert_one_line_error(cli_in_process("report", tiny_checkpoint, "--out", tiny_checkpoint, "--replace"),
                          "--replace replaces only a report")


def test_load_then_bench_writes_nothing_into_the_loaded_model(tiny_checkpoint, tmp_path):
    model = tmp_path / "mine"
    shutil.copytree(tiny_checkpoint, model)
    before = tree_hash(model)
    recipe = _recipe(tmp_path, model, f'[[stage]]\nstage = "bench"\nname = "bench"\n{QUICK_BENCH}')
    res = cli_in_process("pipeline", recipe, "--out", tmp_path / "run", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert tree_hash(model) == before  # no metrics.json, no lock file: the loaded model is not the run's
    rows = json.loads((tmp_path / "run" / "bench" / "result.json").read_text())["results"]
    assert len(rows) == 1 and Path(rows[0]["artifact"]).resolve() == model.resolve() and rows[0]["p50_ms"] > 0


def test_a_second_writer_to_the_same_out_gets_an_error_and_the_first_output_stays(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(OutputPathError, match="was created by another process while this one ran"):
        with ArtifactWriter(out, kind="checkpoint", stage="test", config={}) as second:
            (second.dir / "weights.bin").write_bytes(b"second")
            with ArtifactWriter(out, kind="checkpoint", stage="test", config={}) as first:
                (first.dir / "weights.bin").write_bytes(b"first")
    assert (out / "weights.bin").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # the second's staging folder is gone


def test_names_too_long_for_the_file_system_are_refused_before_work(tiny_checkpoint, tmp_path):
    long = tmp_path / ("x" * 240)  # fits the file system, but not with the staging folder's longer name
    assert_one_line_error(cli_in_process("unroll", tiny_checkpoint, "--out", long), "use a shorter name")
    assert_one_line_error(cli_in_process("inspect", tiny_checkpoint, "--json", tmp_path / ("y" * 300)),
                          "use a shorter name")
    assert list(tmp_path.iterdir()) == []
