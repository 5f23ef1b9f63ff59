"""INT8 quantization: calibration from the diffusion process, shared weights stored once, fallback, drift."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, cli_in_process, cli_subprocess
from onnx import numpy_helper

from cunet_edge.errors import ConfigError
from cunet_edge.quantize.calibration import CalibrationConfig
from cunet_edge.quantize.int8 import QuantizeConfig, format_side_by_side, parse_tolerance, quantize_int8

CAL = CalibrationConfig(n_images=4, sampler_steps=16, method="minmax")


@pytest.fixture(scope="module")
def tiny_int8_cpu(tiny_onnx, tmp_path_factory):
    cfg = QuantizeConfig(target="cpu", calibration=CAL, tolerance=0.5, select="fewest-float", val_n=16, drift_samples=4)
    return quantize_int8(tiny_onnx, cfg, tmp_path_factory.mktemp("q") / "cpu", progress=False)


def test_weights_are_quantized_once_and_activations_per_use(tiny_int8_cpu, tiny_onnx):
    model = onnx.load(str(tiny_int8_cpu.file("model.onnx")))
    fp32 = onnx.load(str(tiny_onnx / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    int8 = [n for n, a in inits.items() if a.dtype == np.int8 and a.ndim == 4]
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8]
    assert len(weight_dq) == len(int8) == len(set(int8)) > 0  # one INT8 initializer and one DQ per weight
    dq_weights = {n.output[0] for n in weight_dq}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dq_weights]
    assert len(convs) > len(int8)  # the same DQ'd weight feeds several solver stages
    act_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len({n.input[1] for n in act_q}) == len(act_q)  # every activation Q has a scale of its own
    quantized = {n.rsplit("__q", 1)[0].removesuffix("_int8") for n in int8}
    assert not quantized & set(inits)  # no float copy of a quantized weight is left
    fp32_conv_weights = {n.input[1] for n in fp32.graph.node if n.op_type == "Conv"}
    assert quantized <= fp32_conv_weights


def test_manifest_records_calibration_fallback_and_drift(tiny_int8_cpu, tiny_onnx):
    m = tiny_int8_cpu.manifest
    assert m["kind"] == "onnx-int8" and m["precision"] == "int8" and m["parent"]["kind"] == "onnx"
    assert m["solver"] == json.loads((tiny_onnx / "manifest.json").read_text())["solver"]
    t = np.load(tiny_int8_cpu.file("calibration/t.npy"))
    assert m["calibration"]["inputs"] == len(t) == 4 * 16 and t.max() == 999 and t.min() == 0
    d = m["drift"]
    assert d["eps_rel_err"] == m["tried"][[c["float_nodes"] for c in m["tried"]].index(m["float_nodes"])]["eps_rel_err"]
    assert len(d["eps_rel_err_by_timestep"]) > 1 and d["sample_psnr_vs_parent"] > 0
    assert [s["eps_rel_err"] for s in m["sensitivity"]] == sorted((s["eps_rel_err"] for s in m["sensitivity"]),
                                                                   reverse=True)
    assert m["passed"] == (d["eps_rel_err"] <= 0.5)


def test_the_gate_takes_the_larger_error_of_sampling_inputs_and_noisy_test_images(tiny_int8_cpu, tiny_onnx):
    """Half the held-out inputs come from the model's sampling runs, half are noisy test images over the schedule
    (what the report and scale.py measure on); the recorded error is the larger of the two, and the noisy-image one
    is what ONNX Runtime gives on those images, recomputed here."""
    import onnxruntime as ort

    from cunet_edge.checkpoint import read_train_config
    from cunet_edge.drift import rel_err, schedule_inputs
    from cunet_edge.artifact import Artifact

    m, d = tiny_int8_cpu.manifest, tiny_int8_cpu.manifest["drift"]
    assert m["validation"]["inputs"] == {"sampling runs": 8, "noisy test images": 8} and m["validation"]["note"] is None
    by = d["eps_rel_err_by_inputs"]
    assert set(by) == {"sampling runs", "noisy test images"} and d["eps_rel_err"] == max(by.values())
    x, t = schedule_inputs(read_train_config(Artifact.load(tiny_onnx)), 8, CAL.seed + 2)
    feed = {"x": x.numpy(), "t": t.numpy()}
    out = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["eps"], feed)[0]
           for p in (tiny_int8_cpu.file("model.onnx"), tiny_onnx / "model.onnx")]
    assert rel_err(*out) == pytest.approx(by["noisy test images"], rel=1e-5)


def test_without_the_test_images_the_gate_uses_sampling_inputs_and_says_why(tiny_onnx, tmp_path, monkeypatch):
    """An imported model whose dataset is not on this machine: the held-out set is sampling inputs only, and the
    manifest says why (the dataset loader made to fail as a missing dataset does)."""
    from cunet_edge.errors import DatasetError
    from cunet_edge.quantize import int8

    def missing(*_a, **_k):
        raise DatasetError("dataset 'cifar10' not found under /nowhere")

    monkeypatch.setattr(int8, "schedule_inputs", missing)
    cfg = QuantizeConfig(target="cpu", calibration=CAL, tolerance=0.5, select="fewest-float", val_n=16,
                         drift_samples=1, compare_fp16=False)
    m = quantize_int8(tiny_onnx, cfg, tmp_path / "q", progress=False).manifest
    assert m["validation"]["inputs"] == {"sampling runs": 16}
    assert m["validation"]["note"] == "noisy test images not used: dataset 'cifar10' not found under /nowhere"
    assert m["drift"]["eps_rel_err"] == m["drift"]["eps_rel_err_by_inputs"]["sampling runs"]


def test_fp32_fp16_int8_side_by_side(tiny_int8_cpu, tiny_unrolled, tiny_onnx, tmp_path):
    """The parent exported at fp16 is measured beside FP32 and INT8: ε against FP32, size, latency timed in turn."""
    from types import SimpleNamespace

    from cunet_edge.quantize.int8 import _fp16_sibling

    p = tiny_int8_cpu.manifest["precisions"]
    assert [r["precision"] for r in p["rows"]] == ["fp32", "fp16", "int8"] and p["batches"] == [1, 16]
    fp32, fp16, int8 = p["rows"]
    assert fp32["eps_rel_err"] == 0 and fp32["speedup_b1"] == fp32["speedup_b16"] == 1
    assert 0 < fp16["eps_rel_err"] < 2e-2 and fp16["size_vs_fp32"] > 0  # (the tiny graph's size is mostly nodes)
    assert int8["eps_rel_err"] == pytest.approx(tiny_int8_cpu.manifest["drift"]["eps_rel_err"], rel=1e-5)
    assert int8["size_vs_fp32"] == pytest.approx(tiny_int8_cpu.manifest["size"]["ratio"]) and all(r[f"p50_ms_b{b}"] > 0 for r in p["rows"] for b in (1, 16))
    assert str(tiny_unrolled) in p["fp16"]
    text = format_side_by_side(p)
    assert len(text.splitlines()) == 5 and "x fp32" in text
    gone = SimpleNamespace(path=tmp_path, manifest={"parent": {"path": str(tmp_path / "gone")}})
    path, why = _fp16_sibling(gone, tmp_path)
    assert path is None and "FP16 not compared" in why
    not_exportable = SimpleNamespace(path=tmp_path, manifest={"parent": {"path": str(tiny_onnx)}})  # an onnx parent
    path, why = _fp16_sibling(not_exportable, tmp_path)
    assert path is None and "exporting" in why and "failed" in why


def test_same_seed_same_bytes_and_the_model_runs(tiny_onnx, tiny_int8_cpu, tmp_path):
    from cunet_edge.runtimes.base import open_runner

    cfg = QuantizeConfig(target="cpu", calibration=CAL, tolerance=0.5, select="fewest-float", val_n=16, drift_samples=4,
                         compare_fp16=False)
    again = quantize_int8(tiny_onnx, cfg, tmp_path / "again", progress=False)
    assert again.file("model.onnx").read_bytes() == tiny_int8_cpu.file("model.onnx").read_bytes()
    with open_runner(tiny_int8_cpu.path, "onnxruntime") as r, open_runner(tiny_onnx, "onnxruntime") as f:
        feed = {"x": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32),
                "t": np.array([10, 900])}
        a, b = r.infer(feed)["eps"], f.infer(feed)["eps"]
    assert a.shape == b.shape and 0 < np.linalg.norm(a - b) / np.linalg.norm(b) < 1


def test_impossible_tolerance_saves_the_best_attempt_marked_failing(tiny_onnx, tmp_path):
    cfg = QuantizeConfig(target="cpu", calibration=CAL, tolerance=1e-9, max_float_layers=2, val_n=16, drift_samples=4,
                         compare_fp16=False)
    art = quantize_int8(tiny_onnx, cfg, tmp_path / "fail", progress=False)
    m = art.manifest
    assert m["passed"] is False and not any(c["passes"] for c in m["tried"])
    assert m["drift"]["eps_rel_err"] == min(c["eps_rel_err"] for c in m["tried"])
    assert [c["float_layers"] for c in m["tried"]] == [0, 1, 2]


@pytest.fixture(scope="module")
def tiny_int8_trt(tiny_onnx, tmp_path_factory):
    cfg = QuantizeConfig(target="tensorrt", calibration=CAL, tolerance=0.5, val_n=16, drift_samples=4,
                         compare_fp16=False)
    return quantize_int8(tiny_onnx, cfg, tmp_path_factory.mktemp("q") / "trt", progress=False)


def test_tensorrt_target_passes_the_lint(tiny_int8_trt):
    from cunet_edge.quantize.lint import lint_tensorrt_qdq

    art = tiny_int8_trt
    assert art.manifest["tensorrt_lint"]["ok"]
    report = lint_tensorrt_qdq(str(art.file("model.onnx")), float_nodes=set(art.manifest["float_nodes"]))
    assert report["ok"], report["problems"]
    zps = [numpy_helper.to_array(t) for t in onnx.load(str(art.file("model.onnx"))).graph.initializer
           if t.name.endswith("_zp") or "_zp__q" in t.name]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)


def test_deploy_takes_a_tensorrt_target_model_and_refuses_a_cpu_one(tiny_int8_trt, tiny_int8_cpu, tmp_path):
    """deploy and quantize agree: the board's TensorRT gets only what `quantize --target tensorrt` makes."""
    from cunet_edge.devices.deploy import DeployConfig, deploy

    bundle = deploy(tiny_int8_trt.path, DeployConfig(device="jetson-orin-nano-8gb", selfcheck_n=2, tarball=False),
                    tmp_path / "ok")
    assert bundle.manifest["precision"] == "int8"
    with pytest.raises(ConfigError, match=r"quantized for target 'cpu'.*quantize the fp32 ONNX again with "
                                          r"--target tensorrt"):
        deploy(tiny_int8_cpu.path, DeployConfig(device="jetson-orin-nano-8gb"), tmp_path / "cpu")
    assert not (tmp_path / "cpu").exists()
    from cunet_edge.export.tensorrt import EngineConfig, build_engine

    with pytest.raises(ConfigError, match="quantized for target 'cpu'"):  # export says the same, before TensorRT
        build_engine(tiny_int8_cpu.path, EngineConfig(), tmp_path / "engine")


