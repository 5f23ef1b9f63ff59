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


def run_both(name, steps, *, eta=None, schedule="linear", clip=True, seed=0, prediction="epsilon", spacing=None):
    """Run the torch and the numpy sampler `name` alike; return their images and (i, t, x) callback traces.

    With a `spacing`, the schedule comes from `sampling_schedule` (both twins must agree on it)."""
    cfg = pt.DiffusionConfig(timesteps=T, schedule=schedule)
    abar, ts = pt.alphas_cumprod(cfg), pt.sampling_timesteps(cfg, steps)
    np.testing.assert_array_equal(ts, nps.sampling_timesteps(len(abar), steps))
    levels = None
    if spacing is not None:
        ts, levels = pt.sampling_schedule(cfg, steps, sampler=name, spacing=spacing)
        ts_np, levels_np = nps.sampling_schedule(abar, steps, sampler=name, spacing=spacing)
        np.testing.assert_array_equal(ts, ts_np)
        np.testing.assert_array_equal(levels, levels_np)
    x = np.random.default_rng(100 + seed).standard_normal(SHAPE, dtype=np.float32)
    n_np, n_pt = noise_sources(seed)
    kwargs = ({} if eta is None else {"eta": eta}) | {"prediction": prediction, "levels": levels}
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


@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 1.0), ("dpmpp2m", 0.0), ("unipc", 0.0)])
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


@pytest.mark.parametrize("name", ["sample_ddpm", "sample_ddim", "sample_dpmpp2m", "sample_unipc", "sampling_timesteps",
                                  "sampling_schedule", "sample"])
def test_the_twins_mirror_each_other_function_by_function(name):
    a, b = getattr(pt, name), getattr(nps, name)
    assert a.__doc__.splitlines()[0] == b.__doc__.splitlines()[0]
    if name.startswith("sample_"):
        assert _params(a) == _params(b)
        assert [p[0] for p in _params(a)] == ["model", "x", "abar", "timesteps", "eta", "noise", "clip", "callback",
                                              "prediction", "levels"]
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
    ("dpmpp2m", {"eta": 0.5}, "the dpmpp2m sampler is deterministic (eta = 0); got eta=0.5"),
    ("unipc", {"eta": 1.0}, "the unipc sampler is deterministic (eta = 0); got eta=1.0"),
    ("unipc", {"timesteps": [5, 5, 0]}, "sampling timesteps must be distinct integers in 9..0, decreasing"),
    ("dpmpp2m", {"timesteps": [0, 5]}, "sampling timesteps must be distinct integers in 9..0, decreasing"),
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
    with pytest.raises(ValueError, match="unknown sampler 'euler'; valid: ddpm, ddim, dpmpp2m, unipc"):
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
    ({"sampler": "unipc", "eta": 0.5}, r"the unipc sampler is deterministic \(eta = 0\); got eta=0.5"),
    ({"sampler": "dpmpp2m", "spacing": "leading"}, "spacing"),
    ({"sampler": "ddpm", "eta": 0.5}, "the ddpm sampler has eta = 1; got eta=0.5"),
])
def test_sample_config_refuses_bad_eta_before_any_work(kw, message):
    """Exported models sample through the numpy twin, which can only raise ValueError: SampleConfig checks first."""
    from cunet_edge.errors import ConfigError
    from cunet_edge.sampling import SampleConfig

    with pytest.raises(ConfigError, match=message):
        SampleConfig(**kw)


# ---- DPM-Solver++(2M) and UniPC: twins, spacings, and diffusers' schedulers ----

MULTISTEP = ["dpmpp2m", "unipc"]


@pytest.mark.parametrize("steps", [1, 2, 3, 10])
@pytest.mark.parametrize("spacing", pt.SPACINGS)
@pytest.mark.parametrize("name", MULTISTEP)
def test_multistep_twins_draw_the_same_images(name, spacing, steps):
    out_np, out_pt, tr_np, tr_pt = run_both(name, steps, spacing=spacing)
    assert out_np.dtype == np.float32 and out_pt.dtype == torch.float32
    np.testing.assert_allclose(out_np, out_pt.numpy(), rtol=0, atol=2e-6)
    assert np.abs(out_np).max() > 0.1
    assert [(i, t) for i, t, _ in tr_np] == [(i, t) for i, t, _ in tr_pt] and len(tr_np) == steps
    np.testing.assert_allclose(np.stack([x for *_, x in tr_np]), np.stack([x for *_, x in tr_pt]), rtol=0, atol=2e-6)


@pytest.mark.parametrize("prediction,clip", [("v", (0.0, 1.0)), ("sample", False), ("epsilon", False)])
@pytest.mark.parametrize("name", MULTISTEP)
def test_multistep_twins_agree_for_each_prediction_and_clip(name, prediction, clip):
    out_np, out_pt, _, _ = run_both(name, 12, schedule="cosine", clip=clip, seed=2, prediction=prediction,
                                    spacing="trailing")
    np.testing.assert_allclose(out_np, out_pt.numpy(), rtol=0, atol=1e-5)
    assert np.abs(out_np).max() > 0.1


