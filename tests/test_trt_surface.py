"""The TensorRT code paths against the real TensorRT Python API of 8.6, 10.3 (JetPack 6), the newest 10.x and 11.x.

The surfaces (tests/data/trt_surface/*.json) are dumped from the real bindings wheels by
scripts/trt_surfaces.py; one is regenerated here from PyPI and compared. Every `trt.X.Y` name the
project's code touches (an AST walk) must exist in each version where the code would use it, and
the engine builds (export and the bundle's build_engine.py) run against a fake `tensorrt` derived
from each surface, which refuses what that version lacks.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trt_surface as ts

from cunet_edge.artifact import ArtifactWriter
from cunet_edge.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ALL = set(ts.VERSIONS)
GATED = ts.GATED  # names the code uses only on some versions (its version branches)


def _scripts():
    spec = importlib.util.spec_from_file_location("trt_surfaces", ROOT / "scripts" / "trt_surfaces.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- the surfaces themselves

def test_surfaces_are_the_versions_they_name():
    versions = _scripts().VERSIONS
    assert set(versions) == ALL and sorted(p.stem for p in ts.DATA.glob("*.json")) == sorted(ALL)
    for v in ts.VERSIONS:
        s = ts.load_surface(v)
        assert s["tensorrt_version"] == v and s["wheel"] == f"{versions[v]}=={v}"
        assert {"Builder", "IBuilderConfig", "Runtime", "OnnxParser", "BuilderFlag"} <= set(s["names"])
    # What the issue says of the versions, read from the surfaces.
    flags = {v: ts.load_surface(v)["names"]["BuilderFlag"]["values"] for v in ts.VERSIONS}
    assert {"FP16", "INT8"} <= set(flags["10.16.1.11"]) and not {"FP16", "INT8"} & set(flags["11.4.0.106"])
    assert not ts.has(ts.load_surface("8.6.1"), "NetworkDefinitionCreationFlag.STRONGLY_TYPED")
    assert not ts.has(ts.load_surface("11.4.0.106"), "IInt8EntropyCalibrator2")
    assert ts.has(ts.load_surface("10.3.0"), "IInt8EntropyCalibrator2")


def _can_build_stand_ins():
    return all(shutil.which(t) for t in ("gcc", "nm", "readelf"))


@pytest.mark.skipif(not _can_build_stand_ins(), reason="needs gcc, nm and readelf to build TensorRT stand-in libraries")
def test_a_surface_regenerated_from_the_real_wheel_matches(tmp_path):
    mod = _scripts()
    try:
        mod.install("10.3.0")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"pip could not install tensorrt-cu12-bindings==10.3.0 (no PyPI here?): "
                    f"{(getattr(e, 'stderr', '') or '').strip()[-300:]}")
    fresh = mod.dump("10.3.0")
    stored = ts.load_surface("10.3.0")
    assert fresh["tensorrt_version"] == stored["tensorrt_version"] and fresh["wheel"] == stored["wheel"]
    if fresh["python"] == stored["python"]:
        assert fresh["names"] == stored["names"]
    else:  # another interpreter may get another build of the wheel: the same names and members at least
        assert {k: sorted(v.get("members", v.get("values", {}))) for k, v in fresh["names"].items()} == \
               {k: sorted(v.get("members", v.get("values", {}))) for k, v in stored["names"].items()}


# ---------------------------------------------------------------- the project's names, per version

def test_every_tensorrt_name_the_code_touches_exists_where_the_code_uses_it():
    names = ts.project_trt_names()
    assert {"Builder", "Runtime", "OnnxParser", "BuilderFlag.GPU_FALLBACK", "TensorIOMode.INPUT"} <= set(names)
    assert set(GATED) <= set(names), "a gated name is no longer used: drop it from GATED"
    missing = [f"{name} (used at {', '.join(where)}) is missing from TensorRT {v}"
               for name, where in names.items() for v in sorted(GATED.get(name, ALL))
               if not ts.has(ts.load_surface(v), name)]
    assert missing == []


def test_every_member_the_code_reads_on_tensorrt_objects_exists_in_every_version():
    uses = ts.project_member_uses()
    assert {"IExecutionContext.execute_async_v3", "IExecutionContext.set_input_shape", "ICudaEngine.num_io_tensors",
            "IBuilderConfig.set_timing_cache", "IBuilderConfig.can_run_on_DLA",
            "Runtime.deserialize_cuda_engine"} <= set(uses)
    missing = [f"{name} (used at {', '.join(where)}) is missing from TensorRT {v}"
               for name, where in uses.items() for v in ts.VERSIONS if not ts.has(ts.load_surface(v), name)]
    assert missing == []


def test_every_precision_flag_the_build_rules_can_ask_for_exists_in_that_version():
    """trt_build sets BuilderFlag.<name> through getattr, which the AST walk cannot see: enumerate the rules."""
    from cunet_edge.export import trt_build

    asked = {}
    for v in ts.VERSIONS:
        for precision in trt_build.PRECISIONS:
            for dla in (None, 0):
                for bp in trt_build.BUILDER_PRECISIONS:
                    try:
                        strong = trt_build.strongly_typed(v, dla, bp)
                        flags = trt_build.precision_flags(precision, strong, dla, bp)
                    except trt_build.BuildError:
                        continue
                    asked.setdefault(v, set()).update(f"BuilderFlag.{f.upper()}" for f in flags)
    assert asked["8.6.1"] == asked["10.3.0"] == {"BuilderFlag.FP16", "BuilderFlag.INT8"} and not asked["11.4.0.106"]
    assert [(v, f) for v, fs in asked.items() for f in sorted(fs) if not ts.has(ts.load_surface(v), f)] == []


def test_the_walk_finds_every_file_that_uses_tensorrt():
    assert {"export/tensorrt.py", "export/trt_build.py", "runtimes/tensorrt_runner.py", "runtimes/engines.py",
            "devices/bundle/build_engine.py", "devices/bundle/run.py"} <= set(ts.project_files())


def test_the_fake_refuses_what_a_version_lacks():
    old, new = ts.FakeTensorRT("8.6.1"), ts.FakeTensorRT("11.4.0.106")
    assert int(old.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) == 0
    assert str(old.BuilderFlag.FP16) == "BuilderFlag.FP16"
    with pytest.raises(AttributeError, match="NetworkDefinitionCreationFlag.*STRONGLY_TYPED"):
        old.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    with pytest.raises(AttributeError, match="FP16"):
        new.BuilderFlag.FP16
    with pytest.raises(AttributeError, match="no attribute 'IInt8EntropyCalibrator2'"):
        new.IInt8EntropyCalibrator2
    config = new.Builder(new.Logger(new.Logger.WARNING)).create_builder_config()
    with pytest.raises(AttributeError, match="'tensorrt.IBuilderConfig' object has no attribute 'set_flags'"):
        config.set_flags(1)
    with pytest.raises(AttributeError, match="DLA_cores"):
        config.DLA_cores = 0  # a misspelt property is not silently set
    with pytest.raises(TypeError, match="set_timing_cache"):
        config.set_timing_cache(None)  # ignore_mismatch has no default
    config.set_timing_cache(None, ignore_mismatch=False)
    with pytest.raises(TypeError, match="OnnxParser.__init__"):
        new.OnnxParser(new.Logger())  # the network comes first
    with pytest.raises(TypeError, match="No constructor defined"):
        new.ICudaEngine()  # engines come from Runtime.deserialize_cuda_engine


# ---------------------------------------------------------------- export's engine build, on every version's fake

SIG = {"inputs": {"x": {"shape": ["batch", 1, 8, 8], "dtype": "float32"}, "t": {"shape": ["batch"], "dtype": "int64"}},
       "outputs": {"eps": {"shape": ["batch", 1, 8, 8], "dtype": "float32"}}}


def _onnx_artifact(path, precision):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["eps"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8]),
                               helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"])],
                              [helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["batch", 1, 8, 8])])
    with ArtifactWriter(path, kind="onnx-int8" if precision == "int8" else "onnx", stage="export", config={}) as w:
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(w.dir / "model.onnx"))
        (w.dir / "config.json").write_text("{}\n")
        w.manifest.update(precision=precision, opset=18, dynamic_batch=True, batch=4, signature=SIG,
                          **({"target": "tensorrt"} if precision == "int8" else {}))
    return w.artifact


BUILD = {"Builder.build_serialized_network": lambda st, net, cfg: b"PLAN", "OnnxParser.num_errors": 0,
         "IBuilderConfig.add_optimization_profile": lambda st, p: 0, "ITimingCache.serialize": lambda st: b"CACHE",
         "Builder.num_DLA_cores": 2, "INetworkDefinition.num_inputs": 2, "INetworkDefinition.num_layers": 1,
         "IBuilderConfig.can_run_on_DLA": lambda st, layer: True}


def _network_behaviours(fake):
    """The parsed network of _onnx_artifact: x (-1, 1, 8, 8), t (-1,), one layer."""
    def get_input(st, i):
        tensor = fake.new("ITensor")
        tensor.name, tensor.shape = [("x", (-1, 1, 8, 8)), ("t", (-1,))][i]
        return tensor

    def get_layer(st, i):
        layer = fake.new("ILayer")
        layer.name = "relu"
        return layer
    fake._behaviours.update({"INetworkDefinition.get_input": get_input, "INetworkDefinition.get_layer": get_layer})


LAYERS = [("x_to_fp16", "Reformat", "FP16", None), ("conv_in + PWN(silu)", "CaskConvolution", "FP16",
           "sm80_xmma_fprop_implicit_gemm_f16f16_f16f32_nhwc"), ("relu", "PointWise", "FP32", None)]


def engine_stand_in(fake):
    """plan_runner(plan, signature, where) for export's engine check: no GPU here, so the engine's outputs come from
    ONNX Runtime on the ONNX the fake parser was given (every tensor marked), or on `fake.engine_model` when a
    test gives one (an engine that diverges)."""
    import contextlib

    import onnx

    from cunet_edge.export import trt_check

    def runner(plan, signature, where):
        (path,) = fake.calls("OnnxParser.parse_from_file")[-1]
        model = getattr(fake, "engine_model", None) or onnx.load(str(path))
        return contextlib.nullcontext(trt_check.ort_outputs(trt_check.mark_all_outputs(model)))
    return runner


@pytest.fixture
def fake_trt(monkeypatch):
    """fake_trt(version) -> a surface-derived tensorrt in sys.modules, on a pretend GPU (no CUDA here)."""
    import cunet_edge.export.tensorrt as export_trt

    def make(version):
        fake = ts.FakeTensorRT(version, BUILD)
        _network_behaviours(fake)
        ts.inspector_behaviours(fake, LAYERS)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr(export_trt, "current_platform", lambda: {
            "gpu_name": "Orin", "compute_capability": "8.7", "tensorrt_version": fake.__version__})
        monkeypatch.setattr(export_trt, "plan_runner", engine_stand_in(fake))
        return fake
    return make


@pytest.mark.parametrize("version, precision, dla, strong, flags", [
    ("8.6.1", "fp16", None, False, ["BuilderFlag.FP16"]),
    ("8.6.1", "int8", 0, False, ["BuilderFlag.INT8", "BuilderFlag.GPU_FALLBACK"]),
    ("10.3.0", "fp32", None, True, []),
    ("10.3.0", "fp16", 1, False, ["BuilderFlag.FP16", "BuilderFlag.GPU_FALLBACK"]),
    ("10.16.1.11", "int8", None, True, []),
    ("11.4.0.106", "fp16", None, True, []),
    ("11.4.0.106", "int8", 0, True, ["BuilderFlag.GPU_FALLBACK"]),
])
def test_export_builds_on_each_versions_api(fake_trt, tmp_path, version, precision, dla, strong, flags):
    from cunet_edge.export.tensorrt import EngineConfig, build_engine

    fake = fake_trt(version)
    src = _onnx_artifact(tmp_path / "onnx", precision)
    batches = dict(min_batch=4, max_batch=4) if dla is not None else dict(max_batch=8)  # DLA: static shapes
    cfg = EngineConfig(dla_core=dla, timing_cache=str(tmp_path / "tc.bin"), **batches)
    art = build_engine(src.path, cfg, tmp_path / "engine")
    assert art.file("engine.plan").read_bytes() == b"PLAN" and (tmp_path / "tc.bin").read_bytes() == b"CACHE"
    assert art.manifest["strongly_typed"] is strong
    (network_flags,) = fake.calls("Builder.create_network")
    want = (1 << 0 if version.startswith("8.") else 0) | (1 << 1 if strong and version.startswith("10.") else 0)
    assert network_flags == (want,)
    assert [str(f) for (f,) in fake.calls("IBuilderConfig.set_flag")] == flags
    shapes = {name: rest for name, *rest in fake.calls("IOptimizationProfile.set_shape")}
    lo, hi = (4, 4) if dla is not None else (1, 8)
    assert shapes == {"x": [(lo, 1, 8, 8), (4, 1, 8, 8), (hi, 1, 8, 8)], "t": [(lo,), (4,), (hi,)]}
    assert art.manifest["profile"] == {"min": lo, "opt": 4, "max": hi} and art.manifest["tf32"] is (
        True if precision == "fp32" else None)
    if dla is not None:
        assert fake.calls("IBuilderConfig.DLA_core=") == [(dla,)]
        assert [str(d) for (d,) in fake.calls("IBuilderConfig.default_device_type=")] == ["DeviceType.DLA"]
        assert art.manifest["gpu_fallback"] is True and art.manifest["dla_gpu_fallback_layers"] == []


@pytest.mark.parametrize("version, precision, cfg, match", [
    ("10.3.0", "fp16", dict(dla_core=0), "DLA builds take static shapes only, and the batch profile is 1..16"),
    ("11.4.0.106", "fp32", dict(dla_core=0, min_batch=4, max_batch=4), "DLA runs FP16 and INT8 layers only"),
    ("10.3.0", "fp32", dict(dla_core=0, min_batch=4, max_batch=4), "or set builder_precision fp16"),
])
def test_dla_requests_tensorrt_cannot_honour_are_refused_before_the_build(fake_trt, tmp_path, version, precision,
                                                                          cfg, match):
    from cunet_edge.export.tensorrt import EngineConfig, build_engine

    fake = fake_trt(version)
    with pytest.raises(ConfigError, match=match):
        build_engine(_onnx_artifact(tmp_path / "onnx", precision).path, EngineConfig(**cfg), tmp_path / "engine")
    assert not fake.calls("Builder") and not (tmp_path / "engine").exists()


def test_tf32_policy_is_shared_with_the_bundle(fake_trt, tmp_path):
    from cunet_edge.export.tensorrt import EngineConfig, build_engine

    fake = fake_trt("10.3.0")
    art = build_engine(_onnx_artifact(tmp_path / "onnx", "fp32").path, EngineConfig(tf32=False), tmp_path / "engine")
    assert [str(f) for (f,) in fake.calls("IBuilderConfig.clear_flag")] == ["BuilderFlag.TF32"]
    assert art.manifest["tf32"] is False and "--noTF32" in art.file("trtexec.sh").read_text()


def test_tensorrt_11_has_no_precision_flags_to_ask_for(fake_trt, tmp_path):
    from cunet_edge.export.tensorrt import EngineConfig, build_engine

    fake_trt("11.4.0.106")
    with pytest.raises(ConfigError, match="has no precision flags"):
        build_engine(_onnx_artifact(tmp_path / "onnx", "fp32").path, EngineConfig(builder_precision="fp16"),
                     tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


def test_fake_module_functions_take_their_behaviour_from_the_test():
    fake = ts.FakeTensorRT("10.3.0", {"nptype": lambda d: np.float32})
    assert fake.nptype(fake.DataType.FLOAT) is np.float32
    with pytest.raises(AttributeError):
        fake.DataType.FLOAT64
    assert fake.calls("nptype") == [(0,)]


# ---------------------------------------------------------------- batches the engine accepts

def test_engine_batches_chunk_at_the_max_and_pad_to_the_min():
    from cunet_edge.runtimes.numpy_sampler import engine_batches

    seen = []

    def model(x, t):
        seen.append(len(x))
        assert 2 <= len(x) <= 4
        return x * 2 + t[:, None, None, None]

    eps = engine_batches(model, 2, 4)
    x, t = np.arange(11 * 2, dtype=np.float32).reshape(11, 1, 1, 2), np.arange(11)
    np.testing.assert_array_equal(eps(x, t), x * 2 + t[:, None, None, None])
    assert seen == [4, 4, 3]
    seen.clear()
    np.testing.assert_array_equal(eps(x[:1], t[:1]), x[:1] * 2 + t[:1, None, None, None])
    assert seen == [2]  # padded to the min, the padding dropped
    with pytest.raises(ValueError, match="batch range 3..2"):
        engine_batches(model, 3, 2)


def test_tensorrt_runner_keeps_to_the_profile_it_was_built_with(fake_trt, tmp_path):
    """The runner reads the profile the build recorded: a sampler's batch of 11 reaches a 1..4 engine as 4+4+3;
    timing (bind) a batch the engine cannot take is a one-line error. The GPU half of the runner cannot run
    here, so its engine call is replaced by numpy."""
    from cunet_edge.export.tensorrt import EngineConfig, build_engine
    from cunet_edge.runtimes.base import open_runner

    fake_trt("10.3.0")
    engine = build_engine(_onnx_artifact(tmp_path / "onnx", "fp32").path, EngineConfig(max_batch=4),
                          tmp_path / "engine")
    runner = open_runner(engine.path, "tensorrt")
    assert runner.batch_range() == (1, 4)
    seen = []
    runner._infer = lambda feed: seen.append(len(feed["x"])) or {"eps": feed["x"] * 2}
    x = np.ones((11, 1, 8, 8), np.float32)
    np.testing.assert_array_equal(runner.infer({"x": x, "t": np.zeros(11, np.int64)})["eps"], x * 2)
    assert seen == [4, 4, 3]
    with pytest.raises(ConfigError, match=r"takes batch 1..4, not 11: rebuild it with cunet-edge export .* "
                                          r"--max-batch 11"):
        runner.bind({"x": x, "t": np.zeros(11, np.int64)})


@pytest.mark.parametrize("args, match", [
    (["--dla-core", "0", "--max-batch", "8"], "DLA builds take static shapes only, and the batch profile is 1..8"),
    (["--dla-core", "0", "--min-batch", "4", "--max-batch", "4"], "DLA runs FP16 and INT8 layers only"),
    (["--min-batch", "8", "--max-batch", "4"], "min_batch 8 is larger than max_batch 4"),
    (["--opt-batch", "32"], "opt batch 32 is outside min_batch..max_batch (1..16)"),
])
def test_cli_refuses_a_profile_tensorrt_cannot_build_in_one_line(tmp_path, args, match):
    """Checked before TensorRT is loaded: the same line here, where there is none, as on the board."""
    from cli_helpers import assert_one_line_error, cli_in_process

    src = _onnx_artifact(tmp_path / "onnx", "fp32")
    proc = cli_in_process("export", src.path, "--format", "tensorrt", "--out", tmp_path / "engine", *args)
    assert_one_line_error(proc, match)
    assert not (tmp_path / "engine").exists()


# ---------------------------------------------------------------- the names table of docs/tensorrt.md

def test_the_tensorrt_names_table_in_the_docs_is_current(tmp_path):
    """scripts/trt_names.py's table equals the one committed in docs/tensorrt.md, and --check notices a change."""
    spec = importlib.util.spec_from_file_location("trt_names", ROOT / "scripts" / "trt_names.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fresh = mod.table()
    assert mod.in_doc(mod.DOC.read_text()) == fresh, "docs/tensorrt.md is stale: python scripts/trt_names.py --write"
    rows = {line.split("`")[1]: line for line in fresh.splitlines()[2:]}
    assert set(rows) == set(ts.project_trt_names()) | set(ts.project_member_uses())
    assert "| yes | yes | yes | **no** | 8.6.1 |" in rows["NetworkDefinitionCreationFlag.EXPLICIT_BATCH"]
    assert "`devices/bundle/run.py`" in rows["IExecutionContext.execute_async_v3"]
    # A stale doc is caught: the script's --check exits 1 on a copy with a row dropped.
    stale = tmp_path / "tensorrt.md"
    stale.write_text(mod.DOC.read_text().replace(rows["Builder"] + "\n", ""))
    mod.DOC = stale
    assert mod.main(["--check"]) == 1


# ---------------------------------------------------------------- what the engine runs, and does it match ONNX Runtime

# The start of a real IEngineInspector JSON (LayerInformationFormat.JSON at ProfilingVerbosity.DETAILED), from
# NVIDIA/TensorRT tools/experimental/trt-engine-explorer/tests/inputs/mobilenet.qat.onnx.engine.graph.json
# (commit 8fe05393fed8488631b6d5b54458c4c3492a17dc): its first two layers and one whose INT8 convolution writes
# FP16, shortened (some convolution parameters dropped), and its closing NoOp layer and Bindings.
NVIDIA_SAMPLE = """{"Layers": [{
  "Name": "QuantizeLinear_2",
  "LayerType": "Reformat",
  "Inputs": [{"Name": "input1", "Location": "Device", "Dimensions": [1,3,224,224],
              "Format/Datatype": "Row major linear FP32"}],
  "Outputs": [{"Name": "317", "Location": "Device", "Dimensions": [1,3,224,224],
               "Format/Datatype": "Four wide channel vectorized row major Int8 format"}],
  "ParameterType": "Reformat",
  "Origin": "QDQ",
  "TacticValue": "0x0000000000000000"
},{
  "Name": "features.0.0.weight + QuantizeLinear_8 + Conv_12 + PWN(Clip_16)",
  "LayerType": "CaskConvolution",
  "Inputs": [{"Name": "317", "Location": "Device", "Dimensions": [1,3,224,224],
              "Format/Datatype": "Four wide channel vectorized row major Int8 format"}],
  "Outputs": [{"Name": "334", "Location": "Device", "Dimensions": [1,32,112,112],
               "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
  "ParameterType": "Convolution",
  "Kernel": [3,3],
  "Weights": {"Type": "Int8", "Count": 864},
  "Bias": {"Type": "Float", "Count": 32},
  "TacticName": "volta_int8x4_icudnn_int8x4_128x32_relu_xregs_medium_c32_nn_v1",
  "TacticValue": "0x10d7116a3fad9b7a"
},{
  "Name": "features.2.conv.2.weight + QuantizeLinear_90 + Conv_94",
  "LayerType": "CaskConvolution",
  "Inputs": [{"Name": "399", "Location": "Device", "Dimensions": [1,96,56,56],
              "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
  "Outputs": [{"Name": "410", "Location": "Device", "Dimensions": [1,24,56,56],
               "Format/Datatype": "Thirty-two wide channel vectorized row major FP16 format"}],
  "ParameterType": "Convolution",
  "Weights": {"Type": "Int8", "Count": 2304},
  "TacticName": "turing_fp16_i8816cudnn_int8_128x128_ldg16_relu_small_nt_v1",
  "TacticValue": "0x4e4e6b8f37d71713"
},{
  "Name": "copied_squeeze_after_(Unnamed Layer* 850) [ElementWise]",
  "LayerType": "NoOp",
  "Inputs": [{"Name": "(Unnamed Layer* 850) [ElementWise]_out_tensor", "Location": "Device",
              "Dimensions": [1,1000,1,1], "Format/Datatype": "Row major linear FP32"}],
  "Outputs": [{"Name": "1179", "Location": "Device", "Dimensions": [1,1000],
               "Format/Datatype": "Row major linear FP32"}],
  "TacticValue": "0x0000000000000000"
}],
"Bindings": ["input1"
,"1179"
]}
"""


def test_inspector_json_in_nvidias_real_format_parses():
    from cunet_edge.export import trt_build

    layers = trt_build.parse_engine_information(NVIDIA_SAMPLE)
    assert [(r["type"], r["precision"], r["compute"]) for r in layers] == [
        ("Reformat", "FP32", False), ("CaskConvolution", "INT8", True), ("CaskConvolution", "INT8", True),
        ("NoOp", "FP32", False)]
    assert layers[1]["tactic"] == "volta_int8x4_icudnn_int8x4_128x32_relu_xregs_medium_c32_nn_v1"
    assert layers[0]["tactic"] == "0x0000000000000000"  # no TacticName: the tactic's value
    assert layers[0]["inputs"] == ["FP32"] and layers[0]["outputs"] == ["INT8"] and layers[2]["outputs"] == ["FP16"]
    summary = trt_build.layer_summary(layers, "int8")
    assert summary == {"layers": 4, "by_precision": {"FP32": 2, "INT8": 2}, "compute_layers": 2, "detailed": True,
                       "compute_int8": 2, "fell_back": []}
    # Below DETAILED verbosity TensorRT lists names only; garbage is a one-line BuildError.
    names = trt_build.parse_engine_information('{"Layers": ["conv1", "relu1"], "Bindings": ["x"]}')
    assert [r["name"] for r in names] == ["conv1", "relu1"] and not trt_build.layer_summary(names, "fp16")["detailed"]
    for bad, match in (("not json", "not JSON"), ('{"Bindings": []}', "no Layers list"), ("[1]", "no Layers list")):
        with pytest.raises(trt_build.BuildError, match=match):
            trt_build.parse_engine_information(bad)
    assert [trt_build.tensor_precision(t) for t in ("Half", "uint8", "BF16 format", "Row major linear FP8", None)] == [
        "FP16", "UINT8", "BF16", "FP8", None]


@pytest.mark.parametrize("version", ts.VERSIONS)
def test_export_saves_the_engines_layers_and_its_check(fake_trt, tmp_path, version):
    from cunet_edge.export.tensorrt import EngineConfig, build_engine
    from cunet_edge.cli.inspect import engine_lines
    from cunet_edge.inspection import inspect_engine

    fake = fake_trt(version)
    art = build_engine(_onnx_artifact(tmp_path / "onnx", "fp16").path, EngineConfig(max_batch=8), tmp_path / "e")
    assert [str(v) for (v,) in fake.calls("IBuilderConfig.profiling_verbosity=")] == ["ProfilingVerbosity.DETAILED"]
    assert fake.calls("EngineInspector.get_engine_information") == [(fake.LayerInformationFormat.JSON,)]
    layers = json.loads(art.file("layers.json").read_text())["layers"]
    assert [(r["name"], r["type"], r["precision"]) for r in layers] == [(n, k, p) for n, k, p, _ in LAYERS]
    assert layers[1]["tactic"] == LAYERS[1][3] and "layers.json" in art.manifest["files"]
    assert art.manifest["engine_layers"] == {"layers": 3, "by_precision": {"FP16": 2, "FP32": 1},
                                             "compute_layers": 1, "detailed": True, "file": "layers.json"}
    check = art.manifest["engine_check"]
    assert check["ok"] and check["first_divergence"] is None and check["tolerance"] == {"atol": 1e-3, "rtol": 2e-2}
    assert [r["t"] for r in check["per_timestep"]] == [0, 333, 666, 999]
    info = inspect_engine(art.path)
    assert engine_lines(info) == [
        f"tensorrt-engine fp16, TensorRT {version} on Orin (sm 8.7)",
        "3 layers (FP16 2, FP32 1); 1 convolution/matmul",
        "engine check against ONNX Runtime passed: max abs error 0, max rel error 0 (at t=0) over timesteps "
        "0,333,666,999 (atol 0.001, rtol 0.02)"]


def test_an_int8_engine_names_the_convolutions_that_fell_back(fake_trt, tmp_path):
    from cunet_edge.export.tensorrt import EngineConfig, build_engine
    from cunet_edge.cli.inspect import engine_lines
    from cunet_edge.inspection import inspect_engine

    fake = fake_trt("10.3.0")
    ts.inspector_behaviours(fake, [("conv_in", "CaskConvolution", "INT8", "sm87_xmma_fprop_i8i8"),
                                   ("attn.qk", "CaskGemmMatrixMultiply", "FP16", "sm87_xmma_gemm_f16f16"),
                                   ("conv_out", "CaskConvolution", "FP32", None), ("add", "PointWise", "FP16", None)])
    art = build_engine(_onnx_artifact(tmp_path / "onnx", "int8").path, EngineConfig(max_batch=8), tmp_path / "e")
    summary = art.manifest["engine_layers"]
    assert summary["compute_int8"] == 1 and summary["fell_back"] == [
        {"name": "attn.qk", "precision": "FP16"}, {"name": "conv_out", "precision": "FP32"}]
    assert engine_lines(inspect_engine(art.path))[1] == (
        "4 layers (FP16 2, FP32 1, INT8 1); 3 convolution/matmul, 1 of them INT8; fell back: attn.qk (FP16), "
        "conv_out (FP32)")


def test_a_diverging_engine_is_traced_to_its_first_layer(fake_trt, tiny_onnx, tmp_path):
    """The real exported tiny model; the engine (no GPU here: ONNX Runtime stands in for it) has one convolution's
    weights shifted. The check fails, the debug build marks the parsed network's tensors that carry ONNX names, and
    the first diverging layer is that convolution's node."""
    import onnx
    from onnx import numpy_helper

    from cli_helpers import cli_in_process
    from cunet_edge.artifact import Artifact
    from cunet_edge.export.tensorrt import EngineConfig, build_engine

    fake = fake_trt("10.16.1.11")
    src = Artifact.load(tiny_onnx)
    model = onnx.load(str(src.file("model.onnx")))
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    node = convs[3]
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    (w,) = [t for t in bad.graph.initializer if t.name == node.input[1]]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + np.float32(0.5), w.name))
    fake.engine_model = bad
    ts.onnx_network_behaviours(fake, model)
    art = build_engine(src.path, EngineConfig(max_batch=8), tmp_path / "engine")
    check = art.manifest["engine_check"]
    assert not check["ok"]
    div = check["first_divergence"]
    assert (div["node"], div["op_type"], div["tensor"]) == (node.name, "Conv", node.output[0])
    marked = [t.name for (t,) in fake.calls("INetworkDefinition.mark_output")]
    assert marked == [t for t in fake.float_tensors if t != "eps"] and div["marked"] == len(marked) > 20
    assert len(fake.calls("Builder.build_serialized_network")) == 2  # the engine, then the debug build
    proc = cli_in_process("inspect", art.path)
    print(proc.stdout)  # docs/tensorrt.md quotes it
    assert proc.returncode == 0, proc.stderr
    assert "engine check against ONNX Runtime FAILED: " in proc.stdout
    assert f"first diverging layer: Conv node '{node.name}' (tensor '{node.output[0]}', max rel error" in proc.stdout