def test_tolerance_parsing():
    assert parse_tolerance("0.03") == (0.03, None)
    assert parse_tolerance("eps=0.02,fid=0.1") == (0.02, 0.1)
    for bad in ("abc", "eps=x", "psnr=3"):
        with pytest.raises(ConfigError):
            parse_tolerance(bad)


def test_quantize_bad_input(tiny_unrolled, tiny_onnx, tiny_int8_cpu, tmp_path):
    assert_one_line_error(cli_subprocess("quantize", tiny_unrolled, "--out", tmp_path / "a"),
                          "quantize needs an ONNX artifact")  # the real entry point
    assert_one_line_error(cli_in_process("quantize", tiny_int8_cpu.path, "--out", tmp_path / "b"), "already quantized")
    assert_one_line_error(cli_in_process("quantize", tiny_onnx, "--calibration-images", 2, "--calibration-steps", 4,
                                         "--out", tmp_path / "c"), "too few calibration samples")
    assert_one_line_error(cli_in_process("quantize", tiny_onnx, "--tolerance", "abc", "--out", tmp_path / "d"),
                          "tolerance 'abc' cannot be parsed")
    assert_one_line_error(cli_in_process("quantize", tiny_onnx, "--target", "tpu", "--out", tmp_path / "e"),
                          "target 'tpu' is not one of: tensorrt, cpu")
    assert not any(tmp_path.iterdir())


