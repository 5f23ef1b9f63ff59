"""The TensorRT Q/DQ lint: a good graph passes, each broken rule names its node, a real export lints clean."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cunet_edge.quantize.lint import assert_tensorrt_qdq, lint_tensorrt_qdq
from onnx import TensorProto, helper, numpy_helper

from cunet_edge.errors import ConfigError

RNG = np.random.default_rng(0)
W = RNG.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8)   # shared by conv_a and conv_b
MM = RNG.integers(-127, 128, (8, 6)).astype(np.int8)       # MatMul B [K, N]


def _q(name, x, scale, zp, out, **attrs):
    return helper.make_node("QuantizeLinear", [x, scale] + ([zp] if zp else []), [out], name=name, **attrs)


def _dq(name, x, scale, zp, out, **attrs):
    return helper.make_node("DequantizeLinear", [x, scale] + ([zp] if zp else []), [out], name=name, **attrs)


def _act_qdq(tensor, scale):
    """A Q->DQ pair on an activation, named after it; returns (initializers, nodes, dequantized name)."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}_scale"),
             numpy_helper.from_array(np.array(0, np.int8), f"{tensor}_zp")]
    nodes = [_q(f"{tensor}_q", tensor, f"{tensor}_scale", f"{tensor}_zp", f"{tensor}_qt"),
             _dq(f"{tensor}_dq", f"{tensor}_qt", f"{tensor}_scale", f"{tensor}_zp", f"{tensor}_dqt")]
    return inits, nodes, f"{tensor}_dqt"


def _good_model(opset: int = 17):
    """x -> Q/DQ -> conv_a -> Q/DQ -> conv_b -> Q/DQ -> matmul; conv_a and conv_b share one weight DQ."""
    inits = [numpy_helper.from_array(W, "w"),
             numpy_helper.from_array(np.linspace(0.01, 0.02, 4, dtype=np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
             numpy_helper.from_array(MM, "mm_w"),
             numpy_helper.from_array(np.linspace(0.01, 0.02, 6, dtype=np.float32), "mm_scale"),
             numpy_helper.from_array(np.zeros(6, np.int8), "mm_zp")]
    nodes = [_dq("w_dq", "w", "w_scale", "w_zp", "w_f", axis=0),
             _dq("mm_dq", "mm_w", "mm_scale", "mm_zp", "mm_f", axis=1)]
    x = "x"
    for tensor, scale, node in (("x", 0.05, "conv_a"), ("y1", 0.1, "conv_b")):
        i, n, x = _act_qdq(tensor, scale)
        inits += i
        nodes += n + [helper.make_node("Conv", [x, "w_f"], ["y1" if node == "conv_a" else "y2"],
                                       name=node, pads=[1, 1, 1, 1])]
    i, n, x = _act_qdq("y2", 0.2)
    inits += i
    nodes += n + [helper.make_node("MatMul", [x, "mm_f"], ["z"], name="matmul")]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ort_run(model, feed):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _set_init(model, name, value):
    old = next(i for i in model.graph.initializer if i.name == name)
    old.CopyFrom(numpy_helper.from_array(np.asarray(value), name))


def _set_attr(model, node_name, **attrs):
    node = _node(model, node_name)
    for key, value in attrs.items():
        kept = [a for a in node.attribute if a.name != key]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute(key, value)])


def _drop_nodes(model, *names):
    kept = [n for n in model.graph.node if n.name not in names]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _has(report, key, node, rule):
    lines = report[key]
    return any(line.startswith((f"{node} (", f"{node}:")) and f"[{rule}]" in line for line in lines)


# ---------------------------------------------------------------- the good graph


