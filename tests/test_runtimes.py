"""One runner interface over every backend, and the numpy sampler that drives any of them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from cunet_edge.runtimes.base import open_runner

from cunet_edge.errors import ArtifactError, ConfigError


@pytest.fixture(params=["torch", "onnxruntime"])
def runner_target(request, tiny_unrolled, tiny_onnx):
    return (tiny_unrolled if request.param == "torch" else tiny_onnx), request.param


def _feed(b=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((b, 1, 8, 8)).astype(np.float32), "t": np.arange(b, dtype=np.int64) * 400}


def test_runner_contract(runner_target):
    path, runtime = runner_target
    with open_runner(path, runtime) as r:
        out = r.infer(_feed())
        assert set(out) == {"eps"} and out["eps"].shape == (2, 1, 8, 8) and out["eps"].dtype == np.float32
        assert np.array_equal(r.infer(_feed())["eps"], out["eps"])  # deterministic
        r.bind(_feed(3))()
        assert r.describe()["runtime"] == runtime and r.static_batch() is None
        bad = [({"x": _feed()["x"]}, "takes inputs ['t', 'x'], got ['x']"),
               ({"x": _feed()["x"].astype(np.float64), "t": _feed()["t"]}, "input 'x' must be float32, got float64"),
               ({"x": np.zeros((2, 1, 4, 4), np.float32), "t": _feed()["t"]}, "must have shape (B, 1, 8, 8), got (2, 1, 4, 4)"),
               ({"x": _feed(3)["x"], "t": _feed()["t"]}, "inputs disagree on the batch size: [2, 3]")]
        for feed, msg in bad:
            with pytest.raises(ConfigError) as exc:
                r.infer(feed)
            assert msg in str(exc.value)


def test_open_runner_refusals(tiny_unrolled, tiny_onnx):
    with pytest.raises(ConfigError, match="unknown runtime 'tflite'; valid runtimes: torch, onnxruntime, tensorrt"):
        open_runner(tiny_onnx, "tflite")
    with pytest.raises(ArtifactError, match=r"kind 'onnx'; runtime 'torch' runs .* \(use --runtime onnxruntime\)"):
        open_runner(tiny_onnx, "torch")
    with pytest.raises(ConfigError, match=r"solver baked in at unroll time \(euler x3\); it cannot run midpoint x3"):
        open_runner(tiny_onnx, "onnxruntime", solver="midpoint")
    open_runner(tiny_onnx, "onnxruntime", solver="euler", solver_steps=3)  # the baked settings are fine
    with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
        with open_runner(tiny_onnx, "onnxruntime", provider="cuda"):
            pass
    for precision in ("fp16", "tf32"):
        with pytest.raises(ConfigError, match=f"{precision} in PyTorch needs CUDA"):
            open_runner(tiny_unrolled, "torch", device="cpu", precision=precision)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 1.0)])
def test_numpy_sampler_equals_torch_sampler(runner_target, tiny_unrolled, sampler, eta):
    """Same model, same noise: the numpy sampler over any runner draws the torch sampler's images.

    The samplers alone, on a denoiser both compute exactly, are pinned in tests/test_samplers.py.
    """
    from cunet_edge.runtimes.numpy_sampler import SAMPLERS as NP_SAMPLERS

    from cunet_edge.checkpoint import load_checkpoint
    from cunet_edge.diffusion import SAMPLERS, alphas_cumprod, sampling_timesteps

    path, runtime = runner_target
    model = load_checkpoint(tiny_unrolled).model  # the torch model the ONNX file was exported from
    with open_runner(path, runtime) as r:
        cfg = r.train_config().diffusion
        x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
        abar, ts = alphas_cumprod(cfg), sampling_timesteps(cfg, 6)
        g_np = torch.Generator().manual_seed(4)
        g_pt = torch.Generator().manual_seed(4)
        with torch.no_grad():
            ref = SAMPLERS[sampler](model, x.clone(), abar, ts, eta=eta, clip=cfg.clip_denoised,
                                    noise=lambda s: torch.randn(s, generator=g_pt)).numpy()
        ours = NP_SAMPLERS[sampler](r.eps_fn(), x.numpy().copy(), abar, ts, eta=eta, clip=cfg.clip_denoised,
                                    noise=lambda s: torch.randn(s, generator=g_np).numpy())
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4 if runtime == "onnxruntime" else 1e-5)
    assert np.abs(ref).max() > 0.1


def test_numpy_sample_is_seeded_and_batched(tiny_onnx):
    from cunet_edge.runtimes.numpy_sampler import sample

    from cunet_edge.diffusion import alphas_cumprod

    with open_runner(tiny_onnx, "onnxruntime") as r:
        abar = alphas_cumprod(r.train_config().diffusion)
        a = sample(r.eps_fn(), 5, (1, 8, 8), abar, steps=3, seed=1, batch_size=2)
        b = sample(r.eps_fn(), 5, (1, 8, 8), abar, steps=3, seed=1, batch_size=2)
        c = sample(r.eps_fn(), 5, (1, 8, 8), abar, steps=3, seed=2, batch_size=2)
    assert a.shape == (5, 1, 8, 8) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_sampling_through_a_runner_uses_the_torch_samplers_noise(tiny_onnx, tiny_unrolled):
    """An exported model sampled on its runtime draws the images its PyTorch parent draws from the same seed."""
    from cunet_edge.checkpoint import load_checkpoint
    from cunet_edge.sampling import SampleConfig, generate, generate_with_runner

    cfg = SampleConfig(n=5, steps=4, seed=7, batch_size=2, sampler="ddpm")
    ref = generate(load_checkpoint(tiny_unrolled), cfg)
    with open_runner(tiny_onnx, "onnxruntime") as r:
        ours = generate_with_runner(r, cfg)
    assert ours.shape == ref.shape == (5, 1, 8, 8)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-4)


def test_evaluate_an_onnx_artifact_on_onnxruntime(tiny_onnx, tiny_unrolled, tmp_path):
    import json

    from cli_helpers import run

    for art, name in ((tiny_onnx, "o.json"), (tiny_unrolled, "u.json")):
        res = run("evaluate", art, "--n", 20, "--steps", 3, "--json", tmp_path / name)
        assert res.exit_code == 0, res.output
    o, u = (json.loads((tmp_path / n).read_text()) for n in ("o.json", "u.json"))
    assert o["runtime"] == "onnxruntime" and u["runtime"] == "torch"
    assert o["fid"] == pytest.approx(u["fid"], rel=1e-3)
    assert json.loads((tiny_onnx / "metrics.json").read_text())["evaluate"]["fid"] == o["fid"]


def test_onnx_with_an_unexpected_signature_is_refused(tiny_onnx, tmp_path):
    """A well-formed artifact whose graph does not take (x, t) → eps: one clear error, before any run."""
    import shutil

    from cunet_edge.artifact import Artifact, ArtifactWriter

    src = Artifact.load(tiny_onnx)
    model = onnx.load(str(src.file("model.onnx")))
    model.graph.input[1].name = "timestep"
    for node in model.graph.node:
        node.input[:] = ["timestep" if i == "t" else i for i in node.input]
    with ArtifactWriter(tmp_path / "renamed", kind="onnx", stage="export", config={}) as w:
        onnx.save(model, str(w.dir / "model.onnx"))
        shutil.copy(src.file("config.json"), w.dir / "config.json")
        w.manifest.update({k: src.manifest[k] for k in ("signature", "precision", "solver")})
    with pytest.raises(ConfigError, match="has inputs .*'timestep'.* its manifest promises inputs"):
        with open_runner(tmp_path / "renamed", "onnxruntime"):
            pass


@pytest.mark.gpu
def test_torch_runner_on_cuda_fp16_and_cuda_graphs(tiny_unrolled):
    """Every CUDA mode agrees with the CPU; a captured graph is replayed with each call's own inputs."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    feeds = [_feed(4, seed=0), {**_feed(4, seed=1), "t": np.array([999, 700, 50, 0])}]
    with open_runner(tiny_unrolled, "torch", device="cpu") as ref:
        wants = [ref.infer(f)["eps"] for f in feeds]
    for opts in ({"precision": "fp32"}, {"precision": "tf32"}, {"precision": "fp16"},
                 {"precision": "fp32", "cuda_graphs": True}, {"precision": "fp16", "cuda_graphs": True}):
        with open_runner(tiny_unrolled, "torch", device="cuda", **opts) as r:
            gots = [r.infer(f)["eps"] for f in feeds]
            r.bind(feeds[0])()
            r.synchronize()
            assert not opts.get("cuda_graphs") or len(r._graphs) == 1  # one shape, one graph, replayed
        tol = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 2e-2}[opts["precision"]]
        for got, want in zip(gots, wants):
            assert np.linalg.norm(got - want) / np.linalg.norm(want) <= tol, opts