def test_skip_concat_with_different_ranges_is_split_for_tensorrt():
    """Q-Diffusion's split: Conv1x1(concat(a, b)) → Conv(a) + Conv(b), each input with a scale of its own."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from cunet_edge.quantize.lint import lint_tensorrt_qdq
    from cunet_edge.quantize.qdq import SCHEMES, insert_qdq

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 5, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="cat"),
         helper.make_node("Conv", ["cat", "w", "bias"], ["y"], name="merge")],
        "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2, 4, 4]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(4, np.float32), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    a = rng.uniform(-0.1, 0.1, (2, 2, 4, 4)).astype(np.float32)
    b = rng.uniform(-20, 20, (2, 3, 4, 4)).astype(np.float32)
    ranges = {"a": (-0.1, 0.1), "b": (-20.0, 20.0), "cat": (-20.0, 20.0), "y": (-100.0, 100.0)}
    split = insert_qdq(model, ranges, SCHEMES["tensorrt"])
    whole = insert_qdq(model, ranges, SCHEMES["cpu"])  # the cpu scheme does not split
    assert [n.op_type for n in split.graph.node].count("Conv") == 2 and "Add" in [n.op_type for n in split.graph.node]
    assert [n.op_type for n in whole.graph.node].count("Conv") == 1
    assert lint_tensorrt_qdq(split)["ok"]

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"a": a, "b": b})[0]

    # With b = 0, what is left is a's contribution: a shared scale (20/127) rounds a (|a| <= 0.1) to zero,
    # the split keeps it.
    b[:] = 0
    ref = run(model)
    shared = insert_qdq(model, ranges, dataclasses.replace(SCHEMES["tensorrt"], split_concat=False))
    err_split, err_shared = np.abs(run(split) - ref).max(), np.abs(run(shared) - ref).max()
    assert err_shared > 0.05 and err_split < 0.1 * err_shared


def test_fid_tolerance_gates_the_choice(tiny_onnx, tmp_path):
    cfg = QuantizeConfig(target="cpu", calibration=CAL, tolerance=0.5, fid_tolerance=10.0, fid_n=20,
                         select="fewest-float", val_n=16, drift_samples=4, compare_fp16=False)
    fid = quantize_int8(tiny_onnx, cfg, tmp_path / "fid", progress=False).manifest["drift"]["fid"]
    assert fid["n"] == 20 and fid["passes"] and 0 < fid["fid_int8"] <= 11 * fid["fid_fp32"]


def test_sensitivity_screens_then_measures_the_head_on_all_inputs(tiny_int8_cpu, tiny_onnx, tmp_path):
    """The fallback's ranking: every layer screened on a few inputs, the layers at its head measured again on all
    of them, with exactly the error a one-full-evaluation-per-layer ranking gives them."""
    from cunet_edge.quantize.calibration import activation_ranges
    from cunet_edge.quantize.int8 import _Sensitivity, _Validator
    from cunet_edge.quantize.qdq import SCHEMES

    m = tiny_int8_cpu.manifest  # the stage's own record: val_n 16, screened on the default 8
    ev = m["sensitivity_evaluations"]
    assert (ev["screen"], ev["screen_inputs"], ev["full_inputs"]) == (len(m["sensitivity"]), 8, 16) and ev["full"] > 0
    inputs = {s["node"]: s["inputs"] for s in m["sensitivity"]}
    assert all(inputs[n] == 16 for c in m["tried"] for n in c["float_nodes"])
    assert list(m["timings_s"])[:2] == ["calibrate", "sensitivity_and_fallback"]

    x, t = np.load(tiny_int8_cpu.file("calibration/x.npy")), np.load(tiny_int8_cpu.file("calibration/t.npy"))
    idx = np.linspace(0, len(t) - 1, 8).round().astype(int)
    val = {"x": np.ascontiguousarray(x[idx]), "t": t[idx]}
    ranges = activation_ranges(tiny_onnx / "model.onnx", val, CAL, tmp_path)
    validator = _Validator(tiny_onnx / "model.onnx", val)
    sens = _Sensitivity(onnx.load(str(tiny_onnx / "model.onnx")), ranges, SCHEMES["cpu"], validator, 3)
    assert sens.evaluations["screen"] == len(sens.nodes) and not any(full for _, full in sens.err.values())
    order = sens.order(1)
    head = order[:1 + _Sensitivity.REFINE_MARGIN]
    assert all(sens.err[n] == (validator.error(sens._alone(n)), True) for n in head)  # the full measurement
    assert sorted(order) == sorted(sens.nodes)
    assert [sens.err[n][0] for n in order] == sorted((e for e, _ in sens.err.values()), reverse=True)


def test_the_drift_record_passes_the_schema_when_reopened(tiny_int8_cpu):
    """The real int8 manifest, as written (a PSNR may be "inf"), passes limits.check_manifest's drift checks."""
    from cunet_edge.artifact import Artifact

    drift = Artifact.load(tiny_int8_cpu.path).manifest["drift"]
    assert set(drift) >= {"eps_rel_err", "eps_rel_err_by_timestep", "sample_psnr_vs_parent"}


