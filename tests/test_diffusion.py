import math

import numpy as np
import pytest
import torch

from cunet_edge.diffusion import (
    DiffusionConfig, alphas_cumprod, diffusion_loss, make_betas, sample, sample_ddim, sample_ddpm,
    sampling_timesteps,
)
from cunet_edge.errors import ConfigError


class Oracle(torch.nn.Module):
    """The exact ε-predictor for a data distribution that is a single image x*."""

    def __init__(self, target, cfg):
        super().__init__()
        self.target = target
        self.abar = torch.tensor(alphas_cumprod(cfg), dtype=torch.float64)

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1).to(x.dtype)
        return (x - a.sqrt() * self.target) / (1 - a).sqrt()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedules(schedule):
    cfg = DiffusionConfig(schedule=schedule)
    betas, abar = make_betas(cfg), alphas_cumprod(cfg)
    assert betas.shape == (1000,) and betas.dtype == np.float64
    assert np.all(np.diff(abar) < 0) and 0 < abar[-1] < 0.01 and abar[0] > 0.99
    if schedule == "linear":
        assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)


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
        DiffusionConfig(schedule="sigmoid")
    with pytest.raises(ConfigError, match="timesteps"):
        DiffusionConfig(timesteps=0)
    with pytest.raises(ConfigError, match="beta"):
        DiffusionConfig(beta_start=0.1, beta_end=0.01)
    assert math.isfinite(alphas_cumprod(DiffusionConfig(timesteps=10))[-1])