def test_the_report_shows_an_engines_layers_and_check(fake_trt, tmp_path):
    from cli_helpers import cli_in_process
    from cunet_edge.export.tensorrt import EngineConfig, build_engine

    fake_trt("8.6.1")
    run_dir = tmp_path / "run"
    build_engine(_onnx_artifact(run_dir / "onnx", "fp16").path, EngineConfig(max_batch=8), run_dir / "engine")
    proc = cli_in_process("report", run_dir, "--out", tmp_path / "r", "--no-measure")
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "r" / "report.md").read_text()
    assert "TensorRT engines: what runs, and against ONNX Runtime" in md
    (row,) = [line for line in md.splitlines() if line.startswith("| engine ")]
    assert "FP16 2, FP32 1" in row and "passed, max rel" in row


def test_export_cli_prints_the_engines_layers_and_check(fake_trt, tmp_path):
    from cli_helpers import cli_in_process

    fake_trt("10.3.0")
    src = _onnx_artifact(tmp_path / "onnx", "fp16")
    proc = cli_in_process("export", src.path, "--format", "tensorrt", "--out", tmp_path / "e", "--max-batch", "8",
                          "--json", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[1:] == ["3 layers (FP16 2, FP32 1); 1 convolution/matmul",
                         "engine check against ONNX Runtime passed: max abs error 0, max rel error 0 (at t=0) "
                         "over timesteps 0,333,666,999 (atol 0.001, rtol 0.02)"]
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["engine_check"]["ok"] and record["engine_layers"]["layers"] == 3


def test_export_cli_fails_on_an_engine_that_does_not_match(fake_trt, tmp_path):
    """A failed check is one line and exit 1 (as the bundle's build_engine.py), the artifact kept for inspect."""
    from onnx import TensorProto, helper

    from cli_helpers import cli_in_process

    fake = fake_trt("10.3.0")
    fake._behaviours["ILayer.num_outputs"] = 0  # nothing for the debug build to mark: this test is the exit status
    fake.engine_model = helper.make_model(helper.make_graph(  # the "engine" computes eps = -x
        [helper.make_node("Neg", ["x"], ["eps"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8]),
         helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["batch", 1, 8, 8])]),
        opset_imports=[helper.make_opsetid("", 18)])
    src = _onnx_artifact(tmp_path / "onnx", "fp32")
    proc = cli_in_process("export", src.path, "--format", "tensorrt", "--out", tmp_path / "e", "--max-batch", "8")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("do not deploy it") and "does not match ONNX Runtime" in \
        proc.stderr
    assert "engine check against ONNX Runtime FAILED" in proc.stdout
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["engine_check"]["ok"] is False