def test_good_graph_is_valid_and_passes(tmp_path):
    model = _good_model()
    onnx.checker.check_model(model, full_check=True)
    (z,) = _ort_run(model, {"x": RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)})
    assert z.shape == (1, 4, 8, 6)
    report = lint_tensorrt_qdq(model)
    assert report["ok"], report["problems"]
    assert report["problems"] == [] and report["warnings"] == []
    stats = report["stats"]
    assert stats["q_nodes"] == 3 and stats["dq_nodes"] == 5
    assert (stats["quantized_convs"], stats["float_convs"], stats["quantized_matmuls"]) == (2, 0, 1)
    # the shared conv weight is stored once: 4*4*3*3 + 8*6 INT8 bytes, no float weights
    assert stats["int8_weights"] == 2 and stats["int8_weight_bytes"] == W.nbytes + MM.nbytes
    assert stats["float_weight_bytes"] == 0 and stats["opset"] == 17
    path = tmp_path / "good.onnx"
    onnx.save(model, str(path))
    assert lint_tensorrt_qdq(path) == report
    assert assert_tensorrt_qdq(str(path))["ok"]


# ---------------------------------------------------------------- each rule broken


def _uint8_zero_point(m):
    _set_init(m, "x_zp", np.uint8(0))


def _nonzero_zero_point(m):
    _set_init(m, "x_zp", np.int8(3))


def _no_zero_point(m):  # before opset 21, a Q without zero point is uint8
    for name in ("x_q", "x_dq"):
        del _node(m, name).input[2]


def _conv_axis_1(m):
    _set_attr(m, "w_dq", axis=1)


def _scale_length(m):
    _set_init(m, "w_scale", np.full(3, 0.01, np.float32))
    _set_init(m, "w_zp", np.zeros(3, np.int8))


def _negative_scale(m):
    _set_init(m, "x_scale", np.float32(-0.05))


def _activation_per_channel(m):
    _set_init(m, "x_scale", np.full(4, 0.05, np.float32))
    _set_init(m, "x_zp", np.zeros(4, np.int8))


def _weight_only_dq(m):
    _drop_nodes(m, "y1_q", "y1_dq")
    _node(m, "conv_b").input[0] = "y1"


def _dangling_q(m):
    m.graph.node.append(_q("lost_q", "y2", "y2_scale", "y2_zp", "lost"))


def _q_into_relu(m):
    m.graph.node.append(_q("bad_q", "y2", "y2_scale", "y2_zp", "bq"))
    m.graph.node.append(helper.make_node("Relu", ["bq"], ["r"], name="relu"))


def _pair_scale(m):
    _node(m, "y1_dq").input[1] = "y2_scale"


def _requantize(m):
    m.graph.initializer.append(numpy_helper.from_array(np.array(0.3, np.float32), "re_scale"))
    m.graph.node.extend([_q("re_q", "y1_dqt", "re_scale", "y1_zp", "re_qt"),
                         _dq("re_dq", "re_qt", "re_scale", "y1_zp", "re_dqt")])
    _node(m, "conv_b").input[0] = "re_dqt"


