"""The bundle's CUDA bindings (devices/bundle/cudamem.py): which one run.py takes, and the ctypes binding run for
real against a stand-in libcudart.so built with gcc (tests/cudart_standin.c: the runtime API's C signatures over
host memory, with its error codes), so signatures, error checks and copy directions are exercised. TensorRT
itself is the surface-derived fake (tests/trt_surface.py); there is no GPU here."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
BUNDLE_DIR = HERE.parent / "devices" / "bundle"
needs_gcc = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc to build the stand-in libcudart.so")


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The stand-in libcudart.so, and a handle on it (dlopen of the same path shares its state)."""
    so = tmp_path_factory.mktemp("cudart") / "libcudart.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(so),
                    str(HERE / "cudart_standin.c")], check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(so))
    lib.standin_live.restype = lib.standin_calls.restype = ctypes.c_int
    return so, lib


@pytest.fixture
def cudamem(monkeypatch):
    """devices/bundle/cudamem.py as the bundle imports it (a fresh copy per test)."""
    monkeypatch.setattr(sys, "path", [str(BUNDLE_DIR)] + sys.path)
    monkeypatch.delitem(sys.modules, "cudamem", raising=False)
    import cudamem

    return cudamem


def _no_cuda_python(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # `import cuda...` raises ImportError, as when not installed


@needs_gcc
def test_ctypes_binding_copies_both_ways_checks_every_call_and_frees_all(cudamem, standin, monkeypatch):
    so, lib = standin
    live0 = lib.standin_live()
    cu = cudamem.Ctypes(str(so))
    assert cu.describe() == f"ctypes {so}" and cu.stream_handle() != 0
    src = np.arange(10, dtype=np.float32)
    ptr = cu.alloc(src.nbytes)
    cu.to_device(ptr, src)
    back = np.zeros_like(src)
    cu.to_host(back, ptr)
    cu.synchronize()
    np.testing.assert_array_equal(back, src)
    # The stand-in refuses a copy whose pointers do not match its direction: HostToDevice into host memory.
    with pytest.raises(cudamem.CudaError, match=r"cudaMemcpyAsync failed: error 21 \(invalid copy direction"):
        cu.to_device(back.ctypes.data, src)
    with pytest.raises(cudamem.CudaError, match=r"cudaMemcpyAsync failed: error 21"):
        cu.to_host(back, back.ctypes.data)  # DeviceToHost from host memory
    with pytest.raises(cudamem.CudaError, match=r"cudaFree failed: error 17 \(invalid device pointer\)"):
        cu.free(back.ctypes.data)
    monkeypatch.setenv("STANDIN_CUDART_MAX_BYTES", "64")
    with pytest.raises(cudamem.CudaError, match=r"cudaMalloc failed: error 2 \(out of memory\)"):
        cu.alloc(65)
    # A 64-bit address survives the round trip through c_void_p (a c_int restype would truncate it).
    big = cu.alloc(64)
    assert big == ctypes.c_void_p(big).value and big > 0
    assert lib.standin_live() == live0 + 3  # two buffers and the stream
    cu.close()
    assert lib.standin_live() == live0 and cu.stream is None


def test_a_library_that_is_not_the_cuda_runtime_is_refused(cudamem):
    libc = ctypes.util.find_library("c")
    with pytest.raises(cudamem.Unavailable, match="is not the CUDA runtime"):
        cudamem.Ctypes(libc)


def test_torch_binding_stages_bytes_through_tensors(cudamem):
    """The torch binding's copies on a CPU device (no GPU here): the same byte-tensor code a CUDA device runs."""
    cu = cudamem.Torch(device="cpu")
    src = np.arange(6, dtype=np.int64).reshape(2, 3)
    ptr = cu.alloc(src.nbytes + 8)  # buffers may be larger than the array
    cu.to_device(ptr, src)
    back = np.zeros_like(src)
    cu.to_host(back, ptr)
    np.testing.assert_array_equal(back, src)
    assert cu.stream_handle() == 0 and cu.describe().startswith("torch ")
    cu.free(ptr)
    assert cu.tensors == {}


@needs_gcc
def test_binding_order_and_the_line_when_none_works(cudamem, standin, monkeypatch, tmp_path):
    so, _ = standin
    # cuda-python present: it goes first.
    runtime = tmp_path / "cuda_rt.py"
    runtime.write_text("def cudaStreamCreate(): return (0, 5)\ndef cudaStreamDestroy(s): return (0,)\n")
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("cuda.bindings.runtime", runtime)
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.__path__, bindings.__path__, bindings.__version__ = [], [], "12.9.0"
    cuda.bindings, bindings.runtime = bindings, rt
    for name, mod in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, mod)
    first = cudamem.open_cuda("auto", str(so))
    assert first.name == "cuda-python" and first.describe() == "cuda-python 12.9.0" and first.stream_handle() == 5
    first.close()
    # Without it: torch (installed here, but it sees no GPU), then ctypes.
    _no_cuda_python(monkeypatch)
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: torch would be taken before ctypes")
    got = cudamem.open_cuda("auto", str(so))
    assert got.name == "ctypes" and got.describe() == f"ctypes {so}"
    got.close()
    assert cudamem.open_cuda("ctypes", str(so)).name == "ctypes"  # asked for by name
    # None works: one line naming each binding tried and why.
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(cudamem.Unavailable) as err:
        cudamem.open_cuda("auto", str(tmp_path / "nope.so"))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("no CUDA binding for the TensorRT backend works here (tried cuda-python: not installed "
                          "(pip3 install cuda-python); torch: not installed; ctypes: ")
    assert f"{tmp_path / 'nope.so'} could not be loaded)" in msg and msg.endswith("use --backend onnxruntime")
    with pytest.raises(cudamem.Unavailable, match=r"^no CUDA binding .*\(tried torch: not installed\)"):
        cudamem.open_cuda("torch")


