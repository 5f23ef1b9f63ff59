"""DDPM noise schedules, the ε-prediction training loss, and the DDPM and DDIM samplers.

The schedule is computed in numpy float64 so the numpy sampler that runs on the device
(without torch) uses exactly the same numbers as training.

The samplers have one signature, schedule arrays in (as k-diffusion's `sample_*`):
`sample_ddim(model, x, abar, timesteps, *, eta, noise, clip, callback)`, with
`abar = alphas_cumprod(cfg)` and `timesteps = sampling_timesteps(cfg, steps)` computed once by
the caller. `cunet_edge.runtimes.numpy_sampler` (runtimes/numpy_sampler.py) is their numpy
twin, function by function with the same names and arguments, for runners and deployment
bundles without torch; tests/test_samplers.py pins both to the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .config import check_choice, check_positive
from .errors import ConfigError

NoiseFn = Callable[[tuple], object]  # noise(shape) -> a standard normal tensor (or array) of that shape

__all__ = [
    "DiffusionConfig",
    "SCHEDULES",
    "SAMPLERS",
    "make_betas",
    "alphas_cumprod",
    "sampling_timesteps",
    "q_sample",
    "diffusion_loss",
    "sample_ddpm",
    "sample_ddim",
    "sample",
]

SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process: T steps of a linear (Ho et al.) or cosine (Nichol & Dhariwal) β schedule."""

    timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    clip_denoised: bool = True

    def __post_init__(self):
        check_positive("diffusion.timesteps", self.timesteps)
        check_choice("diffusion.schedule", self.schedule, SCHEDULES)
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(
                f"diffusion betas need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )


def make_betas(cfg: DiffusionConfig) -> np.ndarray:
    """β_1..β_T as float64: linear in β, or cosine in ᾱ with offset s = 0.008 and β ≤ 0.999."""
    T = cfg.timesteps
    if cfg.schedule == "linear":
        return np.linspace(cfg.beta_start, cfg.beta_end, T, dtype=np.float64)
    s = 0.008
    f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)


def alphas_cumprod(cfg: DiffusionConfig) -> np.ndarray:
    """ᾱ_t = ∏ (1 − β_s) for t = 0..T−1, float64."""
    return np.cumprod(1.0 - make_betas(cfg))


def sampling_timesteps(cfg: DiffusionConfig, steps: int) -> np.ndarray:
    """`steps` evenly spaced timesteps from T−1 down to 0: the `timesteps` argument of the samplers.

    Unique, since steps ≤ T; T is cfg.timesteps here, len(abar) in the numpy twin.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1 or steps > cfg.timesteps:
        raise ConfigError(f"sampler steps must be an integer in 1..{cfg.timesteps}, got {steps}")
    if steps == 1:
        return np.array([cfg.timesteps - 1])
    return np.round(np.linspace(cfg.timesteps - 1, 0, steps)).astype(np.int64)


def q_sample(x0, t, noise, abar):
    """Diffuse clean images to timestep t: sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε (torch tensors)."""
    a = abar.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def diffusion_loss(model, x0, abar, generator=None, *, teacher=None, distill_weight: float = 0.0):
    """The simple ε-prediction loss of DDPM: E_{t, ε} ‖ε − ε_θ(x_t, t)‖², t uniform on 0..T−1.

    With a `teacher`, plus distill_weight · ‖ε_teacher(x_t, t) − ε_θ(x_t, t)‖² on the same x_t:
    distillation toward the (frozen) teacher's ε. The random draws are the same either way.
    """
    import torch

    T = abar.shape[0]
    t = torch.randint(0, T, (x0.shape[0],), generator=generator, device="cpu").to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
    x_t = q_sample(x0, t, noise, abar)
    eps = model(x_t, t)
    loss = torch.nn.functional.mse_loss(eps, noise)
    if teacher is not None and distill_weight > 0:
        with torch.no_grad():
            target = teacher(x_t, t)
        loss = loss + distill_weight * torch.nn.functional.mse_loss(eps, target)
    return loss


def _check_timesteps(timesteps, T: int) -> list[int]:
    """The sampling timesteps as ints: a non-empty 1-d integer sequence in T−1..0, strictly decreasing."""
    ts = np.asarray(timesteps)
    if (ts.ndim != 1 or ts.size == 0 or ts.dtype.kind not in "iu" or ts.min() < 0 or ts.max() >= T
            or np.any(ts[1:] >= ts[:-1])):
        raise ConfigError(f"sampling timesteps must be distinct integers in {T - 1}..0, decreasing; got {ts.tolist()}")
    return [int(t) for t in ts]


def _predict_x0(model, x, t: int, a_t: float, clip: bool):
    """One denoiser call at timestep t: (ε̂, x̂0), x̂0 clipped and ε̂ made consistent with it."""
    import torch

    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    eps = model(x, tt)
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    if clip:
        x0 = x0.clamp(-1, 1)
        # Keep ε consistent with the clipped x̂0, as the DDIM update assumes both agree.
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    return eps, x0


def _draw(noise: NoiseFn, x):
    """noise(x.shape) as a tensor of x's dtype on x's device (a noise function may draw on the CPU)."""
    import torch

    return torch.as_tensor(noise(tuple(x.shape))).to(device=x.device, dtype=x.dtype)


def _default_noise(x) -> NoiseFn:
    """Standard normal draws in x's dtype from a generator seeded 0: deterministic without a noise source."""
    import torch

    g = torch.Generator().manual_seed(0)
    return lambda shape: torch.randn(shape, generator=g, dtype=x.dtype)


