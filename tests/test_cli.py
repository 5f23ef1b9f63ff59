"""The CLI end to end on a tiny real model, and every bad input as a one-line error."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import sys

import click
import pytest
from cli_helpers import assert_one_line_error, cli_in_process, cli_subprocess, run
from click.testing import CliRunner
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


# --- defaults: every option that fills a config field takes the field's default, shown in --help ----------------

# Options that are not config fields: where output goes, how the run is shown or launched, what to load.
RUN_OPTIONS = {"json_path", "out", "progress", "procs", "config_file", "runtime", "provider", "compare", "fmt",
               "sweep", "device", "calibrate", "host", "accept_new_host_key", "replace", "dry_run", "search",
               "solver", "solver_steps", "threads"}


def _fields():
    """command -> {option: [(default config, its class or a function; the field or parameter the value goes to)]}."""
    from cunet_edge.benchmark import BenchConfig
    from cunet_edge.checkpoint import train_config_from_options
    from cunet_edge.devices.deploy import DeployConfig, SshConfig, run_remote
    from cunet_edge.devices.estimate import CalibrateConfig, EstimateConfig
    from cunet_edge.distillation import DistillConfig
    from cunet_edge.export.onnx import OnnxExportConfig
    from cunet_edge.export.tensorrt import EngineConfig
    from cunet_edge.export.torch_tensorrt import TorchTensorRTConfig
    from cunet_edge.importing import import_model
    from cunet_edge.inspection import inspect_preset
    from cunet_edge.pruning import PruneConfig
    from cunet_edge.quantize.int8 import QuantizeConfig
    from cunet_edge.report.stage import ReportConfig
    from cunet_edge.sampling import EvaluateConfig, SampleConfig
    from cunet_edge.sweep import SweepConfig
    from cunet_edge.training import TrainConfig
    from cunet_edge.unrolling import UnrollConfig

    def same(cfg, *names):
        return {n: [(cfg, n)] for n in names}

    t, q, r, e = TrainConfig(), QuantizeConfig(), ReportConfig(), EstimateConfig()
    sampler = ("n", "sampler", "steps", "spacing", "eta", "seed", "solver", "solver_steps")
    return {
        "train": {"dataset": [(t, "data.name")], "data_root": [(t, "data.root")], "arch": [(t, "model.arch")],
                  "image_size": [(t, "data.image_size"), (t, "model.image_size")], "download": [(t, "data.download")],
                  "method": [(t, "model.solver.method")], "solver_steps": [(t, "model.solver.steps")],
                  **{n: [(t, f"model.solver.{n}")] for n in ("rtol", "atol", "adjoint")},
                  **same(t, "steps", "batch_size", "lr", "seed"), "preset": [(train_config_from_options, "preset")]},
        "inspect": {"preset": [(inspect_preset, "name")], "image_size": [(inspect_preset, "image_size")],
                    "in_channels": [(inspect_preset, "in_channels")]},
        "unroll": {**same(UnrollConfig(), "method", "steps"),
                   **same(SweepConfig(), "max_steps", "tolerance", "fid", "fid_n")},
        "prune": same(PruneConfig, "target_macs", "target_params", "importance", "scope", "iterative_steps",
                      "importance_batches", "ratio_step", "coarse_step", "select", "finetune_steps", "distill_weight",
                      "lr", "batch_size", "seed", "keep"),
        "distill": same(DistillConfig(), "from_steps", "factor", "to_steps", "train_steps", "lr", "lr_schedule",
                        "weighting",
                        "batch_size", "warmup_steps", "ema_decay", "seed", "save_every", "fid_n"),
        "export": {**{n: [(OnnxExportConfig(), n), (TorchTensorRTConfig(), n)]
                      for n in ("precision", "dynamic_batch", "batch")},
                   **same(OnnxExportConfig(), "opset", "tolerance"),
                   **same(EngineConfig(), "workspace_mb", "timing_cache", "dla_core", "gpu_fallback", "min_batch",
                          "opt_batch", "max_batch", "tf32")},
        "quantize": {"calibration_images": [(q, "calibration.n_images")],
                     "calibration_steps": [(q, "calibration.sampler_steps")],
                     **{n: [(q, f"calibration.{n}")] for n in ("method", "percentile", "seed")},
                     **same(q, "target", "tolerance", "max_float_layers", "select")},
        "sample": same(SampleConfig(), *sampler),
        "evaluate": same(EvaluateConfig(), *sampler, "features", "inception_weights"),
        "bench": same(BenchConfig(), "batch", "provider", "trt_cache", "precision", "device", "cuda_graphs", "threads",
                      "sampler_steps", "sampler", "spacing", "min_iters", "min_seconds", "rounds"),
        "report": {"device": [(r, "devices")], **same(r, "samples", "seed", "measure", "threads")},
        "estimate": {"precision": [(e, "precisions")], "threads": [(CalibrateConfig(), "threads")],
                     **same(e, "batch", "sampler_steps", "float_layers", "launch_us", "top")},
        "deploy": {"tarball": [(DeployConfig, "tarball")], "bench_batch": [(run_remote, "bench_batch")],
                   "ssh_port": [(SshConfig, "port")], "identity": [(SshConfig, "identity")],
                   "ssh_option": [(SshConfig, "options")], "remote_dir": [(SshConfig, "remote_dir")],
                   "remote_python": [(SshConfig, "remote_python")]},
        "import": {"code_dir": [(import_model, "code_dir")]},
    }


def _default(owner, path):
    """The default at `path` of a config instance, of a dataclass's field, or of a function's parameter."""
    if isinstance(owner, type):
        field = {f.name: f for f in dataclasses.fields(owner)}[path]
        return field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
    if callable(owner):
        return inspect.signature(owner).parameters[path].default
    for attr in path.split("."):
        owner = getattr(owner, attr)
    return owner


def _commands():
    """label -> (command name, click command) of every command and subcommand."""
    from cunet_edge.cli import COMMANDS, main

    ctx, out = click.Context(main), {}
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        for sub, c in cmd.commands.items() if isinstance(cmd, click.Group) else [("", cmd)]:
            out[f"{name} {sub}".strip()] = name, c
    return out


@pytest.mark.parametrize("label", list(_commands()))
def test_option_defaults_are_the_config_defaults(label):
    """An option filling a config field defaults to the field's default (or to None: the config applies it),
    and --help shows that default. Hard-coding another default in a decorator fails here."""
    name, cmd = _commands()[label]
    fields, ctx = _fields().get(name, {}), click.Context(cmd)
    for p in cmd.params:
        if not isinstance(p, click.Option):
            continue
        if p.name not in fields:
            assert p.name in RUN_OPTIONS, f"{label} {p.opts[0]}: map it to its config field in _fields()"
            continue
        wants = [_default(owner, path) for owner, path in fields[p.name]]
        default = None if p.default in (None, (), getattr(click.core, "UNSET", None)) else p.default
        if default is not None:
            got = float(default) if isinstance(default, str) and isinstance(wants[0], float) else default
            assert all(got == w for w in wants), f"{label} {p.opts[0]} defaults to {default!r}, the config to {wants}"
            assert p.show_default or p.is_flag, f"{label} {p.opts[0]}: --help should show the default"
        shown = re.search(r"\[default: (.*)\]", p.get_help_record(ctx)[1] or "")
        if shown:  # "X", or "X for onnx, Y for torch-tensorrt"
            values = [s.split(" for ")[0] for s in shown.group(1).split(", ")]
            for w in wants:
                text = (p.opts[0] if w else p.secondary_opts[0]).lstrip("-") if p.secondary_opts else str(w)
                assert text in values, f"{label} {p.opts[0]} --help shows {shown.group(1)!r}, the config {w!r}"


class _Called(BaseException):
    """Raised by a stand-in for a library stage, carrying what the command passed it (a BaseException, so that
    it passes the CLI's last line of defence, which turns any Exception into an `internal error` line)."""


@pytest.mark.parametrize("args, stage, index, config, required", [
    (["train", "--out", "{tmp}/o"], "cunet_edge.training:train", 0, "cunet_edge.training:TrainConfig", {}),
    (["unroll", "c", "--out", "{tmp}/o"], "cunet_edge.unrolling:unroll", 1, "cunet_edge.unrolling:UnrollConfig", {}),
    (["unroll", "c", "--sweep"], "cunet_edge.sweep:solver_sweep", 1, "cunet_edge.sweep:SweepConfig", {}),
    (["prune", "c", "--target-macs", "0.5", "--out", "{tmp}/o"], "cunet_edge.pruning:prune", 1,
     "cunet_edge.pruning:PruneConfig", {"target_macs": 0.5}),
    (["export", "u", "--out", "{tmp}/o"], "cunet_edge.export.onnx:export_onnx", 1,
     "cunet_edge.export.onnx:OnnxExportConfig", {}),
    (["export", "o", "--format", "tensorrt", "--out", "{tmp}/o"], "cunet_edge.export.tensorrt:build_engine", 1,
     "cunet_edge.export.tensorrt:EngineConfig", {}),
    (["export", "u", "--format", "torch-tensorrt", "--out", "{tmp}/o"],
     "cunet_edge.export.torch_tensorrt:compile_torch_tensorrt", 1,
     "cunet_edge.export.torch_tensorrt:TorchTensorRTConfig", {}),
    (["quantize", "o", "--out", "{tmp}/o"], "cunet_edge.quantize.int8:quantize_int8", 1,
     "cunet_edge.quantize.int8:QuantizeConfig", {}),
    (["sample", "c", "--out", "{tmp}/g.png"], "cunet_edge.sampling:write_sample_grid", 2,
     "cunet_edge.sampling:SampleConfig", {}),
    (["evaluate", "c"], "cunet_edge.evaluation:evaluate_checkpoint", 1, "cunet_edge.sampling:EvaluateConfig", {}),
    (["bench", "c", "--runtime", "torch"], "cunet_edge.benchmark:bench", 1, "cunet_edge.benchmark:BenchConfig", {}),
    (["report", "r", "--out", "{tmp}/o"], "cunet_edge.report.stage:report", 1,
     "cunet_edge.report.stage:ReportConfig", {}),
    (["estimate", "o", "--device", "any"], "cunet_edge.devices.estimate:estimate", 2,
     "cunet_edge.devices.estimate:EstimateConfig", {}),
    (["estimate", "o", "--calibrate"], "cunet_edge.devices.estimate:calibrate", 2,
     "cunet_edge.devices.estimate:CalibrateConfig", {}),
    (["deploy", "o", "--device", "any", "--out", "{tmp}/o"], "cunet_edge.devices.deploy:deploy", 1,
     "cunet_edge.devices.deploy:DeployConfig", {"device": "any"}),
])
def test_unset_options_leave_the_config_defaults(args, stage, index, config, required, tmp_path, monkeypatch):
    """Run with no options, each command hands its stage a config equal to the dataclass's own defaults."""
    import importlib

    def load(spec):
        module, attr = spec.split(":")
        return importlib.import_module(module), attr

    def stand_in(*a, **kw):
        raise _Called(a[index])

    # The command module imports the stage at its top, under its own name: patch it wherever it is bound.
    importlib.import_module(f"cunet_edge.cli.{args[0]}")
    home, attr = load(stage)
    original = getattr(home, attr)
    monkeypatch.setattr(home, attr, stand_in)
    for name, mod in list(sys.modules.items()):
        if name.startswith("cunet_edge.cli") and mod is not None:
            for key, value in list(vars(mod).items()):
                if value is original:
                    monkeypatch.setattr(mod, key, stand_in)
    module, cls = load(config)
    with pytest.raises(_Called) as got:
        run(*[a.format(tmp=tmp_path) for a in args])
    assert got.value.args[0] == getattr(module, cls)(**required)


def test_command_reference_shows_the_current_help():
    """docs/commands.md's `--help` blocks are what the commands print now (scripts/help_blocks.py rewrites them)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "help_blocks.py"
    spec = importlib.util.spec_from_file_location("help_blocks", path)
    blocks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blocks)
    text = blocks.PAGE.read_text()
    assert len(blocks.BLOCK.findall(text)) >= 17  # the group, every command, and the devices subcommands
    _, stale = blocks.refresh(text)
    assert not stale, f"stale --help blocks in docs/commands.md: {stale}; run python scripts/help_blocks.py"


@click.command()
def _buggy():
    """A command with a bug nobody anticipated."""
    {}["missing"]


def test_an_unanticipated_exception_is_one_internal_error_line_with_its_own_exit_code(monkeypatch):
    """A bug is never shown as bad input (exit 1) nor as a wall of traceback: one line, exit 3; --debug raises it."""
    from cunet_edge import cli as cli_mod

    monkeypatch.setitem(cli_mod.COMMANDS, "buggy", "test_cli:_buggy")
    res = CliRunner().invoke(cli_mod.main, ["buggy"], prog_name="cunet-edge")
    assert res.exit_code == cli_mod.INTERNAL_ERROR_EXIT == 3
    assert res.stderr.strip() == "internal error: KeyError: 'missing' (run with --debug for the traceback)"
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli_mod.main, ["--debug", "buggy"], prog_name="cunet-edge")
    assert isinstance(res.exception, KeyError)
    # click's own exits keep their codes: a usage error is 2, --help is 0
    assert CliRunner().invoke(cli_mod.main, ["buggy", "--nope"]).exit_code == 2
    assert CliRunner().invoke(cli_mod.main, ["buggy", "--help"]).exit_code == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_infinity_are_refused_where_a_positive_number_is_expected(value):
    assert_one_line_error(cli_in_process("train", "--lr", value, "--out", "/nonexistent/never"),
                          "lr must be a finite number")