def test_calibration_runs_follow_the_image_size():
    """32 sampling runs at 16 px (the measured reference), fewer as the image grows, never under 64 inputs."""
    cal = CalibrationConfig()
    assert [cal.images_for(s) for s in (8, 16, 32, 64, 128)] == [32, 32, 8, 4, 4]
    assert cal.images_for(64) * cal.sampler_steps >= 64
    assert CalibrationConfig(sampler_steps=8).images_for(64) == 8  # 8 runs x 8 steps = the 64-input floor
    assert CalibrationConfig(n_images=32).images_for(64) == 32  # given: kept


def test_range_collection_holds_one_bounded_chunk(tiny_onnx, tmp_path):
    """The calibrator is fed chunks whose collected tensors fit collect_mib; the ranges do not depend on it."""
    from cunet_edge.quantize.calibration import activation_ranges

    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal((40, 1, 8, 8)).astype(np.float32), "t": rng.integers(0, 1000, 40)}
    big, small = {}, {}
    whole = activation_ranges(tiny_onnx / "model.onnx", calib, CAL, tmp_path, stats=big)
    assert big["chunk"] == CAL.chunk and big["calls"] == 1  # a tiny model: one call of all 40, as before
    # A budget of 8 inputs' worth (the tiny model collects bytes_per_input each): chunks of 8, 5 calls.
    budget = 8.5 * big["bytes_per_input"] / 2 ** 20
    parts = activation_ranges(tiny_onnx / "model.onnx", calib, dataclasses.replace(CAL, collect_mib=budget), tmp_path,
                              stats=small)
    assert small["chunk"] == 8 and small["calls"] == 5 and small["collected_mib_per_call"] <= budget
    assert whole.keys() == parts.keys() and all(np.allclose(whole[k], parts[k]) for k in whole)  # min-max: exact