def test_ddim_keeps_its_grid_and_the_spacings_differ():
    cfg = pt.DiffusionConfig(timesteps=T)
    abar = pt.alphas_cumprod(cfg)
    for steps in (1, 7, 50):
        ts, levels = pt.sampling_schedule(cfg, steps)  # ddim, uniform: today's grid, at the table's ᾱ
        np.testing.assert_array_equal(ts, pt.sampling_timesteps(cfg, steps))
        np.testing.assert_array_equal(levels, abar[ts])
    grids = {s: pt.sampling_schedule(cfg, 10, sampler="unipc", spacing=s)[0].tolist() for s in pt.SPACINGS}
    assert grids["uniform"] == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert grids["trailing"] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert grids["karras"] == [999, 937, 864, 775, 663, 511, 301, 102, 18, 0]  # diffusers' use_karras_sigmas grid
    k_ts, k_levels = pt.sampling_schedule(cfg, 10, sampler="ddim", spacing="karras")
    assert k_ts.tolist() == grids["karras"]
    sigma = np.sqrt((1 - k_levels) / k_levels)  # Karras et al.: σ_i^(1/ρ) evenly spaced from σ_max to σ_min, ρ = 7
    np.testing.assert_allclose(np.diff(sigma ** (1 / 7)), np.diff(sigma ** (1 / 7))[0], rtol=1e-9)
    np.testing.assert_allclose(k_levels[[0, -1]], abar[[T - 1, 0]], rtol=1e-12)
    # diffusers' trailing arange overshoots to timestep -1 at some step counts (61 for T = 1000): we keep `steps` points
    assert np.arange(T, 0, -T / 61).round().size == 62
    trailing = pt.sampling_schedule(cfg, 61, sampler="dpmpp2m", spacing="trailing")[0]
    assert trailing.size == 61 and trailing[0] == T - 1 and trailing.min() == 15
    # on a cosine schedule (σ_max ≈ 2e4, β capped at 0.999) the Karras levels crowd near t = T − 1: timesteps
    # repeat there (as in diffusers), the levels do not
    c_ts, c_levels = pt.sampling_schedule(pt.DiffusionConfig(schedule="cosine"), 12, sampler="unipc", spacing="karras")
    assert c_ts.tolist()[:3] == [999, 999, 999] and np.all(np.diff(c_levels) > 0)


def test_bad_schedules_are_refused_by_both_twins():
    cfg = pt.DiffusionConfig(timesteps=T)
    abar = pt.alphas_cumprod(cfg)
    for kwargs, message in [({"spacing": "leading"}, "spacing"), ({"sampler": "euler"}, "sampler"),
                            ({"steps": 0}, r"sampler steps must be an integer in 1\.\.1000"),
                            ({"steps": 1000, "sampler": "unipc"}, "the uniform spacing repeats timesteps at 1000")]:
        kwargs = {"sampler": "dpmpp2m", **kwargs}
        steps = kwargs.pop("steps", 10)
        with pytest.raises(ConfigError, match=message):
            pt.sampling_schedule(cfg, steps, **kwargs)
        with pytest.raises(ValueError, match=message):
            nps.sampling_schedule(abar, steps, **kwargs)
    x = np.zeros(SHAPE, np.float32)
    for levels in ([0.5, 0.4], [0.5], [0.5, 1.0]):  # decreasing, one short, not below 1
        with pytest.raises(ConfigError, match=r"sampling levels must be one ᾱ in \(0, 1\) per timestep, increasing"):
            pt.sample_unipc(eps_pt, torch.from_numpy(x), abar, [9, 9], levels=levels)
        with pytest.raises(ValueError, match=r"sampling levels must be one ᾱ in \(0, 1\) per timestep, increasing"):
            nps.sample_ddim(eps_np, x, abar, [9, 9], levels=levels)


@pytest.mark.parametrize("sampler", MULTISTEP)
def test_multistep_samplers_recover_a_single_point_distribution(sampler):
    """With the exact denoiser of a one-image distribution, x̂0 is exact at every step: any solver lands on it."""
    from test_diffusion import Oracle

    cfg = pt.DiffusionConfig(schedule="cosine")
    target = torch.linspace(-0.9, 0.9, 16, dtype=torch.float64).view(1, 1, 4, 4)
    x = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for spacing in ("uniform", "trailing"):  # (the oracle reads ᾱ off the table: the Karras levels are not on it)
        ts, levels = pt.sampling_schedule(cfg, 6, sampler=sampler, spacing=spacing)
        out = pt.SAMPLERS[sampler](Oracle(target, cfg), x, pt.alphas_cumprod(cfg), ts, levels=levels)
        assert torch.allclose(out, target.expand_as(out), atol=1e-6)


