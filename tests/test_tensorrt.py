"""TensorRT export without a GPU: the parser's op coverage, trtexec command lines, engine location checks,
and one-line errors when TensorRT is absent. Builds and runs that need TensorRT are marked and skip.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cunet_edge.artifact import ArtifactWriter
from cunet_edge.config import from_dict, to_dict
from cunet_edge.errors import ArtifactError, BackendMissingError, ConfigError
from cunet_edge.runtimes.engines import check_engine_location
from cunet_edge.export.tensorrt import EngineConfig, build_engine, builder_flags, trtexec_command, uses_strong_typing
from cunet_edge.export.trt_compat import check_tensorrt_compat, load_op_list
from cunet_edge.runtimes.base import open_runner

onnx = pytest.importorskip("onnx")
TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper

GOLDEN = Path(__file__).parent / "golden" / "unrolled_ops.json"
SOLVER = {"method": "euler", "steps": 1, "nfe_per_block": 1, "nfe_per_call": 2, "ode_blocks": 2}
DYN_SIG = {"inputs": {"x": {"shape": ["batch", 1, 16, 16], "dtype": "float32"},
                      "t": {"shape": ["batch"], "dtype": "int64"}},
           "outputs": {"eps": {"shape": ["batch", 1, 16, 16], "dtype": "float32"}}}
STATIC_SIG = {"inputs": {"x": {"shape": [1, 1, 16, 16], "dtype": "float16"}, "t": {"shape": [1], "dtype": "int64"}},
              "outputs": {"eps": {"shape": [1, 1, 16, 16], "dtype": "float16"}}}
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_TORCH_TRT = importlib.util.find_spec("torch_tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed: its absence cannot be shown")


# ---------------------------------------------------------------- tiny ONNX graphs built in code

def _model(nodes, *, x_shape=("batch", 1, 8, 8), inits=(), opset=18, functions=()):
    """x (B, 1, 8, 8) float, t (B,) int64 → eps; `nodes` must produce "eps" from "x" (and maybe "t")."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)),
         helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("eps", TensorProto.FLOAT, None)],
        initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], functions=list(functions))


def _clean_model():
    """Conv, SiLU and the timestep added as a bias: the kind of ops an unrolled U-Net exports to."""
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["h"]),
             helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["tf", "shape"], ["tb"]), helper.make_node("Add", ["h", "tb"], ["eps"])]
    return _model(nodes, inits=[w, shape])


def _branch(name):
    return helper.make_graph([helper.make_node("Identity", ["x"], [f"{name}_out"])], name, [],
                             [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])


def _if_model():
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["eps"], then_branch=_branch("then"), else_branch=_branch("else"))
    return _model([node], inits=[cond])


def _loop_model():
    value = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])], "body",
        [value("i", TensorProto.INT64, []), value("c_in", TensorProto.BOOL, []),
         value("v_in", TensorProto.FLOAT, None)],
        [value("c_out", TensorProto.BOOL, []), value("v_out", TensorProto.FLOAT, None)])
    inits = [numpy_helper.from_array(np.array(2, np.int64), "n"), numpy_helper.from_array(np.array(True), "go")]
    return _model([helper.make_node("Loop", ["n", "go", "x"], ["eps"], body=body)], inits=inits)


def _single_op(op, domain=""):
    return _model([helper.make_node(op, ["x"], ["eps"], domain=domain)])


def _qdq_model(zero_point=0):
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="q0"),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["eps"], name="dq0")]
    return _model(nodes, inits=inits)


