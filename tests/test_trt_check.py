"""The engine-vs-ONNX-Runtime check (export/trt_check.py), for real: ONNX Runtime on both sides.

The comparison core takes two callables returning named tensors, so its logic — the per-timestep
errors, the tolerance, and the search for the first diverging layer over every intermediate tensor —
runs here on the real exported tiny model against a copy with one weight initializer perturbed.
"""

from __future__ import annotations

import numpy as np
import pytest

from cunet_edge.export import trt_check

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_onnx):
    from cunet_edge.artifact import Artifact

    art = Artifact.load(tiny_onnx)
    return art, onnx.load(str(art.file("model.onnx")))


def _perturbed(model, node_index):
    """A copy with the weight initializer of graph node `node_index` (a Conv) shifted by 0.5."""
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    node = copy.graph.node[node_index]
    inits = {t.name: t for t in copy.graph.initializer}
    (name,) = [i for i in node.input[1:2] if i in inits]
    w = numpy_helper.to_array(inits[name])
    inits[name].CopyFrom(numpy_helper.from_array((w + 0.5).astype(w.dtype), name))
    return copy, node


def _conv_with_initializer_weight(model, skip=3):
    inits = {t.name for t in model.graph.initializer}
    convs = [i for i, n in enumerate(model.graph.node) if n.op_type == "Conv" and n.input[1] in inits]
    assert len(convs) > skip, "the tiny model should have several convolutions"
    return convs[skip]  # one in the middle of the network, not the first


def test_feeds_spread_over_the_schedule_with_the_models_signature(exported):
    art, _ = exported
    feeds = trt_check.check_feeds(art.manifest["signature"], 1000, n=4, batch=2, seed=0)
    assert [t for t, _ in feeds] == [0, 333, 666, 999]
    t, feed = feeds[1]
    assert feed["x"].shape == (2, 1, 8, 8) and feed["x"].dtype == np.float32 and feed["t"].tolist() == [333, 333]
    again = trt_check.check_feeds(art.manifest["signature"], 1000, n=4, batch=2, seed=0)
    assert np.array_equal(again[1][1]["x"], feed["x"])  # seeded
    with pytest.raises(trt_check.CheckError, match="cannot be spread"):
        trt_check.schedule_timesteps(0)


def test_an_identical_model_passes_with_no_divergence(exported):
    art, model = exported
    feeds = trt_check.check_feeds(art.manifest["signature"], 1000)
    run = trt_check.ort_outputs(model)
    marked = trt_check.ort_outputs(trt_check.mark_all_outputs(model))
    order = trt_check.onnx_tensor_order(model)
    result = trt_check.check(run, trt_check.ort_outputs(model), feeds, trt_check.tolerance("fp32"),
                             divergence=trt_check.onnx_divergence(model, marked, trt_check.tolerance("fp32")))
    assert result["ok"] and result["first_divergence"] is None
    assert [r["t"] for r in result["per_timestep"]] == [0, 333, 666, 999]
    assert all(r["max_abs_err"] == 0.0 and r["ok"] for r in result["per_timestep"])
    # Every intermediate tensor is compared when asked, and none differs.
    div = trt_check.first_divergence(marked, marked, feeds[0][1], order, trt_check.tolerance("fp32"))
    assert div["tensor"] is None and div["compared"] == len(order) > 20
    assert trt_check.summary_line(result).startswith(
        "engine check against ONNX Runtime passed: max abs error 0, max rel error 0")


def test_a_perturbed_weight_is_found_at_its_layer(exported):
    art, model = exported
    index = _conv_with_initializer_weight(model)
    bad, node = _perturbed(model, index)
    feeds = trt_check.check_feeds(art.manifest["signature"], 1000)
    order = trt_check.onnx_tensor_order(model)
    test_all = trt_check.ort_outputs(trt_check.mark_all_outputs(bad))
    result = trt_check.check(trt_check.ort_outputs(model), trt_check.ort_outputs(bad), feeds,
                             trt_check.tolerance("fp16"),
                             divergence=trt_check.onnx_divergence(model, test_all, trt_check.tolerance("fp16")))
    assert not result["ok"]
    div = result["first_divergence"]
    assert (div["node"], div["op_type"], div["tensor"]) == (node.name, "Conv", node.output[0])
    assert div["max_rel_err"] > trt_check.tolerance("fp16")[1]
    # Every tensor before it in topological order was compared and matched.
    assert div["compared"] == 1 + sum(1 for tensor, _, _ in order[:[o[0] for o in order].index(node.output[0])])
    line = trt_check.summary_line(result)
    assert line.startswith("engine check against ONNX Runtime FAILED: ")
    assert f"first diverging layer: Conv node '{node.name}'" in line
    assert "\n" not in line


