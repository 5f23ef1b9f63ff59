"""`estimate`: FLOP/byte counts of hand-built ONNX graphs, the roofline, precisions, the CLI, and calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY

from cunet_edge.artifact import ArtifactWriter
from cunet_edge.devices.estimate import CalibrateConfig, EstimateConfig, calibrate, estimate, format_estimate, roofline
from cunet_edge.export.graph_cost import NodeCost, graph_costs
from cunet_edge.errors import ArtifactError, ConfigError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_model(cin=8, cout=16, hw=10, k=3, group=2, stride=2, pad=1, bias=True):
    w = np.ones((cout, cin // group, k, k), np.float32)
    inits = {"W": w, **({"B": np.zeros(cout, np.float32)} if bias else {})}
    node = helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["y"], group=group, strides=[stride] * 2,
                            pads=[pad] * 4)
    return _model([node], [_vi("x", ["batch", cin, hw, hw])], [_vi("y", None)], inits)


def conv_model_static():
    model = conv_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    return model


def test_conv_flops_and_bytes_match_the_formula():
    n, cin, cout, hw, k, g = 3, 8, 16, 10, 3, 2
    hout = (hw + 2 * 1 - k) // 2 + 1
    (cost,) = graph_costs(conv_model(cin, cout, hw, k, g), n, "fp32")
    assert cost.flops == 2 * n * cout * hout * hout * (cin // g) * k * k
    elems = n * cin * hw * hw + n * cout * hout * hout + cout * (cin // g) * k * k + cout
    assert cost.bytes == 4 * elems and cost.precision == "fp32" and cost.executed
    (half,) = graph_costs(conv_model(cin, cout, hw, k, g), n, "fp16")
    assert half.bytes == 2 * elems and half.flops == cost.flops


def test_matmul_gemm_and_elementwise_counts():
    mm = _model([helper.make_node("MatMul", ["a", "B"], ["m"])], [_vi("a", ["batch", 5, 7])], [_vi("m", None)],
                {"B": np.ones((7, 3), np.float32)})
    (c,) = graph_costs(mm, 2, "fp32")
    assert c.flops == 2 * 2 * 5 * 7 * 3  # 2·M·K·N per batch matrix
    nodes = [helper.make_node("Gemm", ["m", "C"], ["y"]), helper.make_node("Sigmoid", ["y"], ["s"])]
    gemm = _model(nodes, [_vi("m", ["batch", 3])], [_vi("s", None)], {"C": np.ones((3, 4), np.float32)})
    g, s = graph_costs(gemm, 6, "fp32")
    assert g.flops == 2 * 6 * 3 * 4 and s.flops == 4 * 6 * 4  # 4 FLOPs per element for a sigmoid
    odd = _model([helper.make_node("Celu", ["m"], ["y"])], [_vi("m", ["batch", 3])], [_vi("y", None)], {})
    (c,) = graph_costs(odd, 2, "fp32")
    assert c.flops == 6 and c.note == "op not in FLOPS_PER_ELEMENT"
    assert "Celu" in roofline([c], {"fp32": 1e12}, 1e9, 0)["warnings"][0]


def test_roofline_picks_memory_bound_add_and_compute_bound_conv():
    add = _model([helper.make_node("Add", ["x", "x2"], ["y"])],
                 [_vi("x", ["batch", 64, 256, 256]), _vi("x2", ["batch", 64, 256, 256])], [_vi("y", None)], {})
    conv = conv_model(cin=256, cout=256, hw=64, k=3, group=1, stride=1)
    peaks, bw = {"fp32": 30.3e12}, 300e9  # the L4 profile's figures
    res_add = roofline(graph_costs(add, 1, "fp32"), peaks, bw, launch_us=0)
    res_conv = roofline(graph_costs(conv, 1, "fp32"), peaks, bw, launch_us=0)
    assert (res_add["memory_bound_nodes"], res_add["compute_bound_nodes"]) == (1, 0)
    assert (res_conv["memory_bound_nodes"], res_conv["compute_bound_nodes"]) == (0, 1)
    (c,) = graph_costs(add, 1, "fp32")
    assert res_add["roofline_ms"] == pytest.approx(c.bytes / bw * 1e3)
    assert res_add["top_nodes"][0]["bound"] == "memory" and res_conv["top_nodes"][0]["bound"] == "compute"


def test_launch_overhead_is_reported_separately_and_free_nodes_cost_nothing():
    costs = [NodeCost("a", "Add", 10, 400, "fp32"), NodeCost("r", "Reshape", 0, 0, "", executed=False)]
    res = roofline(costs, {"fp32": 1e9}, 1e9, launch_us=5.0)
    assert res["executed_nodes"] == 1 and res["free_nodes"] == 1
    assert res["overhead_ms"] == pytest.approx(0.005)
    assert res["per_call_ms"] == pytest.approx(res["roofline_ms"] + 0.005)
    assert res["roofline_ms"] == pytest.approx(400 / 1e9 * 1e3)


def qdq_conv_model(cin=8, cout=16, hw=12):
    """x -> Q/DQ -> Conv(DQ(int8 weight)), no bias -> Q/DQ -> y: one fully quantized conv."""
    inits = {"Wq": np.ones((cout, cin, 3, 3), np.int8), "ws": np.full(cout, 0.1, np.float32),
             "s": np.array(0.05, np.float32), "z": np.array(0, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["Wq", "ws"], ["W"], axis=0),
             helper.make_node("Conv", ["xd", "W"], ["c"], pads=[1] * 4),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"])]
    return _model(nodes, [_vi("x", ["batch", cin, hw, hw])], [_vi("y", None)], inits)


def test_int8_halves_bytes_of_quantized_convs_against_fp16():
    model = qdq_conv_model()
    conv8 = [c for c in graph_costs(model, 4, "int8") if c.executed]
    conv16 = [c for c in graph_costs(model, 4, "fp16") if c.executed]
    assert [c.op for c in conv8] == ["Conv"] == [c.op for c in conv16]  # Q/DQ are folded or fused
    assert conv8[0].precision == "int8" and conv16[0].precision == "fp16"
    assert conv8[0].bytes * 2 == conv16[0].bytes and conv8[0].flops == conv16[0].flops


def write_artifact(path, model, precision="fp32", kind="onnx", config=None):
    with ArtifactWriter(path, kind=kind, stage="export", config={}) as w:
        onnx.save(model, str(w.dir / "model.onnx"))
        if config is not None:
            (w.dir / "config.json").write_text(json.dumps(config))
        w.manifest.update(precision=precision, solver={"nfe_per_call": 4},
                          model_cost={"macs": 1000, "params": 10, "nfe_per_call": 4},
                          signature={"inputs": {"x": {"shape": ["batch", 1, 8, 8], "dtype": "float32"},
                                                "t": {"shape": ["batch"], "dtype": "int64"}},
                                     "outputs": {"eps": {"shape": ["batch", 1, 8, 8], "dtype": "float32"}}})
    return path


def tiny_denoiser():
    """eps = Sigmoid(Conv(x)); t is fed but unused (like a model that ignores time)."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1] * 4), helper.make_node("Sigmoid", ["c"], ["eps"])]
    inputs = [_vi("x", ["batch", 1, 8, 8]), helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"])]
    return _model(nodes, inputs, [_vi("eps", ["batch", 1, 8, 8])], {"W": np.full((1, 1, 3, 3), 0.1, np.float32)})


@pytest.fixture
def small_artifact(tmp_path):
    return write_artifact(tmp_path / "small", tiny_denoiser())


def test_per_image_is_per_call_times_sampler_steps(small_artifact):
    one = estimate(small_artifact, "l4", EstimateConfig(sampler_steps=1, batch=2))
    many = estimate(small_artifact, "l4", EstimateConfig(sampler_steps=7, batch=2))
    assert many["per_call_ms"] == one["per_call_ms"]  # nfe_per_call is in the graph, never multiplied again
    assert many["per_image_ms"] == pytest.approx(7 * many["per_call_ms"])
    assert many["nfe_per_call"] == 4 and many["images_per_s"] == pytest.approx(2 / (many["per_image_ms"] / 1e3))


def test_missing_figure_skips_that_precision_and_all_missing_is_an_error(small_artifact):
    res = estimate(small_artifact, "jetson-agx-orin-64gb", EstimateConfig(precisions=("fp32", "fp16")))
    assert [e["precision"] for e in res["estimates"]] == ["fp32"]
    assert "fp16_tflops" in res["skipped"]["fp16"] and "skipped fp16" in format_estimate(res)
    with pytest.raises(ConfigError, match="no int8_tops figure.*total_int8_tops"):
        estimate(small_artifact, "jetson-agx-orin-64gb", EstimateConfig(precisions=("int8",)))


def test_bad_input_is_one_line_error(small_artifact, tmp_path):
    cases = [
        (lambda: estimate(small_artifact, "jetson-nano", EstimateConfig(precisions=("int8",))), ConfigError,
         "INT8 is not supported"),
        (lambda: estimate(small_artifact, "orin", EstimateConfig()), ConfigError, "valid devices: cpu"),
        (lambda: EstimateConfig(batch=0), ConfigError, "batch must be > 0"),
        (lambda: graph_costs(conv_model_static(), 2, "fp32"), ConfigError, "exported for batch 4"),
        (lambda: EstimateConfig(precisions=("bf16",)), ConfigError, "precision 'bf16'"),
        (lambda: estimate(write_artifact(tmp_path / "ck", tiny_denoiser(), kind="checkpoint"), "l4",
                          EstimateConfig()), ArtifactError, "needs one of: onnx, onnx-int8"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match) as info:
            fn()
        assert "\n" not in str(info.value)


def test_cli_writes_json(small_artifact, tmp_path):
    from cunet_edge.cli.estimate import estimate as cmd

    out = tmp_path / "e.json"
    res = CliRunner().invoke(cmd, [str(small_artifact), "--device", "rtx-4090", "--batch", "3", "--sampler-steps",
                                   "5", "--precision", "fp16", "--precision", "int8", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    for key in ("device", "precision", "batch", "per_call_ms", "per_image_ms", "sampler_steps", "flops_per_call",
                "bytes_per_call", "compute_bound_nodes", "memory_bound_nodes", "overhead_ms", "top_nodes"):
        assert key in data, key
    assert data["device"] == "rtx-4090" and data["batch"] == 3 and data["precision"] == "fp16"
    assert [e["precision"] for e in data["estimates"]] == ["fp16", "int8"]
    assert data["estimates"][1]["quantized_nodes"] == 1  # no Q/DQ in the graph: every Conv taken as INT8
    assert "per call" in res.output and "Conv" in res.output
    bad = CliRunner().invoke(cmd, [str(small_artifact), "--device", "l4", "--batch", "0"])
    assert isinstance(bad.exception, ConfigError)
    bad = CliRunner().invoke(cmd, [str(small_artifact), "--calibrate", "--device", "l4"])
    assert isinstance(bad.exception, ConfigError) and "--calibrate" in str(bad.exception)


def test_calibrate_on_this_cpu_gives_a_positive_ratio(tmp_path):
    from cunet_edge.config import to_dict
    from cunet_edge.training import train_config_from_dict

    art = write_artifact(tmp_path / "cal", tiny_denoiser(), config=to_dict(train_config_from_dict(TINY)))
    res = calibrate(art, EstimateConfig(batch=2), CalibrateConfig(threads=1, copy_mb=16, min_iters=5,
                                                                  min_seconds=0.05))
    assert res["device"] == "cpu" and res["measured_ms"] > 0 and res["estimate_over_measured"] > 0
    assert res["estimate_over_measured"] == pytest.approx(res["per_call_ms"] / res["measured_ms"])
    assert res["memory_bandwidth_gbs"] > 0 and res["matmul_peak_gflops"] > 0 and res["launch_us"] > 0
    assert "estimate / measured" in format_estimate(res)
    with pytest.raises(ConfigError, match="float32 peak"):
        calibrate(art, EstimateConfig(precisions=("int8",)))