def test_onnxruntime_tensorrt_provider_options(tiny_onnx, tmp_path):
    """The TensorRT provider's options (FP16/INT8 flag of the artifact's precision, engine cache): what the session
    is given. The TensorRT EP itself is not in this machine's onnxruntime, so opening is refused in one line."""
    import json
    import shutil

    import onnxruntime as ort

    from cunet_edge.benchmark import BenchConfig, bench, parse_target

    cache = tmp_path / "trt-cache"
    r = open_runner(tiny_onnx, "onnxruntime", provider="tensorrt", trt_cache=str(cache))
    want = {"trt_fp16_enable": False, "trt_int8_enable": False, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache.resolve())}
    assert r.providers() == [("TensorrtExecutionProvider", want), "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert r.describe()["tensorrt_options"] == want
    for precision in ("fp16", "int8"):  # the flag follows the artifact's precision
        copy = shutil.copytree(tiny_onnx, tmp_path / precision)
        m = json.loads((copy / "manifest.json").read_text())
        (copy / "manifest.json").write_text(json.dumps(m | {"precision": precision}))
        opts = open_runner(copy, "onnxruntime", provider="tensorrt").tensorrt_options()
        assert opts == {"trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8"}
    assert "TensorrtExecutionProvider" not in ort.get_available_providers()
    with pytest.raises(ConfigError, match="ONNX Runtime here has no TensorrtExecutionProvider"):
        with r:
            pass
    with pytest.raises(ConfigError, match="needs --provider tensorrt, not cpu"):
        open_runner(tiny_onnx, "onnxruntime", trt_cache=str(cache))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        open_runner(tiny_onnx, "onnxruntime", provider="tensorrt", trt_cache=str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="--trt-cache is for onnxruntime targets on the TensorRT provider"):
        bench([parse_target(str(tiny_onnx))], BenchConfig(trt_cache=str(cache)), progress=False, record=False)
    assert not cache.exists()
