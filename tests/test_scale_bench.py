"""benchmarks/scale.py: every variant side by side, measured, with the peaks, ε errors, targets and a profile.

The first test measures a run folder built by the real stages (the session's tiny model: unrolled, exported,
quantized, pruned and exported) through `--run`; the last builds the 16-px default model itself (`--quick`). Both
take minutes on the shared machine (slow); the bad-input checks are fast.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch_pruning")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


def _script():
    spec = importlib.util.spec_from_file_location("scale_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_run(tiny_checkpoint, tiny_unrolled, tiny_onnx, tmp_path_factory):
    """A run folder with the stage names scale.py reads, every artifact made by the project's own stages."""
    from cunet_edge.export.onnx import OnnxExportConfig, export_onnx
    from cunet_edge.pruning import PruneConfig, prune
    from cunet_edge.quantize.calibration import CalibrationConfig
    from cunet_edge.quantize.int8 import QuantizeConfig, quantize_int8

    run = tmp_path_factory.mktemp("scale") / "run"
    run.mkdir()
    for name, art in (("checkpoint", tiny_checkpoint), ("unrolled", tiny_unrolled), ("onnx", tiny_onnx)):
        (run / name).symlink_to(art, target_is_directory=True)
    qcfg = QuantizeConfig(target="cpu", calibration=CalibrationConfig(n_images=4, sampler_steps=16), tolerance=0.5,
                          select="fewest-float", val_n=8, drift_samples=2, compare_fp16=False)
    quantize_int8(tiny_onnx, qcfg, run / "int8-cpu", progress=False)
    pcfg = PruneConfig(target_macs=0.6, finetune_steps=1, ratio_step=0.1, importance_batches=1, batch_size=8, val_n=8,
                       drift_samples=2, drift_sampler_steps=2)
    prune(tiny_unrolled, pcfg, run / "pruned", progress=False)
    export_onnx(run / "pruned", OnnxExportConfig(), run / "pruned-onnx")
    return run


def _check_rows(data, variants, batches):
    (model,) = data["models"]
    got = {(r["variant"], r["batch"]) for r in model["rows"]}
    assert got == {(v, b) for v in variants for b in batches}
    for r in model["rows"]:
        for key in ("p50_ms", "ms_per_image", "gflops", "fraction_of_fp32_peak", "speedup_vs_ort_fp32"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["variant"], key, r[key])
        assert r["ms_per_image"] == pytest.approx(r["p50_ms"] / r["batch"] * data["sampler_steps"])
        assert math.isfinite(r["eps_rel_err"]) and r["eps_rel_err"] >= 0
    fp32 = [r for r in model["rows"] if r["variant"] == "ort-fp32"]
    assert all(r["eps_rel_err"] == 0.0 and r["speedup_vs_ort_fp32"] == 1.0 for r in fp32)
    for key in ("torch_fp32", "ort_fp32", "ort_int8", "fp32_peak"):
        assert data["peaks"][key] > 0
    return model


@pytest.mark.slow  # about a minute on an idle 2-core machine (the stages build, then 4 variants x 2 batches timed)
def test_scale_measures_every_variant_of_a_run_folder(tiny_run, tmp_path):
    out = tmp_path / "scale.json"
    md = tmp_path / "scale.md"
    rc = _script().main(["--models", "default", "--run", f"default={tiny_run}", "--quick", "--skip", "compile",
                         "--batches", "1,2", "--profile", "always", "--json", str(out), "--md", str(md)])
    assert rc == 0
    data = json.loads(out.read_text())
    model = _check_rows(data, ("eager", "ort-fp32", "ort-int8", "pruned"), (1, 2))
    assert model["image_size"] == 8 and data["complete"]
    pruned = next(r for r in model["rows"] if r["variant"] == "pruned")
    assert pruned["macs_per_call"] < model["macs_per_call"]  # its own MACs: the pruned graph is smaller
    # The INT8 profile splits kernel time into Q/DQ, integer and float ops, and sums to the total.
    prof = next(p for p in data["profiles"] if p["variant"] == "ort-int8")
    assert prof["groups_ms"]["quantize/dequantize"] > 0 and prof["groups_ms"]["integer ops"] > 0
    assert sum(prof["groups_ms"].values()) == pytest.approx(prof["kernel_ms_per_call"])
    assert "| default | 8 |" in md.read_text()


def test_scale_refuses_bad_input_in_one_line(tmp_path, capsys):
    mod = _script()
    for argv, match in ((["--models", "paper65"], "unknown model"), (["--skip", "fast"], "unknown variant"),
                        (["--int8", "default"], "NAME=PATH"), (["--batches", "0"], "between 1 and 256"),
                        (["--run", f"default={tmp_path / 'nope'}"], "is not a folder")):
        with pytest.raises(SystemExit) as exc:
            mod.main(argv + ["--json", str(tmp_path / "x.json")])
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_scale_quick_builds_the_default_model(tmp_path):
    """The whole path at 16 px: the pipeline trains, unrolls, exports, quantizes and prunes; every variant timed."""
    out = tmp_path / "scale.json"
    rc = _script().main(["--models", "default", "--quick", "--work", str(tmp_path / "work"), "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    model = _check_rows(data, ("eager", "compile", "ort-fp32", "ort-int8", "pruned"), (1, 8))
    assert model["image_size"] == 16 and model["build"]["built_here"]