def sample_ddpm(model, x, abar, timesteps, *, eta: float = 1.0, noise: NoiseFn | None = None, clip: bool = True,
                callback: Callable | None = None):
    """DDPM ancestral sampling on the given timesteps (respaced betas 1 − ᾱ_t / ᾱ_s).

    `model(x, t)` predicts ε; `abar` is `alphas_cumprod(cfg)` and `timesteps` is
    `sampling_timesteps(cfg, steps)`, both computed once by the caller. With fewer timesteps
    than T, Ho et al. 2020's chain uses the respaced betas β' = 1 − ᾱ_t / ᾱ_s between
    consecutive kept timesteps (Nichol & Dhariwal 2021). `noise(shape)` draws each step's standard normal noise
    (default: a torch generator seeded 0); `clip` clips x̂0 to [−1, 1] (`cfg.clip_denoised`);
    `callback(i, t, x)` sees x after step i. `eta` is accepted for the shared signature and
    must be 1: DDPM is DDIM with η = 1.
    """
    if eta != 1.0:
        raise ConfigError(f"the ddpm sampler has eta = 1; got eta={eta} (use --sampler ddim for other values)")
    ts = _check_timesteps(timesteps, len(abar))
    noise = noise or _default_noise(x)
    for i, t in enumerate(ts):
        a_t = float(abar[t])
        a_s = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        beta = 1.0 - a_t / a_s
        _, x0 = _predict_x0(model, x, t, a_t, clip)
        x = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
        if i + 1 < len(ts):
            x = x + math.sqrt(beta * (1 - a_s) / (1 - a_t)) * _draw(noise, x)
        if callback is not None:
            callback(i, t, x)
    return x


def sample_ddim(model, x, abar, timesteps, *, eta: float = 0.0, noise: NoiseFn | None = None, clip: bool = True,
                callback: Callable | None = None):
    """DDIM sampling on the given timesteps; η = 0 is deterministic (only the starting noise matters).

    Song et al. 2021; η = 1 is DDPM-like. The arguments are those of `sample_ddpm`.
    """
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"ddim eta must be in [0, 1], got {eta}")
    ts = _check_timesteps(timesteps, len(abar))
    noise = noise or _default_noise(x)
    for i, t in enumerate(ts):
        a_t = float(abar[t])
        a_s = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps, x0 = _predict_x0(model, x, t, a_t, clip)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _draw(noise, x)
        if callback is not None:
            callback(i, t, x)
    return x


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim}


def sample(model, n: int, shape: tuple[int, int, int], cfg: DiffusionConfig, *, sampler: str = "ddim",
           steps: int = 50, eta: float | None = None, seed: int = 0, batch_size: int = 256,
           device="cpu", progress: Callable | None = None):
    """Draw n images in [−1, 1] with a named sampler from seeded Gaussian noise, in batches of `batch_size`.

    The starting and per-step noise come from one torch generator seeded `seed`. Unlike the
    numpy twin, which gets the deployed schedule, this takes the config: it computes ᾱ and the
    timesteps once from `cfg` and clips x̂0 as `cfg.clip_denoised` says.
    """
    import torch

    check_choice("sampler", sampler, SAMPLERS)
    check_positive("number of samples", n)
    abar, ts = alphas_cumprod(cfg), sampling_timesteps(cfg, steps)  # validates steps before any work
    kwargs = {} if eta is None else {"eta": eta}
    g = torch.Generator().manual_seed(seed)
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = torch.randn((b, *shape), generator=g).to(device)
            x = SAMPLERS[sampler](model, x, abar, ts, noise=lambda s, d=x.dtype: torch.randn(s, generator=g, dtype=d),
                                  clip=cfg.clip_denoised, **kwargs)
            out.append(x.clamp(-1, 1).cpu())
            if progress is not None:
                progress(b)
    return torch.cat(out)
