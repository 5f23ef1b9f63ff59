"""ONNX export of unrolled models: signature, checks, verification against PyTorch, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, cli_in_process, cli_subprocess
from cunet_edge.export.onnx import (
    ExportVerificationError,
    OnnxExportConfig,
    export_onnx,
)

from cunet_edge.errors import ArtifactError, ConfigError


def test_onnx_artifact_is_checked_verified_and_carries_the_solver(tiny_onnx, tiny_unrolled):
    man = json.loads((tiny_onnx / "manifest.json").read_text())
    assert man["kind"] == "onnx" and man["parent"]["kind"] == "unrolled"
    assert man["solver"] == json.loads((tiny_unrolled / "manifest.json").read_text())["solver"]
    assert man["signature"]["inputs"]["x"]["shape"] == ["batch", 1, 8, 8]
    v = man["verification"]
    assert v["rel_err"] <= 1e-4 and v["timesteps"][0] == 0 and v["timesteps"][-1] == 999
    assert [r["t"] for r in v["per_timestep"]] == [0, 100, 250, 500, 750, 999]
    assert all(r["rel_err"] <= 1e-4 for r in v["per_timestep"]) and man["kept_fp32"] == []
    model = onnx.load(str(tiny_onnx / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 18
    assert not {"Loop", "If", "Scan", "ScatterND"} & {n.op_type for n in model.graph.node}
    assert [i.name for i in model.graph.input] == ["x", "t"] and [o.name for o in model.graph.output] == ["eps"]
    assert man["model_cost"]["nfe_per_call"] == man["solver"]["nfe_per_call"]
    assert man["tensorrt_compat"]["ok"] and not man["tensorrt_compat"]["problems"]
    # The last stage's function evaluation only moves the velocity, which no output reads: pruned.
    assert 0 < man["model_cost"]["graph_macs"] < man["model_cost"]["macs"]


def test_fp16_export_is_typed_fp16_and_static_batch_is_static(tiny_unrolled, tmp_path):
    art = export_onnx(tiny_unrolled, OnnxExportConfig(precision="fp16", dynamic_batch=False, batch=3, verify_n=5),
                      tmp_path / "h")
    model = onnx.load(str(art.file("model.onnx")))
    x = model.graph.input[0].type.tensor_type
    assert x.elem_type == onnx.TensorProto.FLOAT16
    assert [d.dim_value for d in x.shape.dim] == [3, 1, 8, 8]
    n_fp16 = sum(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert n_fp16 > len(model.graph.initializer) // 2
    assert 1e-7 < art.manifest["verification"]["rel_err"] <= 2e-2
    # The timestep embedding (sinusoid and MLP) and every GroupNorm stay float32, between casts in the graph.
    kept = art.manifest["kept_fp32"]
    assert kept[0] == "time_mlp" and len(kept) == 1 + 16 and {"head.0", "bottleneck.attn.norm"} < set(kept)
    typed = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in typed.graph.value_info}
    elem.update({i.name: i.data_type for i in model.graph.initializer})
    trig = [elem[n.input[0]] for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    norms = [elem[n.input[0]] for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert trig and norms and set(trig + norms) == {onnx.TensorProto.FLOAT}
    # The ε error against fp32 PyTorch at timesteps spread over the schedule.
    rows = art.manifest["verification"]["per_timestep"]
    assert [r["t"] for r in rows] == [0, 100, 250, 500, 750, 999]
    assert all(1e-7 < r["rel_err"] <= 2e-2 for r in rows)
    # Sampling pads the last batch of a static-batch model and still draws the parent's images.
    from cunet_edge.checkpoint import load_checkpoint
    from cunet_edge.runtimes.base import open_runner
    from cunet_edge.sampling import SampleConfig, generate, generate_with_runner

    cfg = SampleConfig(n=4, steps=3, seed=1)
    with open_runner(art.path, "onnxruntime") as r:
        assert r.static_batch() == 3
        images = generate_with_runner(r, cfg)
    ref = generate(load_checkpoint(tiny_unrolled), cfg)
    assert images.shape == (4, 1, 8, 8) and float((images - ref).abs().max()) < 5e-2


def test_verification_failure_writes_nothing(tiny_unrolled, tmp_path):
    # fp16 cannot meet an fp32-sized tolerance: the export must fail and leave no artifact.
    with pytest.raises(ExportVerificationError, match="relative error .* > tolerance 1e-09"):
        export_onnx(tiny_unrolled, OnnxExportConfig(precision="fp16", tolerance=1e-9), tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())


def test_export_config_and_kind_errors(tiny_checkpoint, tiny_onnx, tmp_path):
    with pytest.raises(ConfigError, match="opset must be >= 18"):
        OnnxExportConfig(opset=17)
    with pytest.raises(ConfigError, match="precision"):
        OnnxExportConfig(precision="int4")
    # A checkpoint exports only when its network is static; the continuous U-Net's ODE blocks run torchdiffeq.
    with pytest.raises(ConfigError, match="is a continuous U-Net whose ODE blocks run torchdiffeq; unroll it first: "
                                          "cunet-edge unroll"):
        export_onnx(tiny_checkpoint, OnnxExportConfig(), tmp_path / "x")
    with pytest.raises(ArtifactError, match="of kind 'onnx'; this command needs one of: checkpoint, unrolled, pruned"):
        export_onnx(tiny_onnx, OnnxExportConfig(), tmp_path / "y")
    assert not any(tmp_path.iterdir())


def test_export_cli_bad_input(tiny_checkpoint, tiny_unrolled, tmp_path):
    assert_one_line_error(cli_subprocess("export", tiny_checkpoint, "--out", tmp_path / "a"),
                          "ODE blocks run torchdiffeq; unroll it first")  # the real entry point
    assert_one_line_error(cli_in_process("export", tiny_unrolled, "--format", "coreml", "--out", tmp_path / "b"),
                          "format 'coreml' is not one of: onnx, tensorrt, torch-tensorrt")
    assert_one_line_error(cli_in_process("export", tiny_unrolled, "--batch", 0, "--out", tmp_path / "c"), "batch")
    assert not any(tmp_path.iterdir())


def test_onnxruntime_matches_torch_across_batches(tiny_onnx, tiny_unrolled):
    from cunet_edge.runtimes.base import open_runner

    rng = np.random.default_rng(1)
    with open_runner(tiny_onnx, "onnxruntime") as ort_run, open_runner(tiny_unrolled, "torch", device="cpu") as pt:
        for b in (1, 4):
            feed = {"x": rng.standard_normal((b, 1, 8, 8)).astype(np.float32), "t": rng.integers(0, 1000, b)}
            a, r = ort_run.infer(feed)["eps"], pt.infer(feed)["eps"]
            assert np.linalg.norm(a - r) / np.linalg.norm(r) <= 1e-4