def test_fastest_ties_within_the_noise_go_to_the_fewest_float_layers():
    """Layouts timed within 3% of the fastest, or within the timing's own spread if larger, tie; the fewest float
    layers win the tie; a layout clearly faster than the band still wins."""
    from cunet_edge.quantize.int8 import TIE_BAND, _fastest_with_ties

    def layouts(*rows):
        return [{"float_layers": k, "latency_rounds_ms": list(r), "latency_ms": float(np.median(r))} for k, r in rows]

    best, rec = _fastest_with_ties(layouts((2, (10.2, 10.2)), (3, (10.0, 10.05)), (4, (9.9, 9.95))), 16)
    assert best["float_layers"] == 2 and rec["tie_band"] == TIE_BAND and rec["fastest_float_layers"] == 4
    assert rec["tied_float_layers"] == [2, 3, 4] and rec["timing_batch"] == 16
    best, rec = _fastest_with_ties(layouts((2, (12.0, 12.1)), (3, (10.0, 10.1))), 16)
    assert best["float_layers"] == 3 and rec["tied_float_layers"] == [3]  # 20% slower: no tie
    best, rec = _fastest_with_ties(layouts((2, (11.0, 12.0)), (3, (10.0, 11.5))), 2)  # noise 15% > 3%
    assert best["float_layers"] == 2 and rec["noise"] == pytest.approx(0.15) and rec["tie_band"] == rec["noise"]