def test_a_failed_debug_build_leaves_the_failed_check_recorded_with_why(fake_trt, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from cunet_edge.export.tensorrt import EngineConfig, build_engine
    from cunet_edge.cli.inspect import engine_lines
    from cunet_edge.inspection import inspect_engine

    fake = fake_trt("10.3.0")
    plans = iter([b"PLAN", None])  # the engine builds; its debug build does not
    fake._behaviours.update({"Builder.build_serialized_network": lambda st, net, cfg: next(plans),
                             "ILayer.num_outputs": 0})
    # The "engine" computes eps = -x where the ONNX computes Relu(x).
    fake.engine_model = helper.make_model(helper.make_graph(
        [helper.make_node("Neg", ["x"], ["eps"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8]),
         helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["batch", 1, 8, 8])]),
        opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(fake.engine_model)
    art = build_engine(_onnx_artifact(tmp_path / "onnx", "fp32").path, EngineConfig(max_batch=8), tmp_path / "e")
    check = art.manifest["engine_check"]
    assert not check["ok"] and not any(r["ok"] for r in check["per_timestep"])
    assert check["first_divergence"]["tensor"] is None
    assert check["first_divergence"]["error"].startswith("the debug build failed: TensorRT could not build an engine")
    line = engine_lines(inspect_engine(art.path))[2]
    assert line.startswith("engine check against ONNX Runtime FAILED: ")
    assert "; no first diverging layer: the debug build failed" in line
