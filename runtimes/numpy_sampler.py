"""DDPM and DDIM samplers in numpy alone, driving any denoiser callable (a runner, a deployed engine).

This file imports nothing but numpy and the standard library: deployment bundles ship it as
is beside a runner that needs no torch. It is the numpy twin of the torch samplers in
`cunet_edge.diffusion`: the same functions under the same names, with the same arguments in
the same order, schedule arrays in (as k-diffusion's `sample_*`):
`sample_ddim(model, x, abar, timesteps, *, eta, noise, clip, callback, prediction)`, with
`timesteps = sampling_timesteps(len(abar), steps)` computed once by the caller. The
arithmetic is the same (float32 images, float64 schedule coefficients), so with the same
denoiser and the same noise both draw the same images; tests/test_samplers.py pins that.
Bad arguments raise ValueError (the library's ConfigError is out of reach from here).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

__all__ = ["sampling_timesteps", "model_output_to_eps_x0", "sample_ddpm", "sample_ddim", "SAMPLERS", "sample"]

PREDICTIONS = ("epsilon", "v", "sample")

EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
NoiseFn = Callable[[tuple], np.ndarray]  # noise(shape) -> a standard normal array of that shape


def sampling_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """`steps` evenly spaced timesteps from T−1 down to 0: the `timesteps` argument of the samplers.

    Unique, since steps ≤ T; T is `timesteps` here (len(abar)), cfg.timesteps in the torch twin.
    """
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= timesteps:
        raise ValueError(f"sampler steps must be an integer in 1..{timesteps}, got {steps}")
    if steps == 1:
        return np.array([timesteps - 1])
    return np.round(np.linspace(timesteps - 1, 0, steps)).astype(np.int64)


def _check_timesteps(timesteps, T: int) -> list:
    """The sampling timesteps as ints: a non-empty 1-d integer sequence in T−1..0, strictly decreasing."""
    ts = np.asarray(timesteps)
    if (ts.ndim != 1 or ts.size == 0 or ts.dtype.kind not in "iu" or ts.min() < 0 or ts.max() >= T
            or np.any(ts[1:] >= ts[:-1])):
        raise ValueError(f"sampling timesteps must be distinct integers in {T - 1}..0, decreasing; got {ts.tolist()}")
    return [int(t) for t in ts]


def model_output_to_eps_x0(out, x, a_t: float, prediction: str):
    """(ε̂, x̂0) from the network's output at x_t with ᾱ_t = a_t, for each prediction type."""
    if prediction == "epsilon":
        return out, (x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
    if prediction == "v":
        return math.sqrt(1 - a_t) * x + math.sqrt(a_t) * out, math.sqrt(a_t) * x - math.sqrt(1 - a_t) * out
    if prediction == "sample":
        return (x - math.sqrt(a_t) * out) / math.sqrt(1 - a_t), out
    raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def _clip_range(clip):
    """`clip` as the samplers take it (False, True = [−1, 1], or (lo, hi)) → (lo, hi) or None."""
    if clip is True:
        return (-1.0, 1.0)
    return tuple(clip) if clip else None


def _predict_x0(model: EpsFn, x, t: int, a_t: float, clip, prediction: str):
    """One denoiser call at timestep t: (ε̂, x̂0), x̂0 clipped and ε̂ made consistent with it."""
    out = np.asarray(model(x, np.full((x.shape[0],), t, dtype=np.int64)), dtype=np.float32)
    eps, x0 = model_output_to_eps_x0(out, x, a_t, prediction)
    bounds = _clip_range(clip)
    if bounds is not None:
        x0 = np.clip(x0, *bounds)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    return eps, x0


def _draw(noise: NoiseFn, x):
    """noise(x.shape) as a float32 array."""
    return np.asarray(noise(x.shape), dtype=np.float32)


def _default_noise(x) -> NoiseFn:
    """Standard normal draws from a generator seeded 0: deterministic without a noise source."""
    return np.random.default_rng(0).standard_normal


def sample_ddpm(model: EpsFn, x: np.ndarray, abar: np.ndarray, timesteps, *, eta: float = 1.0,
                noise: Optional[NoiseFn] = None, clip=True, callback=None, prediction: str = "epsilon") -> np.ndarray:
    """DDPM ancestral sampling on the given timesteps (respaced betas 1 − ᾱ_t / ᾱ_s).

    `model(x, t)` predicts ε, v or x0 (`prediction`; any callable on arrays); `abar` is ᾱ_0..ᾱ_{T−1} (a bundle's
    schedule.npy) and `timesteps` is `sampling_timesteps(len(abar), steps)`, both computed once
    by the caller. `noise(shape)` draws each step's standard normal noise (default: a numpy
    generator seeded 0); `clip` clips x̂0 to [−1, 1] (True), to (lo, hi), or not (False);
    `callback(i, t, x)` sees x after step i.
    `eta` is accepted for the shared signature and must be 1: DDPM is DDIM with η = 1.
    """
    if eta != 1.0:
        raise ValueError(f"the ddpm sampler has eta = 1; got eta={eta}")
    ts = _check_timesteps(timesteps, len(abar))
    noise = noise or _default_noise(x)
    for i, t in enumerate(ts):
        a_t = float(abar[t])
        a_s = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        beta = 1.0 - a_t / a_s
        _, x0 = _predict_x0(model, x, t, a_t, clip, prediction)
        x = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
        if i + 1 < len(ts):
            x = x + math.sqrt(beta * (1 - a_s) / (1 - a_t)) * _draw(noise, x)
        if callback is not None:
            callback(i, t, x)
    return x


def sample_ddim(model: EpsFn, x: np.ndarray, abar: np.ndarray, timesteps, *, eta: float = 0.0,
                noise: Optional[NoiseFn] = None, clip=True, callback=None, prediction: str = "epsilon") -> np.ndarray:
    """DDIM sampling on the given timesteps; η = 0 is deterministic (only the starting noise matters).

    Song et al. 2021; η = 1 is DDPM-like. The arguments are those of `sample_ddpm`.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim eta must be in [0, 1], got {eta}")
    ts = _check_timesteps(timesteps, len(abar))
    noise = noise or _default_noise(x)
    for i, t in enumerate(ts):
        a_t = float(abar[t])
        a_s = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps, x0 = _predict_x0(model, x, t, a_t, clip, prediction)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _draw(noise, x)
        if callback is not None:
            callback(i, t, x)
    return x


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim}


def engine_batches(model: EpsFn, lo: int, hi: int) -> EpsFn:
    """eps(x, t) for any batch through a model that takes batches lo..hi only (a TensorRT profile; lo = hi for a
    static batch): bigger batches go in chunks of `hi`, smaller ones are padded to `lo` (zero x, the last t)."""
    if not 1 <= lo <= hi:
        raise ValueError(f"batch range {lo}..{hi} is not 1 <= min <= max")

    def eps(x, t):
        if lo <= x.shape[0] <= hi:
            return model(x, t)
        outs = []
        for i in range(0, x.shape[0], hi):
            xb, tb = x[i:i + hi], t[i:i + hi]
            n = xb.shape[0]
            if n < lo:
                xb = np.concatenate([xb, np.zeros((lo - n,) + xb.shape[1:], xb.dtype)])
                tb = np.concatenate([tb, np.full((lo - n,), tb[-1], tb.dtype)])
            outs.append(model(xb, tb)[:n])
        return np.concatenate(outs)

    return eps


def sample(model: EpsFn, n: int, shape: tuple, abar: np.ndarray, *, sampler: str = "ddim", steps: int = 50,
           eta: Optional[float] = None, seed: int = 0, batch_size: int = 256, clip=True,
           prediction: str = "epsilon", data_range=(-1.0, 1.0)) -> np.ndarray:
    """Draw n images in [−1, 1] with a named sampler from seeded Gaussian noise, in batches of `batch_size`.

    The starting and per-step noise come from one numpy generator seeded `seed`. Unlike the
    torch twin, which takes the config, this takes the schedule a bundle ships (and `clip`, the
    prediction type, and the network's data range, which the images are mapped back from).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    ts = sampling_timesteps(len(abar), steps)
    rng = np.random.default_rng(seed)
    kwargs = {} if eta is None else {"eta": eta}
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = rng.standard_normal((b, *shape), dtype=np.float32)
        x = SAMPLERS[sampler](model, x, abar, ts, noise=lambda s: rng.standard_normal(s, dtype=np.float32),
                              clip=clip, prediction=prediction, **kwargs)
        if tuple(data_range) == (0.0, 1.0):
            x = x * 2 - 1
        out.append(np.clip(x, -1, 1))
    return np.concatenate(out)
