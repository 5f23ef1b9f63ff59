"""The CLI end to end on a tiny real model, and every bad input as a one-line error."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import assert_one_line_error, cli_in_process, cli_subprocess, run
from PIL import Image


def test_help_lists_commands():
    res = run("--help")
    assert res.exit_code == 0
    for cmd in ("train", "sample", "evaluate", "inspect", "unroll", "export", "bench"):
        assert cmd in res.output
        assert run(cmd, "--help").exit_code == 0


def test_train_sample_inspect(tiny_checkpoint, tmp_path):
    man = json.loads((tiny_checkpoint / "manifest.json").read_text())
    assert man["kind"] == "checkpoint" and man["train_step"] == 6 and man["complete"]
    assert {"model.safetensors", "config.json", "samples.png"} <= set(man["files"])
    grid = tmp_path / "grid.png"
    res = run("sample", tiny_checkpoint, "--n", 6, "--steps", 3, "--out", grid)
    assert res.exit_code == 0, res.output
    assert Image.open(grid).size[0] > 8
    res = run("inspect", tiny_checkpoint, "--json", tmp_path / "i.json")
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["params"] > 0 and info["macs"] > 0 and info["nfe_per_call"] == info["ode_blocks"] >= 1
    assert info["solver"]["method"] == "euler" and info["model"]["base_channels"] == 8


def test_evaluate_writes_json_and_metrics(tiny_checkpoint, tmp_path):
    res = run("evaluate", tiny_checkpoint, "--n", 40, "--steps", 2, "--json", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "e.json").read_text())
    for key in ("fid", "kid_mean", "fid_real_reference", "n_samples", "sampler", "sampler_steps"):
        assert key in m
    assert m["n_samples"] == 40 and m["sampler"] == "ddim" and m["sampler_steps"] == 2
    assert m["fid"] > m["fid_real_reference"] > 0  # a 6-step model is far from the data
    stored = json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert stored["evaluate"]["fid"] == stored["evaluate:ddim-2"]["fid"] == m["fid"]


def test_unroll_makes_an_artifact_that_samples_like_its_parent(tiny_checkpoint, tmp_path):
    out = tmp_path / "unrolled"
    res = run("unroll", tiny_checkpoint, "--method", "euler", "--steps", 1, "--out", out, "--json", tmp_path / "u.json")
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "unrolled" and man["parent"]["kind"] == "checkpoint"
    assert man["solver"]["method"] == "euler" and man["solver"]["nfe_per_call"] == man["solver"]["ode_blocks"]
    assert json.loads((tmp_path / "u.json").read_text())["nfe_per_block"] == 1
    # The tiny model was trained with euler x1: unrolled with the same settings, same samples.
    for art, name in ((tiny_checkpoint, "a.png"), (out, "b.png")):
        assert run("sample", art, "--n", 4, "--steps", 3, "--out", tmp_path / name).exit_code == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    # The baked solver travels with the artifact: asking for its own settings works, others are refused.
    assert run("sample", out, "--n", 4, "--steps", 3, "--solver", "euler", "--solver-steps", 1,
               "--out", tmp_path / "c.png").exit_code == 0
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    assert_one_line_error(cli_in_process("sample", out, "--n", 4, "--solver", "rk4", "--out", tmp_path / "d.png"),
                          "solver baked in at unroll time (euler x1); it cannot run rk4 x1")
    assert not (tmp_path / "d.png").exists()
    # A checkpoint runs through torchdiffeq with whatever solver is asked for.
    assert run("sample", tiny_checkpoint, "--n", 4, "--steps", 3, "--solver", "rk4", "--solver-steps", 2,
               "--out", tmp_path / "e.png").exit_code == 0
    assert (tmp_path / "e.png").read_bytes() != (tmp_path / "a.png").read_bytes()
    assert_one_line_error(cli_in_process("sample", tiny_checkpoint, "--solver", "nope", "--out", tmp_path / "f.png"),
                          "nope")
    assert_one_line_error(cli_subprocess("unroll", out, "--out", tmp_path / "again"),
                          "of kind 'unrolled'")  # the real entry point
    assert_one_line_error(cli_in_process("unroll", tiny_checkpoint, "--method", "dopri5", "--out", tmp_path / "x"),
                          "method 'dopri5' is not one of: euler, midpoint, heun2, heun3, rk4")
    assert_one_line_error(cli_in_process("unroll", tiny_checkpoint, "--steps", 0, "--out", tmp_path / "x"), "steps")
    assert not (tmp_path / "x").exists()


def test_train_resumes_from_its_own_output(tiny_config_file, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--config", tiny_config_file, "--steps", 4, "--no-progress", "--out", out).exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["train_step"] == 4
    res = run("train", "--config", tiny_config_file, "--steps", 6, "--no-progress", "--out", out)
    assert res.exit_code == 0 and "6 steps" in res.output
    res = run("train", "--config", tiny_config_file, "--steps", 6, "--lr", 0.5, "--no-progress", "--out", out)
    assert res.exit_code == 1 and "different config (lr differ)" in res.output


def test_missing_truncated_corrupted_and_mismatched_checkpoints(tiny_checkpoint, tmp_path):
    grid = tmp_path / "g.png"
    assert_one_line_error(cli_subprocess("sample", tmp_path / "nope", "--out", grid),
                          "does not exist")  # the real entry point (and inspect's below); the rest in process
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli_in_process("sample", bad, "--out", grid), "truncated")
    weights.write_bytes(data[:-4] + b"\0\0\0\0")
    assert_one_line_error(cli_subprocess("inspect", bad), "corrupted")
    weights.write_bytes(data)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["base_channels"] = 12
    _rewrite(bad, "config.json", json.dumps(cfg))
    assert_one_line_error(cli_in_process("sample", bad, "--out", grid), "does not match its architecture")
    assert not grid.exists()


def _rewrite(art, name, text):
    """Change a payload file and re-record its hash, as a checkpoint from another model would look."""
    import hashlib

    (art / name).write_text(text)
    man = json.loads((art / "manifest.json").read_text())
    man["files"][name] = {"bytes": (art / name).stat().st_size, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (art / "manifest.json").write_text(json.dumps(man))


@pytest.mark.parametrize(
    "args, match",
    [
        (["train", "--dataset", "imagenet", "--out", "{tmp}/o"], "imagenet"),
        (["train", "--steps", "0", "--out", "{tmp}/o"], "steps must be > 0"),
        (["train", "--steps", "-5", "--out", "{tmp}/o"], "steps must be > 0"),
        (["train", "--solver", "rk45", "--out", "{tmp}/o"], "rk45"),
        (["train", "--solver-steps", "0", "--out", "{tmp}/o"], "steps"),
        (["train", "--config", "{tmp}/missing.toml", "--out", "{tmp}/o"], "cannot read config file"),
        (["train", "--out", "{tmp}/afile/sub"], "not a writable directory"),
        (["sample", "{tmp}/afile", "--out", "{tmp}/g.png"], "not an artifact directory"),
        (["sample", "{tmp}", "--out", "{tmp}/g.png"], "no manifest.json"),
        (["sample", "{tmp}/x", "--steps", "0", "--out", "{tmp}/g.png"], "steps must be >= 1"),
        (["sample", "{tmp}/x", "--sampler", "euler", "--out", "{tmp}/g.png"], "sampler 'euler' is not one of"),
        (["sample", "{tmp}/x", "--out", "{tmp}/g.jpg"], "must end in .png"),
        (["evaluate", "{tmp}/x", "--n", "0"], "n must be > 0"),
    ],
)
def test_bad_input_is_one_line(args, match, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    # evaluate's through the real entry point (train's and sample's are in the tests around), the rest in process
    proc = (cli_subprocess if args[0] == "evaluate" else cli_in_process)(*[a.format(tmp=tmp_path) for a in args])
    assert_one_line_error(proc, match)
    assert not (tmp_path / "o").exists() and not (tmp_path / "g.png").exists()


def test_non_image_files_in_folder_dataset(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (8, 8), 128).save(folder / "a.png")
    (folder / "notes.txt").write_text("hello")
    proc = cli_subprocess("train", "--dataset", "folder", "--data-root", folder, "--steps", 1, "--out", tmp_path / "o")
    assert_one_line_error(proc, "notes.txt")
    assert not (tmp_path / "o").exists()


def test_debug_shows_traceback(tmp_path):
    proc = cli_subprocess("--debug", "sample", tmp_path / "nope", "--out", tmp_path / "g.png")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
