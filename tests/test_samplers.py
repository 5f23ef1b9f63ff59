"""The torch samplers (cunet_edge.diffusion) and their numpy twins (runtimes/numpy_sampler.py), side by side.

Both take the same arguments — denoiser, start x, the schedule arrays ᾱ and timesteps, then
eta, noise, clip, callback — and with the same denoiser, starting noise and per-step noise they
must draw the same float32 images. The denoiser here uses only exact float32 arithmetic
(products, sums, a roll), so both families see bit-identical ε̂ and any difference is the
samplers'. tests/test_runtimes.py checks the same through real runners (ONNX Runtime, torch).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from cunet_edge import diffusion as pt
from cunet_edge.errors import ConfigError
from cunet_edge.runtimes import numpy_sampler as nps

T = 1000
SHAPE = (2, 1, 8, 8)
_rng = np.random.default_rng(0)
P = (np.linspace(-0.7, 0.7, 64).reshape(SHAPE[1:]) * np.sign(_rng.standard_normal(SHAPE[1:]))).astype(np.float32)
W = (_rng.standard_normal(SHAPE[1:]) * 0.2).astype(np.float32)
V = (_rng.standard_normal(SHAPE[1:]) * 0.2).astype(np.float32)
# Per-timestep factors as float32 tables, looked up by t, so no float math happens on t itself.
_abar = pt.alphas_cumprod(pt.DiffusionConfig(timesteps=T))
A, C = np.sqrt(_abar).astype(np.float32), (1 / np.sqrt(1 - _abar)).astype(np.float32)


def eps_np(x, t):
    """ε̂ of a data distribution near the image P, nudged by x itself: (x − √ᾱ_t x̂0(x)) / √(1 − ᾱ_t)."""
    x0 = P + (x * W + np.roll(x, 1, axis=-1) * V)
    return (x - A[t].reshape(-1, 1, 1, 1) * x0) * C[t].reshape(-1, 1, 1, 1)


def eps_pt(x, t):
    p, w, v, a, c = (torch.from_numpy(z) for z in (P, W, V, A, C))
    x0 = p + (x * w + torch.roll(x, 1, dims=-1) * v)
    return (x - a[t].view(-1, 1, 1, 1) * x0) * c[t].view(-1, 1, 1, 1)


def noise_sources(seed):
    """The same standard normal float32 draws, in the same order, as a numpy and as a torch noise function."""
    a, b = np.random.default_rng(seed), np.random.default_rng(seed)
    return (lambda s: a.standard_normal(s, dtype=np.float32),
            lambda s: torch.from_numpy(b.standard_normal(s, dtype=np.float32)))


def run_both(name, steps, *, eta=None, schedule="linear", clip=True, seed=0, prediction="epsilon"):
    """Run the torch and the numpy sampler `name` alike; return their images and (i, t, x) callback traces."""
    cfg = pt.DiffusionConfig(timesteps=T, schedule=schedule)
    abar, ts = pt.alphas_cumprod(cfg), pt.sampling_timesteps(cfg, steps)
    np.testing.assert_array_equal(ts, nps.sampling_timesteps(len(abar), steps))
    x = np.random.default_rng(100 + seed).standard_normal(SHAPE, dtype=np.float32)
    n_np, n_pt = noise_sources(seed)
    kwargs = ({} if eta is None else {"eta": eta}) | {"prediction": prediction}
    tr_np, tr_pt = [], []
    out_np = nps.SAMPLERS[name](eps_np, x.copy(), abar, ts, noise=n_np, clip=clip,
                                callback=lambda i, t, x: tr_np.append((i, t, x.copy())), **kwargs)
    with torch.no_grad():
        out_pt = pt.SAMPLERS[name](eps_pt, torch.from_numpy(x.copy()), abar, ts, noise=n_pt, clip=clip,
                                   callback=lambda i, t, x: tr_pt.append((i, t, x.numpy().copy())), **kwargs)
    return out_np, out_pt, tr_np, tr_pt


CASES = [("ddim", None), ("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0), ("ddpm", None), ("ddpm", 1.0)]


@pytest.mark.parametrize("steps", [1, 2, 7, 50, T])
@pytest.mark.parametrize("name,eta", CASES)
def test_torch_and_numpy_samplers_draw_the_same_images(name, eta, steps):
    out_np, out_pt, tr_np, tr_pt = run_both(name, steps, eta=eta)
    assert isinstance(out_pt, torch.Tensor) and out_pt.dtype == torch.float32
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, out_pt.numpy(), rtol=0, atol=1e-6)
    assert np.abs(out_np).max() > 0.1  # not a trivially empty image
    # the same steps at the same timesteps, and the same x after every step
    assert [(i, t) for i, t, _ in tr_np] == [(i, t) for i, t, _ in tr_pt]
    assert [type(t) for _, t, _ in tr_np + tr_pt] == [int] * (2 * steps)
    assert len(tr_np) == steps and tr_np[0][1] == T - 1 and tr_np[-1][1] == (0 if steps > 1 else T - 1)
    np.testing.assert_allclose(np.stack([x for *_, x in tr_np]), np.stack([x for *_, x in tr_pt]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddim", 0.3), ("ddpm", 1.0)])
def test_twins_agree_on_either_schedule_with_or_without_clipping(name, eta, schedule, clip):
    out_np, out_pt, _, _ = run_both(name, 20, eta=eta, schedule=schedule, clip=clip, seed=1)
    np.testing.assert_allclose(out_np, out_pt.numpy(), rtol=0, atol=1e-5 if not clip else 1e-6)


@pytest.mark.parametrize("prediction", ["v", "sample"])
@pytest.mark.parametrize("clip", [(0.0, 1.0), False])
@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddim", 0.3), ("ddpm", 1.0)])
def test_twins_agree_for_v_and_x0_prediction_and_a_clip_range(name, eta, prediction, clip):
    """The same network output read as v or as x0 (not ε), with x̂0 clipped to [0, 1] or not."""
    out_np, out_pt, _, _ = run_both(name, 20, eta=eta, schedule="cosine", clip=clip, seed=2, prediction=prediction)
    np.testing.assert_allclose(out_np, out_pt.numpy(), rtol=0, atol=1e-5)
    assert np.abs(out_np).max() > 0.1


@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 1.0)])
def test_the_noise_source_is_asked_alike_and_eta_zero_asks_none(name, eta):
    cfg = pt.DiffusionConfig(timesteps=T)
    abar, ts = pt.alphas_cumprod(cfg), pt.sampling_timesteps(cfg, 5)
    asked = {"np": [], "pt": []}

    def noise(key, make):
        return lambda s: asked[key].append(tuple(s)) or make(s)

    x = np.zeros(SHAPE, np.float32)
    nps.SAMPLERS[name](eps_np, x, abar, ts, eta=eta, noise=noise("np", lambda s: np.zeros(s, np.float32)))
    pt.SAMPLERS[name](eps_pt, torch.from_numpy(x), abar, ts, eta=eta, noise=noise("pt", torch.zeros))
    assert asked["np"] == asked["pt"] == ([] if eta == 0.0 else [SHAPE] * (len(ts) - 1))


def test_default_noise_is_seeded():
    cfg = pt.DiffusionConfig(timesteps=T)
    abar, ts = pt.alphas_cumprod(cfg), pt.sampling_timesteps(cfg, 4)
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    a, b = (nps.sample_ddpm(eps_np, x.copy(), abar, ts) for _ in range(2))
    c, d = (pt.sample_ddpm(eps_pt, torch.from_numpy(x.copy()), abar, ts) for _ in range(2))
    assert np.array_equal(a, b) and torch.equal(c, d)


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", ["sample_ddpm", "sample_ddim", "sampling_timesteps", "sample"])
def test_the_twins_mirror_each_other_function_by_function(name):
    a, b = getattr(pt, name), getattr(nps, name)
    assert a.__doc__.splitlines()[0] == b.__doc__.splitlines()[0]
    if name.startswith("sample_"):
        assert _params(a) == _params(b)
        assert [p[0] for p in _params(a)] == ["model", "x", "abar", "timesteps", "eta", "noise", "clip", "callback",
                                              "prediction"]
    assert set(nps.__all__) <= set(pt.__all__) and list(pt.SAMPLERS) == list(nps.SAMPLERS)
    assert {k: v.__name__ for k, v in pt.SAMPLERS.items()} == {k: v.__name__ for k, v in nps.SAMPLERS.items()}


BAD = [
    ("ddpm", {"eta": 0.0}, "the ddpm sampler has eta = 1; got eta=0.0"),
    ("ddim", {"eta": 1.5}, "ddim eta must be in [0, 1], got 1.5"),
    ("ddim", {"eta": -0.1}, "ddim eta must be in [0, 1], got -0.1"),
    ("ddim", {"timesteps": [5, 5, 0]}, "sampling timesteps must be distinct integers in 9..0, decreasing"),
    ("ddpm", {"timesteps": [0, 5]}, "sampling timesteps must be distinct integers in 9..0, decreasing"),
    ("ddim", {"timesteps": [10, 0]}, "sampling timesteps must be distinct integers in 9..0, decreasing"),
    ("ddpm", {"timesteps": []}, "sampling timesteps must be distinct integers in 9..0, decreasing"),
    ("ddim", {"timesteps": [9.0, 0.0]}, "sampling timesteps must be distinct integers in 9..0, decreasing"),
    ("ddim", {"timesteps": [[9, 0]]}, "sampling timesteps must be distinct integers in 9..0, decreasing"),
]


@pytest.mark.parametrize("name,kwargs,message", BAD)
def test_bad_arguments_get_the_same_message_from_both(name, kwargs, message):
    """ConfigError from the library, ValueError from the numpy twin (it cannot import the library)."""
    abar = pt.alphas_cumprod(pt.DiffusionConfig(timesteps=10))
    kwargs = {"timesteps": [9, 4, 0], **kwargs}
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ConfigError) as torch_err:
        pt.SAMPLERS[name](eps_pt, torch.from_numpy(x), abar, **kwargs)
    with pytest.raises(ValueError) as numpy_err:
        nps.SAMPLERS[name](eps_np, x, abar, **kwargs)
    assert str(torch_err.value).startswith(message) and str(numpy_err.value).startswith(message)


def test_steps_out_of_range_and_unknown_sampler():
    cfg = pt.DiffusionConfig(timesteps=10)
    for bad in (0, 11, 2.0):
        with pytest.raises(ConfigError, match=r"sampler steps must be an integer in 1\.\.10"):
            pt.sampling_timesteps(cfg, bad)
        with pytest.raises(ValueError, match=r"sampler steps must be an integer in 1\.\.10"):
            nps.sampling_timesteps(10, bad)
        with pytest.raises(ValueError, match=r"sampler steps must be an integer in 1\.\.10"):
            nps.sample(eps_np, 1, SHAPE[1:], pt.alphas_cumprod(cfg), steps=bad)
        with pytest.raises(ConfigError, match=r"sampler steps must be an integer in 1\.\.10"):
            pt.sample(eps_pt_module(), 1, SHAPE[1:], cfg, steps=bad)
    with pytest.raises(ValueError, match="unknown sampler 'euler'; valid: ddpm, ddim"):
        nps.sample(eps_np, 1, SHAPE[1:], pt.alphas_cumprod(cfg), sampler="euler")
    with pytest.raises(ConfigError, match="sampler"):
        pt.sample(eps_pt_module(), 1, SHAPE[1:], cfg, sampler="euler")


def eps_pt_module():
    class Eps(torch.nn.Module):
        def forward(self, x, t):
            return eps_pt(x, t)

    return Eps()


@pytest.mark.parametrize("kw, message", [
    ({"sampler": "ddim", "eta": 1.5}, r"ddim eta must be in \[0, 1\], got 1.5"),
    ({"sampler": "ddpm", "eta": 0.5}, "the ddpm sampler has eta = 1; got eta=0.5"),
])
def test_sample_config_refuses_bad_eta_before_any_work(kw, message):
    """Exported models sample through the numpy twin, which can only raise ValueError: SampleConfig checks first."""
    from cunet_edge.errors import ConfigError
    from cunet_edge.sampling import SampleConfig

    with pytest.raises(ConfigError, match=message):
        SampleConfig(**kw)
