import math

import numpy as np
import pytest
import torch

from cunet_edge.diffusion import (
    DiffusionConfig, alphas_cumprod, diffusion_loss, make_betas, model_output_to_eps_x0, sample, sample_ddim,
    sample_ddpm, sampling_timesteps, training_target,
)
from cunet_edge.errors import ConfigError
from cunet_edge.runtimes import numpy_sampler


class Oracle(torch.nn.Module):
    """The exact denoiser for a data distribution that is a single image x*: it outputs ε, v or x* itself."""

    def __init__(self, target, cfg, prediction="epsilon"):
        super().__init__()
        self.target, self.prediction = target, prediction
        self.abar = torch.tensor(alphas_cumprod(cfg), dtype=torch.float64)

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1).to(x.dtype)
        eps = (x - a.sqrt() * self.target) / (1 - a).sqrt()
        return {"epsilon": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * self.target,
                "sample": self.target.expand_as(x)}[self.prediction]


SCHEDULES = {"linear": {}, "cosine": {}, "sigmoid": {}, "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012},
             "explicit": {"betas": tuple(np.linspace(1e-4, 0.02, 1000))}}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules(schedule):
    cfg = DiffusionConfig(schedule=schedule, **SCHEDULES[schedule])
    betas, abar = make_betas(cfg), alphas_cumprod(cfg)
    assert betas.shape == (1000,) and betas.dtype == np.float64
    assert np.all(np.diff(abar) < 0) and 0 < abar[-1] < 0.01 and abar[0] > 0.99
    if schedule in ("linear", "explicit"):
        assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    if schedule == "scaled_linear":  # linear in √β
        assert np.allclose(np.diff(np.sqrt(betas)), (0.012**0.5 - 0.00085**0.5) / 999)
    if schedule == "sigmoid":  # ᾱ(s) ∝ σ(3) − σ(6 s − 3): ᾱ at mid-schedule is 1/2 by symmetry
        assert abar[499] == pytest.approx(0.5, abs=2e-3)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