def _diffusers_scheduler(name, cfg, spacing, clip=False):
    """diffusers' scheduler for our sampler `name` and spacing, on our schedule (ᾱ in float64, as ours).

    With `clip`, dynamic thresholding with sample_max_value 1: its threshold s is clamped to [1, 1], which makes it
    our x̂0 clipping to [−1, 1]."""
    from cunet_edge.compat import ensure_torchvision_imports

    ensure_torchvision_imports()
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    cls = {"dpmpp2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}[name]
    sched = cls(num_train_timesteps=cfg.timesteps, trained_betas=pt.make_betas(cfg),
                prediction_type={"v": "v_prediction"}.get(cfg.prediction, cfg.prediction),
                timestep_spacing="trailing" if spacing == "trailing" else "linspace",
                use_karras_sigmas=spacing == "karras", thresholding=clip, sample_max_value=1.0)
    assert sched.config.solver_order == 2 and sched.config.final_sigmas_type == "zero"
    assert getattr(sched.config, "algorithm_type", "dpmsolver++") == "dpmsolver++"
    assert getattr(sched.config, "solver_type", "bh2") in ("midpoint", "bh2")
    sched.alphas_cumprod = torch.tensor(pt.alphas_cumprod(cfg))
    return sched


def _denoiser(cfg):
    """A fixed smooth function of (x, t) shaped like a denoiser: x̂0 = tanh(...) in [−1, 1], output as cfg.prediction."""
    g = torch.Generator().manual_seed(0)
    w, p = torch.randn(SHAPE[1:], generator=g) * 0.3, torch.rand(SHAPE[1:], generator=g) * 1.6 - 0.8
    ab = torch.tensor(pt.alphas_cumprod(cfg), dtype=torch.float32)

    def model(x, t):
        a = ab[t].view(-1, 1, 1, 1)
        x0 = torch.tanh(p + x * w * a.sqrt() + 0.2 * torch.roll(x, 1, -1) * (1 - a))
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"epsilon": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[cfg.prediction]

    return model


def _run_diffusers(sched, model, x, steps):
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' np.array(tensor) under numpy 2
@pytest.mark.parametrize("steps", [1, 3, 8])
@pytest.mark.parametrize("spacing", pt.SPACINGS)
@pytest.mark.parametrize("prediction", pt.PREDICTIONS)
@pytest.mark.parametrize("name", MULTISTEP)
def test_multistep_samplers_equal_diffusers_schedulers(name, prediction, spacing, steps):
    """Same model, same starting noise, same timesteps: our sample equals diffusers' to 1e-4 (clip off: diffusers
    has no x̂0 clipping), and the numpy twin equals both."""
    cfg = pt.DiffusionConfig(timesteps=T, schedule="linear", prediction=prediction)
    sched = _diffusers_scheduler(name, cfg, spacing)
    model = _denoiser(cfg)
    abar = pt.alphas_cumprod(cfg)
    ts, levels = pt.sampling_schedule(cfg, steps, sampler=name, spacing=spacing)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = pt.SAMPLERS[name](model, x.clone(), abar, ts, clip=False, prediction=prediction, levels=levels)
    theirs = _run_diffusers(sched, model, x.clone(), steps)
    np.testing.assert_array_equal(sched.timesteps.numpy(), ts)
    assert (ours - theirs).abs().max().item() <= 1e-4
    twin = nps.SAMPLERS[name](lambda x, t: model(torch.from_numpy(x), torch.from_numpy(t)).numpy(), x.numpy().copy(),
                              abar, ts, clip=False, prediction=prediction, levels=levels)
    np.testing.assert_allclose(twin, ours.numpy(), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' np.array(tensor) under numpy 2
@pytest.mark.parametrize("name", MULTISTEP)
def test_multistep_samplers_equal_diffusers_on_a_trained_model(name, tiny_checkpoint):
    """The same on the tiny trained continuous U-Net (its own schedule and prediction type), 10 steps, Karras,
    x̂0 clipped to [−1, 1] (diffusers: thresholding at sample_max_value 1)."""
    from cunet_edge.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    cfg, m = ckpt.config.diffusion, ckpt.config.model
    model = ckpt.model.eval()
    assert tuple(cfg.data_range) == (-1.0, 1.0)
    sched = _diffusers_scheduler(name, cfg, "karras", clip=True)
    ts, levels = pt.sampling_schedule(cfg, 10, sampler=name, spacing="karras")
    x = torch.randn((2, m.in_channels, m.image_size, m.image_size), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = pt.SAMPLERS[name](model, x.clone(), pt.alphas_cumprod(cfg), ts, clip=True, prediction=cfg.prediction,
                                 levels=levels)
    theirs = _run_diffusers(sched, model, x.clone(), 10)
    assert ours.abs().max() > 0.1 and (ours - theirs).abs().max().item() <= 1e-4
