"""DDPM and DDIM samplers in numpy alone, driving any denoiser callable (a runner, a deployed engine).

This file imports nothing but numpy and the standard library: deployment bundles ship it as
is beside a runner that needs no torch. The arithmetic mirrors `cunet_edge.diffusion`
(float32 images, float64 schedule coefficients), so with the same noise it draws the same
images as the torch samplers.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

__all__ = ["sampling_timesteps", "sample_ddpm", "sample_ddim", "SAMPLERS", "sample"]

EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
NoiseFn = Callable[[tuple], np.ndarray]


def sampling_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """`steps` evenly spaced timesteps from T−1 down to 0, as in training's sampler."""
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= timesteps:
        raise ValueError(f"sampler steps must be an integer in 1..{timesteps}, got {steps}")
    if steps == 1:
        return np.array([timesteps - 1])
    return np.round(np.linspace(timesteps - 1, 0, steps)).astype(np.int64)


def _predict_x0(eps_fn: EpsFn, x, t: int, a_t: float, clip: bool):
    """One denoiser call at timestep t: (ε̂, x̂0), x̂0 clipped and ε̂ made consistent with it."""
    eps = np.asarray(eps_fn(x, np.full((x.shape[0],), t, dtype=np.int64)), dtype=np.float32)
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    if clip:
        x0 = np.clip(x0, -1, 1)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    return eps, x0


def sample_ddpm(eps_fn: EpsFn, x: np.ndarray, abar: np.ndarray, steps: int, *, eta: float = 1.0,
                noise: Optional[NoiseFn] = None, clip: bool = True, callback=None) -> np.ndarray:
    """DDPM ancestral sampling on `steps` respaced timesteps (respaced betas 1 − ᾱ_t / ᾱ_s)."""
    if eta != 1.0:
        raise ValueError(f"the ddpm sampler has eta = 1; got eta={eta}")
    noise = noise or np.random.default_rng(0).standard_normal
    ts = sampling_timesteps(len(abar), steps)
    for i, t in enumerate(ts):
        a_t = float(abar[t])
        a_s = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        beta = 1.0 - a_t / a_s
        _, x0 = _predict_x0(eps_fn, x, int(t), a_t, clip)
        x = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
        if i + 1 < len(ts):
            x = x + math.sqrt(beta * (1 - a_s) / (1 - a_t)) * np.asarray(noise(x.shape), dtype=np.float32)
        if callback is not None:
            callback(i, int(t), x)
    return x


def sample_ddim(eps_fn: EpsFn, x: np.ndarray, abar: np.ndarray, steps: int, *, eta: float = 0.0,
                noise: Optional[NoiseFn] = None, clip: bool = True, callback=None) -> np.ndarray:
    """DDIM sampling on `steps` timesteps; η = 0 is deterministic (only the starting noise matters)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim eta must be in [0, 1], got {eta}")
    noise = noise or np.random.default_rng(0).standard_normal
    ts = sampling_timesteps(len(abar), steps)
    for i, t in enumerate(ts):
        a_t = float(abar[t])
        a_s = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps, x0 = _predict_x0(eps_fn, x, int(t), a_t, clip)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * np.asarray(noise(x.shape), dtype=np.float32)
        if callback is not None:
            callback(i, int(t), x)
    return x


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim}


def sample(eps_fn: EpsFn, n: int, shape: tuple, abar: np.ndarray, *, sampler: str = "ddim", steps: int = 50,
           eta: Optional[float] = None, seed: int = 0, batch_size: int = 256, clip: bool = True) -> np.ndarray:
    """n images in [−1, 1] from numpy-seeded Gaussian noise, in batches of `batch_size`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    rng = np.random.default_rng(seed)
    kwargs = {} if eta is None else {"eta": eta}
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = rng.standard_normal((b, *shape), dtype=np.float32)
        x = SAMPLERS[sampler](eps_fn, x, abar, steps, noise=lambda s: rng.standard_normal(s, dtype=np.float32),
                              clip=clip, **kwargs)
        out.append(np.clip(x, -1, 1))
    return np.concatenate(out)