@pytest.mark.parametrize("schedule", ["cosine", "sigmoid"])
def test_each_prediction_type_follows_the_closed_form_ddim_path(prediction, data_range, schedule):
    """For a single-image distribution x*, deterministic DDIM has the closed form
    x_s = √ᾱ_s x* + √(1−ᾱ_s) ε with ε = (x_T − √ᾱ_T x*) / √(1−ᾱ_T) fixed: every step of both
    samplers, for each prediction type, must follow it, and `sample` maps x* back to [−1, 1]."""
    cfg = DiffusionConfig(schedule=schedule, prediction=prediction, data_range=data_range)
    lo, hi = data_range
    target = torch.linspace(lo + 0.05, hi - 0.05, 16, dtype=torch.float64).view(1, 1, 4, 4)
    model = Oracle(target, cfg, prediction)
    abar, ts = alphas_cumprod(cfg), sampling_timesteps(cfg, 9)
    x = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = (x - math.sqrt(abar[ts[0]]) * target) / math.sqrt(1 - abar[ts[0]])
    closed = [math.sqrt(a) * target + math.sqrt(1 - a) * eps for a in [*abar[ts[1:]], 1.0]]
    seen_pt, seen_np = [], []
    sample_ddim(model, x, abar, ts, **cfg.sampler_options(), callback=lambda i, t, x: seen_pt.append(x))
    numpy_sampler.sample_ddim(lambda x, t: model(torch.from_numpy(x), torch.from_numpy(t)).numpy(), x.numpy(),
                              abar, ts, **cfg.sampler_options(), callback=lambda i, t, x: seen_np.append(x))
    for got_pt, got_np, want in zip(seen_pt, seen_np, closed, strict=True):
        assert torch.allclose(got_pt, want, atol=1e-9)
        np.testing.assert_allclose(got_np, want.numpy(), rtol=1e-3, atol=1e-3)  # the numpy twin is float32
    images = sample(model, 2, (1, 4, 4), cfg, steps=9)
    expect = target * 2 - 1 if data_range == (0.0, 1.0) else target
    assert torch.allclose(images.double(), expect.expand(2, -1, -1, -1), atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_the_training_target_is_what_the_samplers_read_back(prediction):
    """training_target(ε, x0) fed to model_output_to_eps_x0 at x_t gives back ε and x0: one convention for both."""
    cfg = DiffusionConfig(schedule="sigmoid")
    abar = torch.tensor(alphas_cumprod(cfg), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand((4, 1, 3, 3), generator=g, dtype=torch.float64), torch.randn((4, 1, 3, 3), generator=g,
                                                                                         dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    out = training_target(prediction, x0, noise, abar[t])
    for i in range(4):
        eps, got_x0 = model_output_to_eps_x0(out[i], x_t[i], float(abar[t[i]]), prediction)
        assert torch.allclose(eps, noise[i], atol=1e-6) and torch.allclose(got_x0, x0[i], atol=1e-6)
    oracle = Oracle(x0[:1], cfg, prediction)
    assert diffusion_loss(oracle, x0[:1].expand(8, -1, -1, -1), abar, g, prediction=prediction).item() < 1e-20


def test_sampling_timesteps():
    cfg = DiffusionConfig()
    ts = sampling_timesteps(cfg, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
    assert len(set(sampling_timesteps(cfg, 1000))) == 1000
    for bad in (0, -3, 1001):
        with pytest.raises(ConfigError, match="1..1000"):
            sampling_timesteps(cfg, bad)


@pytest.mark.parametrize("sampler", [sample_ddim, sample_ddpm])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_samplers_recover_single_point_distribution(sampler, steps):
    cfg = DiffusionConfig(schedule="cosine")
    target = torch.linspace(-0.9, 0.9, 16, dtype=torch.float64).view(1, 1, 4, 4)
    x = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    out = sampler(Oracle(target, cfg), x, alphas_cumprod(cfg), sampling_timesteps(cfg, steps),
                  noise=lambda s: torch.randn(s, generator=g, dtype=torch.float64))
    assert torch.allclose(out, target.expand_as(out), atol=1e-6)


def test_ddpm_refuses_other_eta_and_ddim_checks_eta():
    cfg = DiffusionConfig()
    x = torch.zeros(1, 1, 2, 2)
    abar, ts = alphas_cumprod(cfg), sampling_timesteps(cfg, 2)
    with pytest.raises(ConfigError, match="eta"):
        sample_ddpm(Oracle(x, cfg), x, abar, ts, eta=0.0)
    with pytest.raises(ConfigError, match="eta"):
        sample_ddim(Oracle(x, cfg), x, abar, ts, eta=1.5)
    with pytest.raises(ConfigError, match="sampling timesteps must be distinct integers in 999..0"):
        sample_ddim(Oracle(x, cfg), x, abar, [0, 999])


def test_loss_is_zero_for_oracle_and_positive_otherwise():
    cfg = DiffusionConfig()
    target = torch.full((1, 1, 4, 4), 0.3, dtype=torch.float64)
    abar = torch.tensor(alphas_cumprod(cfg), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    assert diffusion_loss(Oracle(target, cfg), target.expand(8, -1, -1, -1), abar, g).item() < 1e-20
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    assert diffusion_loss(zero, target.expand(8, -1, -1, -1), abar, g).item() == pytest.approx(1.0, rel=0.5)


def test_sample_is_seeded_and_batch_independent_for_deterministic_ddim():
    cfg = DiffusionConfig()
    model = Oracle(torch.zeros(1, 1, 4, 4), cfg).float()
    a = sample(model, 5, (1, 4, 4), cfg, sampler="ddim", steps=4, seed=3, batch_size=5)
    b = sample(model, 5, (1, 4, 4), cfg, sampler="ddim", steps=4, seed=3, batch_size=5)
    assert a.shape == (5, 1, 4, 4) and torch.equal(a, b)
    c = sample(model, 5, (1, 4, 4), cfg, sampler="ddpm", steps=4, seed=3)
    d = sample(model, 5, (1, 4, 4), cfg, sampler="ddpm", steps=4, seed=4)
    assert not torch.equal(c, d)
    with pytest.raises(ConfigError, match="sampler"):
        sample(model, 1, (1, 4, 4), cfg, sampler="euler", steps=4)


def test_bad_diffusion_config():
    with pytest.raises(ConfigError, match="schedule"):
        DiffusionConfig(schedule="quadratic")
    with pytest.raises(ConfigError, match="prediction"):
        DiffusionConfig(prediction="v_prediction")
    with pytest.raises(ConfigError, match=r"data_range must be \[-1, 1\] or \[0, 1\]"):
        DiffusionConfig(data_range=(0.0, 255.0))
    with pytest.raises(ConfigError, match="holds 2 values but diffusion.timesteps is 1000"):
        DiffusionConfig(schedule="explicit", betas=(0.1, 0.2))
    with pytest.raises(ConfigError, match=r"lie in \(0, 1\)"):
        DiffusionConfig(schedule="explicit", timesteps=2, betas=(0.1, 1.0))
    with pytest.raises(ConfigError, match="betas is given"):
        DiffusionConfig(betas=(0.1,) * 1000)
    with pytest.raises(ConfigError, match="timesteps"):
        DiffusionConfig(timesteps=0)
    with pytest.raises(ConfigError, match="beta"):
        DiffusionConfig(beta_start=0.1, beta_end=0.01)
    assert math.isfinite(alphas_cumprod(DiffusionConfig(timesteps=10))[-1])