def test_marked_model_keeps_the_real_outputs_first(exported):
    _, model = exported
    marked = trt_check.mark_all_outputs(model)
    assert [o.name for o in marked.graph.output][:len(model.graph.output)] == [o.name for o in model.graph.output]
    assert len(marked.graph.output) == len({t for t, _, _ in trt_check.onnx_tensor_order(model)})
    assert len(model.graph.output) == 1  # the original is untouched


def test_tolerances_by_precision_and_one_line_errors():
    assert trt_check.tolerance("fp32") == (1e-4, 1e-3) and trt_check.tolerance("fp32", tf32=True) == (1e-3, 1e-2)
    assert trt_check.tolerance("int8")[1] > trt_check.tolerance("fp16")[1] > trt_check.tolerance("fp32")[1]
    with pytest.raises(trt_check.CheckError, match="no tolerance for precision 'bf16'"):
        trt_check.tolerance("bf16")
    ok, abs_err, rel_err = trt_check.within(np.array([1.0, -2.0]), np.array([1.0, -2.01]), (0.0, 1e-2))
    assert ok and abs_err == pytest.approx(0.01) and rel_err == pytest.approx(0.005)
    assert not trt_check.within(np.ones(3), np.array([1, np.nan, 1]), (1.0, 1.0))[0]  # NaN never passes
    with pytest.raises(trt_check.CheckError, match=r"shapes differ: \(2,\) vs \(3,\)"):
        trt_check.errors(np.ones(2), np.ones(3))
    one = lambda feed: {"eps": feed["x"]}  # noqa: E731
    with pytest.raises(trt_check.CheckError, match="the engine has no output 'eps'"):
        trt_check.compare(one, lambda feed: {}, [(0, {"x": np.ones(2)})], (0, 0))


def _manifest(**extra):
    return {"kind": "tensorrt-engine", "files": {}, **extra}


@pytest.mark.parametrize("record, match", [
    ({"engine_check": {"ok": "yes", "per_timestep": []}}, r"engine_check.ok must be true or false"),
    ({"engine_check": {"ok": True, "per_timestep": [{"t": -1, "max_rel_err": 0.1}]}}, r"per_timestep\[0\].t"),
    ({"engine_check": {"ok": False, "per_timestep": [{"t": 0, "max_rel_err": 0.1, "max_abs_err": -2}]}},
     r"max_abs_err must be a number >= 0"),
    ({"engine_check": {"ok": False, "per_timestep": [], "first_divergence": {"node": 3}}},
     r"first_divergence.node must be a string"),
    ({"engine_layers": {"layers": 2.5, "by_precision": {}}}, r"engine_layers.layers must be an integer"),
    ({"engine_layers": {"layers": 2, "by_precision": {"FP16": "two"}}}, r"by_precision.FP16 must be an integer"),
    ({"engine_layers": {"layers": 2, "fell_back": [{"precision": "FP16"}]}}, r"engine_layers.fell_back must be"),
])
def test_engine_records_in_a_manifest_are_schema_checked(record, match):
    from cunet_edge.errors import ArtifactError
    from cunet_edge.limits import check_manifest

    with pytest.raises(ArtifactError, match=match) as exc:
        check_manifest(_manifest(**record), "m.json")
    assert "\n" not in str(exc.value)
    check_manifest(_manifest(engine_check={"ok": True, "tolerance": {"atol": 1e-3, "rtol": 2e-2}, "per_timestep": [
        {"t": 0, "max_abs_err": 0.0, "max_rel_err": "inf", "ok": False}], "first_divergence": None},
        engine_layers={"layers": 2, "by_precision": {"FP16": 2}, "compute_layers": 1, "file": "layers.json"}), "m")


def test_layers_file_is_schema_checked():
    from cunet_edge.errors import ArtifactError
    from cunet_edge.limits import check_engine_layers

    assert check_engine_layers({"layers": [{"name": "conv", "type": None, "precision": "INT8"}]}, "l.json")
    for bad, match in (({"layers": "conv"}, "layers must be a list"), ({"layers": [{"type": "Conv"}]}, r"layers\[0\]"),
                       ({"layers": [{"name": "c", "tactic": 7}]}, r"layers\[0\].tactic must be a string or null")):
        with pytest.raises(ArtifactError, match=match):
            check_engine_layers(bad, "l.json")
