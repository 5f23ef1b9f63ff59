"""A neural-ODE U-Net written unlike ours (tests/byom/odeunet.py: first-order blocks f(s, x), InstanceNorm, one
state tensor, `from torchdiffeq import odeint` at module level, an NFE counter, `odeint_adjoint` in one block)
goes through import → unroll → export → quantize → bench → deploy → report, and its board bundle samples
with the numpy sampler reading its v-prediction.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import assert_one_line_error, cli_in_process

from cunet_edge.artifact import Artifact

BYOM = Path(__file__).resolve().parent / "byom"
QUANTIZE = ('calibration = {n_images = 4, sampler_steps = 16, method = "minmax"}\ntolerance = 0.5\n'
            'select = "fewest-float"\nval_n = 16\ndrift_samples = 4\ncompare_fp16 = false\n')


def _odeunet_spec(root: Path) -> Path:
    """odeunet's weights (seeded init) and an import spec for them: v-prediction, sigmoid schedule, T = 200."""
    sys.path.insert(0, str(BYOM))
    try:
        import odeunet
    finally:
        sys.path.remove(str(BYOM))
    torch.manual_seed(0)
    torch.save(odeunet.build(image_size=8, width=8, emb_dim=16).state_dict(), root / "w.pt")
    spec = root / "odeunet.toml"
    spec.write_text(f'[network]\nfactory = "odeunet:build"\ncode_dir = "{BYOM}"\n'
                    "kwargs = { image_size = 8, width = 8, emb_dim = 16 }\n"
                    '[weights]\nfile = "w.pt"\n[image]\nsize = 8\nchannels = 1\n'
                    '[diffusion]\nprediction = "v"\nschedule = "sigmoid"\ntimesteps = 200\n')
    return spec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("byom")
    spec = _odeunet_spec(root)
    recipe = root / "r.toml"
    recipe.write_text(
        f'[pipeline]\nthreads = 1\n[[stage]]\nstage = "load"\nname = "imported"\nspec = "{spec}"\n'
        '[[stage]]\nstage = "unroll"\nname = "unrolled"\nmethod = "rk4"\nsteps = 1\n'
        '[[stage]]\nstage = "export"\nname = "onnx"\n'
        f'[[stage]]\nstage = "quantize"\nname = "int8"\ntarget = "cpu"\n{QUANTIZE}'
        '[[stage]]\nstage = "bench"\nname = "bench"\ninputs = ["unrolled", "onnx", "int8"]\n'
        "min_iters = 3\nmin_seconds = 0.05\nrounds = 1\nimage_reps = 1\nsampler_steps = 2\n"
        '[[stage]]\nstage = "report"\nname = "report"\n')
    proc = cli_in_process("pipeline", recipe, "--out", root / "run", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return root


def test_unroll_equals_torchdiffeq_and_records_the_solves(run):
    art = Artifact.load(run / "run" / "unrolled")
    rec, check = art.manifest["solver"], art.manifest["unroll_check"]
    # odeunet: a closure rk4 solve, an adjoint dopri5 solve over [0, 2], an rk4 solve at three output times
    assert rec["method"] == "rk4" and rec["ode_blocks"] == 3
    assert [c["api"] for c in rec["odeint"]] == ["odeint", "odeint_adjoint", "odeint"]
    # rk4 x1: 4 evaluations per interval between consecutive output times
    assert [c["nfe"] for c in rec["odeint"]] == [4 * (c["times"] - 1) for c in rec["odeint"]]
    assert rec["nfe_per_call"] == sum(c["nfe"] for c in rec["odeint"]) and rec["odeint"][2]["times"] > 2
    assert check["max_abs_err_vs_torchdiffeq_fixed_grid"] <= 1e-10
    assert 0 < check["rel_err_vs_imported_solvers"] < 1  # the user's dopri5 and step sizes differ from rk4 x1
    assert art.config["model"]["unroll_method"] == "rk4"


def test_the_export_is_static_and_matches_pytorch(run):
    art = Artifact.load(run / "run" / "onnx")
    ops = {n.op_type for n in onnx.load(str(art.path / "model.onnx")).graph.node}
    assert not ops & {"Loop", "If", "Scan"} and "InstanceNormalization" in ops
    assert art.manifest["verification"]["rel_err"] <= 1e-4
    assert art.manifest["model_cost"]["nfe_per_call"] == art.manifest["solver"]["nfe_per_call"]


def test_int8_bench_and_report_cover_the_imported_model(run):
    q = Artifact.load(run / "run" / "int8")
    assert q.kind == "onnx-int8" and np.isfinite(q.manifest["drift"]["eps_rel_err"])
    result = json.loads((run / "run" / "bench" / "result.json").read_text())
    rows = {Path(r["artifact"]).name: r for r in result["results"]}
    assert {"unrolled", "onnx", "int8"} <= set(rows) and all(r["p50_ms"] > 0 for r in rows.values())
    report = (run / "run" / "report" / "report.md").read_text()
    assert "int8" in report and "onnx" in report


def test_the_board_bundle_samples_the_v_prediction_model(run, tmp_path):
    # The recipe's INT8 model is quantized for the cpu target, which TensorRT cannot build: refused for a board.
    assert_one_line_error(cli_in_process("deploy", run / "run" / "int8", "--device", "jetson-orin-nano-8gb",
                                         "--out", tmp_path / "q", "--no-tarball"), "quantize the fp32 ONNX again with "
                                                                                   "--target tensorrt")
    assert not (tmp_path / "q").exists()
    proc = cli_in_process("deploy", run / "run" / "onnx", "--device", "jetson-orin-nano-8gb", "--out", tmp_path / "b",
                          "--no-tarball")
    assert proc.returncode == 0, proc.stderr
    bundle = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert bundle["prediction"] == "v" and bundle["data_range"] == [-1.0, 1.0]
    board = subprocess.run([sys.executable, "run.py", "sample", "--backend", "onnxruntime", "--n", "2", "--steps", "3",
                            "--out", "s.npy"], cwd=tmp_path / "b", capture_output=True, text=True, timeout=300)
    assert board.returncode == 0, board.stderr
    images = np.load(tmp_path / "b" / "s.npy")
    assert images.shape == (2, 1, 8, 8) and np.isfinite(images).all() and np.abs(images).max() <= 1


def test_unroll_and_export_refuse_what_they_cannot_do(run, tmp_path):
    imported = run / "run" / "imported"
    assert_one_line_error(cli_in_process("export", imported, "--out", tmp_path / "o"),
                          "calls torchdiffeq (3 solves per call); unroll it first")
    assert_one_line_error(cli_in_process("unroll", imported, "--out", tmp_path / "u"),
                          "is an imported model: its solvers are its own code's; pass --method")
    unrolled = run / "run" / "unrolled"
    assert_one_line_error(cli_in_process("unroll", unrolled, "--method", "rk4", "--out", tmp_path / "u"),
                          "is an artifact of kind 'unrolled'")
    assert not (tmp_path / "o").exists() and not (tmp_path / "u").exists()