def _function_model():
    """A model-local function whose body holds an op TensorRT refuses (Unique)."""
    fn = helper.make_function("local", "Odd", ["a"], ["b"], [helper.make_node("Unique", ["a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    m = _model([helper.make_node("Odd", ["x"], ["eps"], domain="local")], functions=[fn])
    m.opset_import.append(helper.make_opsetid("local", 1))
    return m


# ---------------------------------------------------------------- the operator list

def test_tensorrt_modules_import_light():
    code = ("import sys, cunet_edge.export.tensorrt, cunet_edge.export.torch_tensorrt, cunet_edge.export.trt_compat, "
            "cunet_edge.runtimes.tensorrt_runner, cunet_edge.runtimes.torch_tensorrt_runner\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not set(mods) & {"torch", "onnx", "onnxruntime", "tensorrt", "torch_tensorrt"}


def test_op_list_loads_with_its_source():
    table = load_op_list()
    assert table["source"].startswith("https://github.com/onnx/onnx-tensorrt/")
    assert table["tensorrt_version"].startswith("10.") and table["retrieved"]
    assert {"Conv", "InstanceNormalization", "Resize", "QuantizeLinear", "DequantizeLinear"} <= set(table["ops"])
    assert "restrictions" in table["ops"]["Resize"] and "zero point" in table["ops"]["DequantizeLinear"]["restrictions"]
    assert "Unique" in table["unsupported"] and not set(table["unsupported"]) & set(table["ops"])


def test_every_op_of_the_golden_unrolled_model_is_supported():
    ops = json.loads(GOLDEN.read_text())
    table = load_op_list()["ops"]
    assert [op for op in ops if op not in table] == []


# ---------------------------------------------------------------- compatibility check

def test_clean_model_passes_and_reports_ops_and_restrictions(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_clean_model(), path)
    report = check_tensorrt_compat(path)
    assert report["ok"] and report["problems"] == []
    assert report["ops"] == {"Add": 1, "Cast": 1, "Conv": 1, "Mul": 1, "Reshape": 1, "Sigmoid": 1}
    assert report["source"] == load_op_list()["source"]
    assert check_tensorrt_compat(_clean_model())["ok"]  # a ModelProto works as well as a path


@pytest.mark.parametrize("model, op", [
    (_loop_model(), "Loop"), (_if_model(), "If"),
    (_single_op("FusedGemm", "com.microsoft"), "com.microsoft::FusedGemm"), (_single_op("Unique"), "Unique"),
    (_single_op("NotAnOnnxOp"), "NotAnOnnxOp"), (_function_model(), "Unique"),
])
def test_refused_ops_are_named(model, op):
    report = check_tensorrt_compat(model)
    assert not report["ok"]
    assert any(p.startswith(op + " ") for p in report["problems"]), report["problems"]
    assert all("\n" not in p for p in report["problems"])


def test_control_flow_is_refused_even_though_tensorrt_imports_it():
    assert "Loop" in load_op_list()["ops"]
    (problem,) = check_tensorrt_compat(_loop_model())["problems"]
    assert "static graph" in problem and "cunet-edge unroll" in problem


def test_dynamic_non_batch_dim_is_refused():
    report = check_tensorrt_compat(_model([helper.make_node("Relu", ["x"], ["eps"])],
                                          x_shape=("batch", 1, "height", 8)))
    want = "input 'x' dim 2 is dynamic (height): only the leading batch dim may be; export with a fixed image size"
    assert report["problems"] == [want]


def test_qdq_is_fine_with_a_zero_zero_point_only():
    assert check_tensorrt_compat(_qdq_model(0))["ok"]
    (problem,) = check_tensorrt_compat(_qdq_model(3))["problems"]
    assert "non-zero zero point" in problem and "'dq0'" in problem


def test_ops_newer_than_the_target_tensorrt_are_flagged():
    model = _single_op("RMSNormalization")
    assert check_tensorrt_compat(model)["ok"]
    assert check_tensorrt_compat(model, tensorrt_version="10.15.1.29")["ok"]
    assert check_tensorrt_compat(model, tensorrt_version="10.3.0.30")["problems"] == [
        "RMSNormalization needs TensorRT >= 10.15; this is TensorRT 10.3.0.30"]


def test_opset_outside_the_parsers_range_is_refused():
    (problem,) = check_tensorrt_compat(_model([helper.make_node("Relu", ["x"], ["eps"])], opset=8))["problems"]
    assert problem.startswith("opset 8 is outside the range")


def test_opset_newer_than_an_old_tensorrt_documents_is_a_note():
    model = _model([helper.make_node("Relu", ["x"], ["eps"])], opset=18)
    report = check_tensorrt_compat(model, tensorrt_version="8.5.2.2")
    want = ("opset 18 is newer than the opset 17 TensorRT 8.5.2.2's parser documents: ops whose definition changed "
            "since may fail to parse")
    assert report["ok"] and report["notes"] == [want]
    assert check_tensorrt_compat(model, tensorrt_version="10.3.0")["notes"] == []


def test_unreadable_onnx_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_tensorrt_compat(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(ConfigError, match="not a readable ONNX model"):
        check_tensorrt_compat(tmp_path / "junk.onnx")


# ---------------------------------------------------------------- config, typing rules, trtexec

def test_engine_config_round_trips_and_validates():
    cfg = EngineConfig(timing_cache="tc.bin", dla_core=0, opt_batch=4)
    assert from_dict(EngineConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key workspace"):
        from_dict(EngineConfig, {"workspace": 10})
    with pytest.raises(ConfigError, match="min_batch 8 is larger than max_batch 4"):
        EngineConfig(min_batch=8, max_batch=4)
    with pytest.raises(ConfigError, match="builder_precision 'int8'"):
        EngineConfig(builder_precision="int8")
    with pytest.raises(ConfigError, match="opt batch 32 is outside"):
        EngineConfig().batch_range(32)
    assert EngineConfig().batch_range(4) == (1, 4, 16)


@pytest.mark.parametrize("version, cfg, strong", [
    ("10.3.0.30", EngineConfig(), True), ("11.2.0", EngineConfig(), True), ("8.5.2.2", EngineConfig(), False),
    ("9.3.0", EngineConfig(), False), ("10.3.0", EngineConfig(dla_core=0), False),
    ("10.3.0", EngineConfig(builder_precision="fp16"), False),
])
def test_strong_typing_rules(version, cfg, strong):
    assert uses_strong_typing(version, cfg) is strong


def test_unsupported_typing_requests_are_refused():
    with pytest.raises(ConfigError, match="TensorRT 8.4.1 is too old"):
        uses_strong_typing("8.4.1", EngineConfig())
    with pytest.raises(ConfigError, match="has no precision flags"):
        uses_strong_typing("11.0.0", EngineConfig(builder_precision="fp16"))
    with pytest.raises(ConfigError, match="DLA runs FP16 and INT8 layers only"):
        builder_flags("fp32", EngineConfig(dla_core=0))
    assert builder_flags("int8", EngineConfig(builder_precision="fp16")) == ("int8", "fp16")


def _cmd(version, cfg=None, precision="fp32", signature=DYN_SIG, batch=4):
    return trtexec_command("m.onnx", cfg or EngineConfig(), precision=precision, signature=signature,
                           tensorrt_version=version, engine_file="engine.plan", batch=batch)


def test_trtexec_tensorrt_8_5_uses_precision_flags_and_mib_pool():
    assert _cmd("8.5.2.2", precision="fp16", signature=STATIC_SIG) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=engine.plan", "--fp16", "--memPoolSize=workspace:1024"]
    assert _cmd("8.5.2.2", precision="int8", signature=STATIC_SIG)[3] == "--int8"
    assert _cmd("8.5.2.2", signature=STATIC_SIG) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=engine.plan", "--memPoolSize=workspace:1024"]


def test_trtexec_tensorrt_10_is_strongly_typed_with_a_dynamic_batch_profile():
    cfg = EngineConfig(workspace_mb=2048, timing_cache="/cache/tc.bin")
    assert _cmd("10.3.0.30", cfg, precision="fp16") == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=engine.plan", "--stronglyTyped",
        "--minShapes=x:1x1x16x16,t:1", "--optShapes=x:4x1x16x16,t:4", "--maxShapes=x:16x1x16x16,t:16",
        "--memPoolSize=workspace:2048M", "--timingCacheFile=/cache/tc.bin"]
    assert _cmd("10.3.0.30", EngineConfig(min_batch=2, opt_batch=8, max_batch=8))[4:7] == [
        "--minShapes=x:2x1x16x16,t:2", "--optShapes=x:8x1x16x16,t:8", "--maxShapes=x:8x1x16x16,t:8"]


def test_trtexec_dla_builds_use_flags_and_gpu_fallback():
    assert _cmd("8.5.2.2", EngineConfig(dla_core=0), precision="fp16", signature=STATIC_SIG) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=engine.plan", "--fp16", "--memPoolSize=workspace:1024",
        "--useDLACore=0", "--allowGPUFallback"]
    assert _cmd("10.3.0", EngineConfig(dla_core=1, gpu_fallback=False), precision="int8", signature=STATIC_SIG) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=engine.plan", "--int8", "--memPoolSize=workspace:1024M",
        "--useDLACore=1"]
    with pytest.raises(ConfigError, match="DLA runs FP16 and INT8"):
        _cmd("10.3.0", EngineConfig(dla_core=0), precision="fp32")


def test_trtexec_command_quotes_as_one_shell_line():
    cmd = trtexec_command("/data/my model.onnx", EngineConfig(), precision="fp32", signature=DYN_SIG,
                          tensorrt_version="10.3.0", engine_file="engine.plan", batch=1)
    line = shlex.join(cmd)
    assert "\n" not in line and shlex.split(line) == cmd and "'--onnx=/data/my model.onnx'" in line


# ---------------------------------------------------------------- engine location

ORIN = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt_version": "10.3.0"}


def test_engine_location_matches():
    check_engine_location(ORIN | {"kind": "tensorrt-engine"}, dict(ORIN))


@pytest.mark.parametrize("here", [
    {"gpu_name": "NVIDIA H100", "compute_capability": "9.0", "tensorrt_version": "10.3.0"},
    {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt_version": "10.7.0"},
])
def test_engine_location_mismatch_says_where_and_how_to_rebuild(here):
    manifest = ORIN | {"parent": {"path": "/runs/onnx", "kind": "onnx"}}
    with pytest.raises(ArtifactError) as exc:
        check_engine_location(manifest, here, path="/runs/engine")
    assert str(exc.value) == (
        f"engine /runs/engine was built on Orin (sm 8.7, TensorRT 10.3.0); this machine has {here['gpu_name']} "
        f"(sm {here['compute_capability']}, TensorRT {here['tensorrt_version']}): "
        "rebuild it here with cunet-edge export /runs/onnx --format tensorrt --out <new-dir>")


# ---------------------------------------------------------------- stages and runners without TensorRT

def _onnx_artifact(path, proto, *, kind="onnx", precision="fp32"):
    with ArtifactWriter(path, kind=kind, stage="export", config={}) as w:
        onnx.save(proto, str(w.dir / "model.onnx"))
        (w.dir / "config.json").write_text("{}\n")
        w.manifest.update(precision=precision, opset=18, dynamic_batch=True, batch=4, signature=DYN_SIG,
                          solver=SOLVER)
    return w.artifact


def _fake_artifact(path, kind, payload):
    with ArtifactWriter(path, kind=kind, stage="export", config={}) as w:
        (w.dir / payload).write_bytes(b"not an engine")
        w.manifest.update(ORIN, precision="fp16", signature=DYN_SIG, solver=SOLVER)
    return w.artifact


@needs_no_tensorrt
def test_build_engine_without_tensorrt_is_one_line(tmp_path):
    src = _onnx_artifact(tmp_path / "onnx", _clean_model())
    with pytest.raises(BackendMissingError) as exc:
        build_engine(src.path, EngineConfig(), tmp_path / "engine")
    assert str(exc.value).startswith("tensorrt is not installed: pip install tensorrt")
    assert "\n" not in str(exc.value) and not (tmp_path / "engine").exists()


def test_build_engine_checks_the_graph_before_anything_else(tmp_path):
    src = _onnx_artifact(tmp_path / "onnx", _loop_model())
    with pytest.raises(ConfigError, match=r"model.onnx cannot be built with TensorRT: Loop is control flow"):
        build_engine(src.path, EngineConfig(), tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


def test_build_engine_refuses_other_kinds(tmp_path):
    engine = _fake_artifact(tmp_path / "engine", "tensorrt-engine", "engine.plan")
    with pytest.raises(ArtifactError, match="this command needs one of: onnx, onnx-int8"):
        build_engine(engine.path, EngineConfig(), tmp_path / "again")


@needs_no_tensorrt
def test_tensorrt_runner_without_tensorrt_is_one_line(tmp_path):
    engine = _fake_artifact(tmp_path / "engine", "tensorrt-engine", "engine.plan")
    runner = open_runner(engine.path, "tensorrt")
    assert runner.describe()["runtime"] == "tensorrt" and runner.precision == "fp16"
    with pytest.raises(BackendMissingError, match=r"^tensorrt is not installed: pip install tensorrt"), runner:
        pass


def test_tensorrt_runtime_refuses_an_onnx_artifact(tmp_path):
    src = _onnx_artifact(tmp_path / "onnx", _clean_model())
    with pytest.raises(ArtifactError, match="use --runtime onnxruntime"):
        open_runner(src.path, "tensorrt")


@pytest.mark.skipif(HAVE_TORCH_TRT, reason="torch-tensorrt is installed here")
def test_torch_tensorrt_without_the_package_is_one_line(tmp_path, unrolled):
    from cunet_edge.export.torch_tensorrt import (
        TorchTensorRTConfig,
        compile_torch_tensorrt,
    )

    with pytest.raises(BackendMissingError, match=r"^torch-tensorrt is not installed: pip install torch-tensorrt"):
        compile_torch_tensorrt(unrolled.path, TorchTensorRTConfig(), tmp_path / "ttrt")
    assert not (tmp_path / "ttrt").exists()
    program = _fake_artifact(tmp_path / "prog", "torch-tensorrt", "model.ep")
    runner = open_runner(program.path, "torch-tensorrt")
    with pytest.raises(BackendMissingError, match=r"^torch-tensorrt is not installed"), runner:
        pass


# ---------------------------------------------------------------- a real exported unrolled model

@pytest.fixture(scope="module")
def unrolled(tmp_path_factory):
    """An unrolled tiny continuous U-Net (untrained, seeded): the artifact the export stages start from."""
    import torch
    from conftest import TINY

    from cunet_edge.checkpoint import save_checkpoint
    from cunet_edge.models import build_model
    from cunet_edge.training import train_config_from_dict
    from cunet_edge.models.explicit import nfe_per_step
    from cunet_edge.records import solver_record

    data = json.loads(json.dumps(TINY))
    data["model"]["solver"] = {"method": "euler", "steps": 1, "unrolled": True}
    cfg = train_config_from_dict(data)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    return save_checkpoint(tmp_path_factory.mktemp("unrolled") / "unrolled", cfg, model.state_dict(), step=0,
                           train_state=None, kind="unrolled", stage="unroll",
                           extra={"solver": solver_record("euler", 1, nfe_per_step("euler"), model.num_ode_blocks)})


@pytest.fixture(scope="module")
def exported(tiny_onnx):
    """The session's exported unrolled model (tests/conftest.py): an ONNX export costs seconds, so it is shared."""
    from cunet_edge.artifact import Artifact

    return Artifact.load(tiny_onnx)


def test_exported_unrolled_model_is_tensorrt_compatible(exported):
    report = check_tensorrt_compat(exported.file("model.onnx"), tensorrt_version="10.3.0")
    assert report["ok"], report["problems"]
    assert "Conv" in report["ops"] and not set(report["ops"]) & {"Loop", "If", "Scan"}


@needs_no_tensorrt
def test_build_engine_from_a_real_export_needs_tensorrt(exported, tmp_path):
    with pytest.raises(BackendMissingError, match="^tensorrt is not installed"):
        build_engine(exported.path, EngineConfig(), tmp_path / "engine")


# ---------------------------------------------------------------- on a GPU with TensorRT (skipped here)

def _gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT")
def test_engine_builds_runs_and_matches_onnxruntime(exported, tmp_path):
    pytest.importorskip("tensorrt", reason="needs TensorRT")
    _gpu()
    engine = build_engine(exported.path, EngineConfig(max_batch=8, timing_cache=str(tmp_path / "tc.bin")),
                          tmp_path / "engine")
    assert engine.kind == "tensorrt-engine" and engine.manifest["solver"] == exported.manifest["solver"]
    assert (tmp_path / "tc.bin").is_file() and engine.file("trtexec.sh").read_text().count("trtexec") == 1
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((3, 1, 8, 8)).astype(np.float32), "t": np.array([0, 500, 999])}
    with open_runner(exported.path, "onnxruntime") as ort_runner:
        ref = ort_runner.infer(feed)["eps"]
    with open_runner(engine.path, "tensorrt") as runner:
        out = runner.infer(feed)["eps"]
        call = runner.bind(feed)
        call()
        runner.synchronize()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-2


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TORCH_TRT, reason="needs torch-tensorrt")
def test_torch_tensorrt_compiles_and_runs(unrolled, tmp_path):
    pytest.importorskip("torch_tensorrt", reason="needs torch-tensorrt")
    _gpu()
    from cunet_edge.export.torch_tensorrt import (
        TorchTensorRTConfig,
        compile_torch_tensorrt,
    )

    art = compile_torch_tensorrt(unrolled.path, TorchTensorRTConfig(batch=2), tmp_path / "ttrt")
    assert art.kind == "torch-tensorrt" and art.manifest["solver"] == unrolled.manifest["solver"]
    feed = {"x": np.zeros((2, 1, 8, 8), np.float32), "t": np.array([1, 2])}
    with open_runner(art.path, "torch-tensorrt") as runner:
        assert runner.infer(feed)["eps"].shape == (2, 1, 8, 8)