def _qlinearconv(m):
    m.graph.node.append(helper.make_node(
        "QLinearConv", ["x_qt", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y1_scale", "y1_zp"], ["qc"],
        name="qlc"))


def _microsoft_op(m):
    m.graph.node.append(helper.make_node("QLinearAdd", ["a", "b"], ["c"], name="ms_add", domain="com.microsoft"))


def _duplicate_weight(m):
    m.graph.initializer.append(numpy_helper.from_array(W.copy(), "w2"))
    m.graph.node.append(_dq("w2_dq", "w2", "w_scale", "w_zp", "w2_f", axis=0))
    _node(m, "conv_b").input[1] = "w2_f"


def _float_copy(m):
    scale = np.linspace(0.01, 0.02, 4, dtype=np.float32).reshape(4, 1, 1, 1)
    m.graph.initializer.append(numpy_helper.from_array((W * scale).astype(np.float32), "w_float"))
    _node(m, "conv_b").input[1] = "w_float"


def _opset_12(m):
    m.opset_import[0].version = 12


def _int32_bias_dq(m):
    m.graph.initializer.extend([numpy_helper.from_array(np.zeros(4, np.int32), "b_q"),
                                numpy_helper.from_array(np.array(1e-4, np.float32), "b_scale")])
    m.graph.node.append(_dq("b_dq", "b_q", "b_scale", "", "b_f"))
    _node(m, "conv_a").input.append("b_f")


BROKEN = {
    "uint8 zero point": (_uint8_zero_point, ["x_q", "x_dq"], "int8"),
    "non-zero zero point": (_nonzero_zero_point, ["x_q", "x_dq"], "zero-point"),
    "no zero point (uint8 default)": (_no_zero_point, ["x_q", "x_dq"], "int8"),
    "per-channel axis 1 on a Conv weight": (_conv_axis_1, ["w_dq"], "weight-axis"),
    "scale length mismatch": (_scale_length, ["w_dq"], "weight-axis"),
    "negative scale": (_negative_scale, ["x_q", "x_dq"], "scale"),
    "per-channel activation scale": (_activation_per_channel, ["x_q"], "activation-scale"),
    "weight-only DQ": (_weight_only_dq, ["conv_b"], "weight-only-dq"),
    "dangling Q": (_dangling_q, ["lost_q"], "dangling-q"),
    "Q into a non-DQ op": (_q_into_relu, ["bad_q"], "dangling-q"),
    "Q/DQ pair with two scales": (_pair_scale, ["y1_q"], "pair-scale"),
    "DQ-Q-DQ with another scale": (_requantize, ["re_q"], "requantize"),
    "QLinearConv": (_qlinearconv, ["qlc"], "qoperator"),
    "com.microsoft op": (_microsoft_op, ["ms_add"], "custom-domain"),
    "duplicated weight initializer": (_duplicate_weight, ["w2_dq"], "duplicate-weight"),
    "float copy of a quantized weight": (_float_copy, ["conv_b"], "float-copy"),
    "opset 12": (_opset_12, ["model"], "opset"),
    "INT32 bias DQ": (_int32_bias_dq, ["b_dq"], "int8"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_rule_names_its_node(case):
    mutate, nodes, rule = BROKEN[case]
    model = _good_model()
    mutate(model)
    report = lint_tensorrt_qdq(model)
    assert not report["ok"]
    for node in nodes:
        assert _has(report, "problems", node, rule), report["problems"]
    assert all("\n" not in line for line in report["problems"])


def test_duplicate_weight_message_names_both_initializers():
    model = _good_model()
    _duplicate_weight(model)
    (line,) = lint_tensorrt_qdq(model)["problems"]
    assert "'w2'" in line and "'w'" in line


def test_float_fallback_turns_weight_only_dq_into_a_warning():
    model = _good_model()
    _weight_only_dq(model)
    report = lint_tensorrt_qdq(model, float_nodes={"conv_b"})
    assert report["ok"], report["problems"]
    assert _has(report, "warnings", "conv_b", "weight-only-dq")
    assert report["stats"]["quantized_convs"] == 1 and report["stats"]["float_convs"] == 1
    typo = lint_tensorrt_qdq(model, float_nodes={"conv_bb"})
    assert not typo["ok"] and _has(typo, "warnings", "model", "float-nodes")


def test_per_tensor_weight_scale_is_a_warning():
    model = _good_model()
    _set_init(model, "w_scale", np.float32(0.01))
    _set_init(model, "w_zp", np.int8(0))
    report = lint_tensorrt_qdq(model)
    assert report["ok"], report["problems"]
    assert _has(report, "warnings", "w_dq", "per-tensor-weight")
    assert report["stats"]["per_tensor_weight_scales"] == 1


def test_shared_weight_axis_is_reported_once_for_all_its_convs():
    model = _good_model()
    _conv_axis_1(model)
    (line,) = [p for p in lint_tensorrt_qdq(model)["problems"] if "[weight-axis]" in p]
    assert "conv_a (Conv)" in line and "conv_b (Conv)" in line and "axis 0" in line


def _single_conv(cout: int, w_scale, constant_scales: bool = False):
    """x -> Q/DQ -> Conv(W [cout, 4, 3, 3] behind a DQ), unnamed nodes; scales optionally Constant nodes."""
    w = RNG.integers(-127, 128, (cout, 4, 3, 3)).astype(np.int8)
    scales = {"x_scale": np.array(0.05, np.float32), "w_scale": np.asarray(w_scale, np.float32)}
    zps = [numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
           numpy_helper.from_array(np.zeros(np.shape(w_scale), np.int8), "w_zp")]
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k)) for k, v in scales.items()
             ] if constant_scales else []
    inits = zps + [numpy_helper.from_array(w, "w")]
    inits += [] if constant_scales else [numpy_helper.from_array(v, k) for k, v in scales.items()]
    nodes += [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
              helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
              helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wf"], axis=0),
              helper.make_node("Conv", ["xd", "wf"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_constant_node_scales_and_unnamed_nodes():
    model = _single_conv(4, np.full(4, 0.01), constant_scales=True)
    onnx.checker.check_model(model, full_check=True)
    _ort_run(model, {"x": np.ones((1, 4, 8, 8), np.float32)})
    report = lint_tensorrt_qdq(model)
    assert report["ok"] and report["warnings"] == [] and report["stats"]["quantized_convs"] == 1
    bad = _single_conv(4, np.full(4, -0.01), constant_scales=True)
    assert _has(lint_tensorrt_qdq(bad), "problems", "<DequantizeLinear -> wf>", "scale")


def test_one_output_channel_weight_with_one_scale_is_per_channel():
    assert lint_tensorrt_qdq(_single_conv(1, 0.01))["warnings"] == []
    assert lint_tensorrt_qdq(_single_conv(4, 0.01))["stats"]["per_tensor_weight_scales"] == 1


def _opset21_model(out_type):
    """Opset 21: Q nodes carry output_dtype instead of a zero point; DQ nodes have none."""
    model = _good_model(opset=21)
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            del node.input[2]
        if node.op_type == "QuantizeLinear":
            node.attribute.append(helper.make_attribute("output_dtype", out_type))
    return model


def test_opset21_output_dtype_int8_passes_and_uint8_fails():
    model = _opset21_model(TensorProto.INT8)
    onnx.checker.check_model(model, full_check=True)
    _ort_run(model, {"x": np.ones((1, 4, 8, 8), np.float32)})
    assert lint_tensorrt_qdq(model)["ok"], lint_tensorrt_qdq(model)["problems"]
    report = lint_tensorrt_qdq(_opset21_model(TensorProto.UINT8))
    assert _has(report, "problems", "x_q", "int8") and _has(report, "problems", "x_dq", "int8")


def _gemm_model(trans_b: int, axis: int):
    b = RNG.integers(-127, 128, (6, 8) if trans_b else (8, 6)).astype(np.int8)
    n = b.shape[axis]
    inits, nodes, x = _act_qdq("x", 0.05)
    inits += [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.full(n, 0.01, np.float32), "b_scale"),
              numpy_helper.from_array(np.zeros(n, np.int8), "b_zp")]
    nodes += [_dq("b_dq", "b", "b_scale", "b_zp", "b_f", axis=axis),
              helper.make_node("Gemm", [x, "b_f"], ["y"], name="gemm", transB=trans_b)]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("trans_b, good_axis", [(1, 0), (0, 1)])
def test_gemm_weight_axis_follows_trans_b(trans_b, good_axis):
    good = lint_tensorrt_qdq(_gemm_model(trans_b, good_axis))
    assert good["ok"] and good["stats"]["quantized_gemms"] == 1, good["problems"]
    bad = lint_tensorrt_qdq(_gemm_model(trans_b, 1 - good_axis))
    assert _has(bad, "problems", "b_dq", "weight-axis")


def test_assert_raises_config_error_with_one_line():
    model = _good_model()
    _uint8_zero_point(model)
    _opset_12(model)
    _set_init(model, "y1_scale", np.float32(-1.0))
    n = len(lint_tensorrt_qdq(model)["problems"])
    with pytest.raises(ConfigError) as info:
        assert_tensorrt_qdq(model)
    message = str(info.value)
    assert message.startswith(f"{n} problems: ") and "\n" not in message
    assert n > 3 and "[opset]" in message and f"and {n - 3} more" in message


def test_bad_inputs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        lint_tensorrt_qdq(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a readable ONNX model"):
        lint_tensorrt_qdq(tmp_path / "junk.onnx")
    with pytest.raises(ConfigError, match="expected an onnx.ModelProto"):
        lint_tensorrt_qdq(42)


# ---------------------------------------------------------------- a real exported graph


def _export_tiny_convnet(path):
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.c2(torch.sigmoid(self.c1(x)))

    torch.manual_seed(0)
    net, x = Tiny().eval(), torch.randn(1, 1, 8, 8)
    torch.onnx.export(net, (x,), str(path), dynamo=True)
    with torch.no_grad():
        return x.numpy(), net(x).numpy()


def _activation_amax(model, tensors, feed):
    """Calibrate: the largest |value| of each tensor, read by exposing it as an extra graph output."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    values = _ort_run(probe, feed)[len(model.graph.output):]
    return {t: float(np.abs(v).max()) for t, v in zip(tensors, values)}


def _insert_qdq(model, amax):
    """By hand: per-tensor Q/DQ on each Conv input, per-output-channel INT8 weights behind a DQ."""
    floats = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes, quantized = [], set()
    for node in model.graph.node:
        if node.op_type == "Conv":
            x, w = node.input[0], node.input[1]
            w_scale = (np.abs(floats[w]).reshape(len(floats[w]), -1).max(axis=1) / 127).astype(np.float32)
            w_int8 = np.clip(np.round(floats[w] / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
            quantized.add(w)
            model.graph.initializer.extend([
                numpy_helper.from_array(w_int8, f"{w}_int8"),
                numpy_helper.from_array(w_scale, f"{w}_scale"),
                numpy_helper.from_array(np.zeros(len(w_scale), np.int8), f"{w}_zp"),
                numpy_helper.from_array(np.array(amax[x] / 127, np.float32), f"{x}_scale"),
                numpy_helper.from_array(np.array(0, np.int8), f"{x}_zp")])
            nodes += [_q(f"{x}_q", x, f"{x}_scale", f"{x}_zp", f"{x}_qt"),
                      _dq(f"{x}_dq", f"{x}_qt", f"{x}_scale", f"{x}_zp", f"{x}_dqt"),
                      _dq(f"{w}_dq", f"{w}_int8", f"{w}_scale", f"{w}_zp", f"{w}_f", axis=0)]
            node.input[0], node.input[1] = f"{x}_dqt", f"{w}_f"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # The float weights go (initializer and the exporter's value_info): INT8 replaces them, not joins them.
    for field in (model.graph.initializer, model.graph.value_info):
        kept = [e for e in field if e.name not in quantized]
        del field[:]
        field.extend(kept)


def test_real_exported_convnet_with_hand_made_qdq(tmp_path):
    path = tmp_path / "tiny.onnx"
    x, reference = _export_tiny_convnet(path)
    model = onnx.load(str(path))
    name = model.graph.input[0].name
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    fp32_report = lint_tensorrt_qdq(path)  # by path: the exporter put the weights in external data
    assert fp32_report["stats"]["float_convs"] == 2 and fp32_report["stats"]["q_nodes"] == 0
    _insert_qdq(model, _activation_amax(model, [c.input[0] for c in convs], {name: x}))
    onnx.checker.check_model(model, full_check=True)
    (out,) = _ort_run(model, {name: x})
    # INT8 drift stays small: the graph computes what the float net does.
    assert np.abs(out - reference).max() <= 0.05 * np.abs(reference).max()
    report = lint_tensorrt_qdq(model)
    assert report["ok"], report["problems"]
    assert report["stats"]["quantized_convs"] == 2 and report["stats"]["float_convs"] == 0
    assert report["stats"]["int8_weights"] == 2 and report["stats"]["float_weight_bytes"] == 0
    # and the lint sees a wrong axis in it: axis 1 on the second conv's [4, 4, 3, 3] weight
    conv2 = [n for n in model.graph.node if n.op_type == "Conv"][1]
    w_dq = next(n for n in model.graph.node if n.output[0] == conv2.input[1])
    _set_attr(model, w_dq.name, axis=1)
    assert _has(lint_tensorrt_qdq(model), "problems", w_dq.name, "weight-axis")