# ---------------------------------------------------------------- run.py on the ctypes binding, end to end

FAKE_ENGINE = """
import os, sys
sys.path.insert(0, os.environ["FAKE_TRT_TESTS"])
import trt_surface
sys.modules["tensorrt"] = trt_surface.engine_runtime(os.environ["FAKE_TRT_VERSION"])
"""
# The board: no torch, no cunet_edge (as tests/test_deploy.py's BOARD), and here no cuda-python either.
BOARD = ("import sys; sys.modules['torch'] = None; sys.modules['cunet_edge'] = None; sys.modules['cuda'] = None; "
         "import runpy; sys.argv = [{0!r}] + sys.argv[1:]; runpy.run_path({0!r}, run_name='__main__')")


@pytest.fixture(scope="module")
def engine_bundle(tiny_onnx, tmp_path_factory):
    from cunet_edge.devices.deploy import DeployConfig, deploy

    root = tmp_path_factory.mktemp("cudab")
    path = deploy(tiny_onnx, DeployConfig(device="jetson-orin-nano-8gb", selfcheck_n=2, tarball=False),
                  root / "b").path
    (path / "model.plan").write_bytes(b"PLAN")
    (root / "fake").mkdir()
    (root / "fake" / "tensorrt.py").write_text(FAKE_ENGINE)
    return path, root / "fake"


def _board(bundle, fake, version, *args, **env):
    env = {**os.environ, "PYTHONPATH": str(fake), "FAKE_TRT_VERSION": version, "FAKE_TRT_TESTS": str(HERE), **env}
    return subprocess.run([sys.executable, "-c", BOARD.format("run.py"), *map(str, args)], cwd=bundle, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@needs_gcc
@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_run_py_benches_tensorrt_through_libcudart_and_records_the_binding(engine_bundle, standin, tmp_path, version):
    bundle, fake = engine_bundle
    so, _ = standin
    out = tmp_path / "r.json"
    proc = _board(bundle, fake, version, "bench", "--backend", "tensorrt", "--cudart", so, "--json", out,
                  "--warmup", 1, "--min-iters", 3, "--min-seconds", 0, "--steps", 2, "--image-reps", 1)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["runtime"] == "tensorrt" and result["runtime_version"] == version
    assert result["cuda_binding"] == f"ctypes {so}" and result["p50_ms"] > 0


@needs_gcc
def test_run_py_names_a_cuda_failure_in_one_line(engine_bundle, standin):
    bundle, fake = engine_bundle
    so, _ = standin
    proc = _board(bundle, fake, "10.3.0", "sample", "--backend", "tensorrt", "--cuda", "ctypes", "--cudart", so,
                  "--n", 1, "--steps", 1, STANDIN_CUDART_MAX_BYTES="4")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ctypes: cudaMalloc failed: error 2 (out of memory)")
    proc = _board(bundle, fake, "10.3.0", "selfcheck", "--backend", "tensorrt", "--cudart", bundle / "missing.so")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: no CUDA binding for the TensorRT backend works here (tried cuda-python: "
                                  "not installed")
    assert "torch: not installed; ctypes: " in proc.stderr and "missing.so could not be loaded" in proc.stderr
