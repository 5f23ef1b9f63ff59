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
    assert_one_line_error(cli_in_process("inspect", tmp_path / ("z" * 300)), "cannot open artifact")  # an input
    assert_one_line_error(cli_in_process("pipeline", tmp_path / ("r" * 300), "--out", tmp_path / "o", "--dry-run"),
                          "does not exist")
    assert list(tmp_path.iterdir()) == []


# --- artifacts validated when opened ---------------------------------------------------------------------------

import os  # noqa: E402
import re  # noqa: E402

from cunet_edge.config import load_config_file  # noqa: E402
from cunet_edge.errors import ConfigError  # noqa: E402


def _edit(manifest: dict, change) -> bytes:
    change(manifest)
    return json.dumps(manifest).encode()


def _set(path, value):
    def change(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


MANIFESTS = [
    ("files-list", lambda m: _edit(m, _set(["files"], list(m["files"]))), "files must be a table"),
    ("signature-string", lambda m: _edit(m, _set(["signature"], "x")), "signature must be a table"),
    ("negative-shape", lambda m: _edit(m, _set(["signature", "inputs", "x", "shape"], [None, 1, -8, 8])),
     "dimensions from 1 to"),
    ("huge-shape", lambda m: _edit(m, _set(["signature", "inputs", "x", "shape"], [None, 1, 10**6 * 10**6, 8])),
     "dimensions from 1 to"),
    ("bytes-string", lambda m: _edit(m, _set(["files", "config.json", "bytes"], "12")), "must be a size in bytes"),
    ("bad-hash", lambda m: _edit(m, _set(["files", "config.json", "sha256"], "0" * 63)), "64 lowercase hex"),
    ("absolute-name", lambda m: _edit(m, _set(["files", "/etc/passwd"], {"bytes": 1, "sha256": "0" * 64})),
     "is not a relative path inside the artifact"),
    ("dotdot-name", lambda m: _edit(m, _set(["files", "../../outside.bin"], {"bytes": 1, "sha256": "0" * 64})),
     "is not a relative path inside the artifact"),
    ("deep", lambda m: b'{"kind": "checkpoint", "files": {}, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "nested deeper than"),
    ("not-utf8", lambda m: b'{"kind": "checkpoint\xff\xfe", "files": {}}', "not UTF-8"),
    ("not-a-table", lambda m: b"[1, 2]", "not a cunet-edge manifest"),
    ("kind-int", lambda m: _edit(m, _set(["kind"], 7)), "kind must be a kind name"),
    # found by the fuzz campaign: a name longer than the file system holds was an OSError
    ("long-name", lambda m: _edit(m, _set(["files", "x" * 300], {"bytes": 0, "sha256": "0" * 64})),
     "cannot be opened: File name too long"),
    ("newline-name", lambda m: _edit(m, _set(["files", "a\nb"], {"bytes": 0, "sha256": "0" * 64})),
     "file name 'a\\nb' is not a relative path inside the artifact"),  # found by the campaign: two lines
]


@pytest.mark.parametrize("make,message", [c[1:] for c in MANIFESTS], ids=[c[0] for c in MANIFESTS])
def test_manifests_whose_values_are_wrong_are_one_line_errors(make, message, tiny_checkpoint, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_checkpoint, art)
    (art / "manifest.json").write_bytes(make(json.loads((art / "manifest.json").read_text())))
    before = tree_hash(tmp_path)
    res = cli_in_process("inspect", art)
    assert_one_line_error(res, message)
    assert "bytes, manifest says" not in res.stderr  # nothing outside the artifact was looked at
    assert tree_hash(tmp_path) == before


def test_a_payload_link_out_of_the_artifact_is_not_followed(tiny_checkpoint, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_checkpoint, art)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 12345)
    (art / "config.json").unlink()
    (art / "config.json").symlink_to(secret)
    res = cli_in_process("inspect", art)
    assert_one_line_error(res, "is a link; an artifact holds regular files only")
    assert "12345" not in res.stderr


def test_a_kind_that_does_not_match_its_files(tiny_checkpoint, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_checkpoint, art)
    m = json.loads((art / "manifest.json").read_text())
    m["kind"] = "onnx"
    (art / "manifest.json").write_text(json.dumps(m))
    res = cli_in_process("sample", art, "--out", tmp_path / "x.png", "--n", 2, "--steps", 2)
    assert_one_line_error(res, "of kind 'onnx', which holds model.onnx; its manifest lists no model.onnx")


def test_fifos_where_files_are_expected_do_not_hang(tiny_checkpoint, tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config_file(fifo)
    os.mkfifo(tmp_path / "recipe.toml")
    assert_one_line_error(cli_in_process("pipeline", tmp_path / "recipe.toml", "--out", tmp_path / "r", "--dry-run"),
                          "recipe " + str(tmp_path / "recipe.toml") + " is not a regular file")
    art = tmp_path / "art"
    shutil.copytree(tiny_checkpoint, art)
    (art / "model.safetensors").unlink()
    os.mkfifo(art / "model.safetensors")
    assert_one_line_error(cli_in_process("inspect", art), "model.safetensors is not a regular file")


# --- numbers from the CLI, configs and recipes ------------------------------------------------------------------

NUMBERS = [
    (["sample", "{ckpt}", "--n", 10**12, "--out", "{tmp}/x.png"], "drawing 1000000000000 images needs at least 256 TB"),
    (["sample", "{ckpt}", "--seed", 2**65, "--out", "{tmp}/x.png"], "seed must be <= 4294967295"),
    (["sample", "{ckpt}", "--steps", 5000, "--out", "{tmp}/x.png"], "sampler steps must be an integer in 1..1000"),
    (["bench", "{ckpt}", "--min-seconds", "inf"], "min_seconds must be a finite number, got inf"),
    (["bench", "{ckpt}", "--sampler-steps", 5000], "sampler steps must be an integer in 1..1000"),
    (["bench", "{ckpt}", "--threads", 10**12], "threads must be <= 4096"),  # found by the campaign: an overflow
    (["train", "--threads", 10**12, "--out", "{tmp}/o"], "threads must be <= 4096"),
]


@pytest.mark.parametrize("args,message", NUMBERS, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(NUMBERS)])
def test_cli_numbers_out_of_range_are_refused_before_work(args, message, tiny_checkpoint, tmp_path):
    res = cli_in_process(*[str(a).format(ckpt=tiny_checkpoint, tmp=tmp_path) for a in args])
    assert_one_line_error(res, message)
    assert list(tmp_path.iterdir()) == []


def test_onnx_sampling_checks_the_sampler_options(tiny_onnx, tmp_path):
    for args in (["sample", tiny_onnx, "--steps", 5000, "--out", tmp_path / "x.png"],
                 ["bench", tiny_onnx, "--sampler-steps", 5000]):
        assert_one_line_error(cli_in_process(*args), "sampler steps must be an integer in 1..1000, got 5000")
    assert_one_line_error(cli_in_process("quantize", tiny_onnx, "--out", tmp_path / "q", "--tolerance", "nan"),
                          "tolerance must be a finite number, got nan")  # a manifest with a bare NaN, before
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_with_nan_fails_its_dry_run(tiny_checkpoint, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[[stage]]\nstage = "load"\npath = "{tiny_checkpoint}"\n[[stage]]\nstage = "bench"\n'
                      f'min_seconds = nan\n')
    assert_one_line_error(cli_in_process("pipeline", recipe, "--out", tmp_path / "r", "--dry-run"),
                          "stage 'bench' (bench): min_seconds must be a finite number, got nan")


def test_a_train_stage_whose_model_is_not_a_table(tmp_path):
    """Found by the fuzz campaign: `model = 0` in a train stage was an internal error (TypeError)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[stage]]\nstage = "train"\nmodel = 0\n')
    assert_one_line_error(cli_in_process("pipeline", recipe, "--out", tmp_path / "r", "--dry-run"),
                          "stage 'train' (train): model: expected a table of settings, got 0")


def test_a_model_config_too_big_for_this_machine_is_refused_with_the_estimate(tmp_path):
    from conftest import TINY

    from cunet_edge.checkpoint import train_config_from_dict

    cfg = json.loads(json.dumps(TINY))
    cfg["model"]["base_channels"] = 10**7
    with pytest.raises(ConfigError, match=r"this model config needs at least .* TB of memory \(9e\+15 weights"):
        train_config_from_dict(cfg)


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_onnx"])
def test_a_sample_count_that_would_take_too_long_is_refused_with_the_estimate(fixture, request, tmp_path,
                                                                              monkeypatch):
    """One network call at the sampler's batch is timed before drawing; the calls it would take are refused past
    the bound (24 h; here $CUNET_EDGE_MAX_HOURS = 0.001, 3.6 s) with the estimate in the message."""
    art = request.getfixturevalue(fixture)
    monkeypatch.setenv("CUNET_EDGE_MAX_HOURS", "0.001")
    res = cli_in_process("sample", art, "--n", 10**6, "--out", tmp_path / "x.png")
    assert_one_line_error(res, "drawing 1000000 images would take about ")
    assert "(200000 network calls of " in res.stderr
    assert "ms at batch 250, measured); the bound is 0.001 h (set CUNET_EDGE_MAX_HOURS to raise it)" in res.stderr
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("CUNET_EDGE_MAX_HOURS", "soon")
    assert_one_line_error(cli_in_process("sample", art, "--n", 2, "--out", tmp_path / "x.png"),
                          "CUNET_EDGE_MAX_HOURS must be a number of hours, got 'soon'")
    monkeypatch.delenv("CUNET_EDGE_MAX_HOURS")
    from cunet_edge.limits import max_hours
    assert max_hours() == 24.0


def _reopened_with(art_path: Path, tmp_path: Path, *changes) -> Path:
    """A copy of a real artifact whose manifest has `changes` applied (each a _set)."""
    art = tmp_path / f"art{len(list(tmp_path.iterdir()))}"
    shutil.copytree(art_path, art)
    manifest = json.loads((art / "manifest.json").read_text())
    for change in changes:
        change(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


STAGE_RECORDS = [  # what export writes (verification); prune's records are checked in test_prune.py
    (["verification", "rel_err"], "12", 'verification.rel_err must be a number >= 0 (or "inf"/"nan"), got "12"'),
    (["verification", "rel_err"], -1.0, "verification.rel_err must be a number >= 0"),
    (["verification", "per_timestep"], {"t": 1}, "verification.per_timestep must be a list of at most 10000 rows"),
    (["verification", "timesteps"], [0, -5], "verification.timesteps[1] must be an integer >= 0, got -5"),
    (["verification"], [1], "verification must be a table, got list"),
    (["drift"], {"eps_rel_err": [0.1]}, "drift.eps_rel_err must be a number >= 0"),
]


@pytest.mark.parametrize("key,value,message", STAGE_RECORDS, ids=[".".join(c[0]) + str(i)
                                                                   for i, c in enumerate(STAGE_RECORDS)])
def test_stage_records_are_checked_when_the_artifact_is_opened(key, value, message, tiny_onnx, tmp_path):
    art = _reopened_with(tiny_onnx, tmp_path, _set(key, value))
    assert_one_line_error(cli_in_process("inspect", art), message)


def test_a_non_finite_measurement_as_json_safe_writes_it_is_accepted(tiny_onnx, tmp_path):
    from cunet_edge.artifact import Artifact

    art = _reopened_with(tiny_onnx, tmp_path, _set(["verification", "max_rel_err"], "nan"),
                         _set(["drift"], {"eps_rel_err": 0.0, "sample_psnr_vs_parent": "inf"}))
    assert Artifact.load(art).manifest["drift"]["sample_psnr_vs_parent"] == "inf"


def _with_state(tiny_checkpoint, tmp_path, state: dict) -> Path:
    """A copy of the real checkpoint whose train_state/state.json is `state` (the manifest's hash updated too)."""
    art = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, art)
    data = (json.dumps(state) + "\n").encode()
    (art / "train_state" / "state.json").write_bytes(data)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["train_state/state.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


def test_the_training_state_is_read_with_limits_and_checked(tiny_checkpoint, tmp_path):
    from cunet_edge.artifact import Artifact
    from cunet_edge.checkpoint import load_train_state
    from cunet_edge.errors import ArtifactError

    real = json.loads((tiny_checkpoint / "train_state" / "state.json").read_text())
    assert load_train_state(Artifact.load(tiny_checkpoint))["step"] == real["step"]
    group = real["param_groups"][0]
    cases = [({**real, "step": -3}, "step must be >= 0, got -3"),
             ({**real, "step": 2**70}, "step must be <= "),
             ({"step": 1}, "not a training state"),
             ({**real, "param_groups": [{**group, "lr": "fast"}]}, "param_groups[0].lr: expected a number"),
             ({**real, "param_groups": [{**group, "betas": [0.9, 7]}]}, "param_groups[0].betas must be <= 1"),
             ({**real, "param_groups": [{**group, "params": [0, -1]}]}, "param_groups[0].params must be >= 0"),
             ({**real, "param_groups": []}, "param_groups must hold 1 to 10000 groups, got 0")]
    for i, (state, message) in enumerate(cases):
        art = _with_state(tiny_checkpoint, tmp_path / str(i), state)
        with pytest.raises(ArtifactError, match="state.json: " + re.escape(message)):
            load_train_state(Artifact.load(art))
    art = _with_state(tiny_checkpoint, tmp_path / "deep", {"step": 1, "x": json.loads("[" * 40 + "]" * 40)})
    with pytest.raises(ArtifactError, match="nested deeper than 32 levels"):
        load_train_state(Artifact.load(art))