def test_select_fastest_records_the_timings_and_the_tie_rule(tiny_onnx, tmp_path):
    """The real stage with --select fastest: every passing layout timed twice, the choice and its rule recorded,
    and the kept layout is the fewest float layers among those within the band of the fastest."""
    cfg = QuantizeConfig(target="cpu", calibration=CAL, tolerance=0.5, select="fastest", val_n=16, drift_samples=2,
                         compare_fp16=False)
    m = quantize_int8(tiny_onnx, cfg, tmp_path / "fast", progress=False).manifest
    timed = [c for c in m["tried"] if c["passes"]]
    assert len(timed) > 1 and all(len(c["latency_rounds_ms"]) == 2 for c in timed)
    choice = m["choice"]
    assert "tie goes to the fewest float layers" in choice["rule"] and choice["timing_batch"] == 16
    fastest = min(c["latency_ms"] for c in timed)
    tied = [c["float_layers"] for c in timed if c["latency_ms"] <= fastest * (1 + choice["tie_band"])]
    assert choice["tied_float_layers"] == tied and len(m["float_nodes"]) == min(tied)
    assert choice["tie_band"] >= 0.03 and set(m["cpu_timings_s"]) == set(m["timings_s"])
    assert m["drift"]["samples"] == 2


def test_timing_batch_and_drift_samples_follow_the_model():
    from cunet_edge.drift import drift_samples_for
    from cunet_edge.quantize.int8 import timing_batch

    assert [timing_batch(16, m) for m in (24e6, 98e6, 3.03e9, 6e9, 20e9, None)] == [16, 16, 2, 1, 1, 16]
    assert drift_samples_for(64) == 4 and drift_samples_for(16) == 16 and drift_samples_for(64, 9) == 9


def test_sensitivity_screening_inputs_follow_the_image_size():
    """8 screening inputs up to 16 px (as measured in docs/results/2026-12-02-scale.md), 4 above; a given count
    stays."""
    cfg = QuantizeConfig(target="cpu")
    assert [cfg.screen_inputs_for(s) for s in (8, 16, 32, 64)] == [8, 8, 4, 4]
    assert QuantizeConfig(target="cpu", sensitivity_n=0).screen_inputs_for(64) == 0
    assert QuantizeConfig(target="cpu", sensitivity_n=6).screen_inputs_for(64) == 6
    with pytest.raises(ConfigError, match="sensitivity_n"):
        QuantizeConfig(target="cpu", sensitivity_n=-1)
