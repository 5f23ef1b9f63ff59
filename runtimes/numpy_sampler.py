"""DDPM, DDIM, DPM-Solver++(2M) and UniPC in numpy alone, driving any denoiser callable (a runner, an engine).

This file imports nothing but numpy and the standard library: deployment bundles ship it as
is beside a runner that needs no torch. It is the numpy twin of the torch samplers in
`cunet_edge.diffusion`: the same functions under the same names, with the same arguments in
the same order, schedule arrays in (as k-diffusion's `sample_*`):
`sample_ddim(model, x, abar, timesteps, *, eta, noise, clip, callback, prediction)`, with
`timesteps, levels = sampling_schedule(abar, steps, sampler=..., spacing=...)` (or
`timesteps = sampling_timesteps(len(abar), steps)`) computed once by the caller. The
arithmetic is the same (float32 images, float64 schedule coefficients), so with the same
denoiser and the same noise both draw the same images; tests/test_samplers.py pins that.
Bad arguments raise ValueError (the library's ConfigError is out of reach from here).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

__all__ = ["sampling_timesteps", "sampling_schedule", "SPACINGS", "model_output_to_eps_x0", "sample_ddpm",
           "sample_ddim", "sample_dpmpp2m", "sample_unipc", "SAMPLERS", "sample"]

PREDICTIONS = ("epsilon", "v", "sample")
SPACINGS = ("uniform", "trailing", "karras")
_MULTISTEP = ("dpmpp2m", "unipc")

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


def sampling_schedule(abar: np.ndarray, steps: int, *, sampler: str = "ddim", spacing: str = "uniform"):
    """(timesteps, levels) for `steps` steps of `sampler` at a timestep spacing: the samplers' `timesteps`, `levels`.

    `abar` is ᾱ_0..ᾱ_{T−1} (a bundle's schedule.npy); the torch twin, which takes the config,
    documents the spacings (diffusers' "linspace" and "trailing", and use_karras_sigmas=True).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    abar = np.asarray(abar, dtype=np.float64)
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= len(abar):
        raise ValueError(f"sampler steps must be an integer in 1..{len(abar)}, got {steps}")
    ts, levels = _schedule(abar, int(steps), sampler, spacing)
    if np.any(np.diff(levels) <= 0):
        raise ValueError(f"the {spacing} spacing repeats timesteps at {steps} {sampler} steps (T = {len(abar)}); "
                         "use fewer steps or another spacing")
    return ts, levels


def _schedule(abar: np.ndarray, steps: int, sampler: str, spacing: str):
    """(timesteps, levels) of `sampling_schedule` on a ᾱ table, arguments checked (the same code in both twins)."""
    T = len(abar)
    if spacing == "uniform" and sampler not in _MULTISTEP:
        ts = np.array([T - 1]) if steps == 1 else np.round(np.linspace(T - 1, 0, steps))
    elif spacing == "uniform":
        ts = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "trailing":  # [:steps]: diffusers' arange can overshoot by one point (to −1) at some steps
        ts = np.arange(T, 0, -T / steps).round()[:steps] - 1
    else:
        sig = np.sqrt((1 - abar) / abar)
        lo, hi = sig[0] ** (1 / 7.0), sig[-1] ** (1 / 7.0)
        levels = (hi + np.linspace(0, 1, steps) * (lo - hi)) ** 7.0
        ts = np.round(_sigma_to_t(levels, np.log(sig))).astype(np.int64)
        return ts, 1.0 / (1.0 + levels**2)
    ts = ts.astype(np.int64)
    return ts, abar[ts]


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timesteps of noise levels σ by interpolation in log σ (diffusers' `_sigma_to_t`, vectorised)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def _check_schedule(abar, timesteps, levels):
    """The sampling timesteps as ints, and ᾱ at each (`levels`, default ᾱ[t]) followed by 1.0, the clean image.

    Timesteps are a non-empty 1-d integer sequence in T−1..0, strictly decreasing; with explicit levels (Karras
    spacing) they may repeat, and the levels must increase.
    """
    T = len(abar)
    ts = np.asarray(timesteps)
    if (ts.ndim != 1 or ts.size == 0 or ts.dtype.kind not in "iu" or ts.min() < 0 or ts.max() >= T
            or np.any(ts[1:] > ts[:-1]) or (levels is None and np.any(ts[1:] == ts[:-1]))):
        raise ValueError(f"sampling timesteps must be distinct integers in {T - 1}..0, decreasing; got {ts.tolist()}")
    if levels is None:
        return [int(t) for t in ts], [float(abar[t]) for t in ts] + [1.0]
    lv = np.asarray(levels, dtype=np.float64)
    if lv.shape != ts.shape or not np.all((lv > 0) & (lv < 1)) or np.any(lv[1:] <= lv[:-1]):
        raise ValueError(f"sampling levels must be one ᾱ in (0, 1) per timestep, increasing; got {lv.tolist()}")
    return [int(t) for t in ts], [float(v) for v in lv] + [1.0]


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
                noise: Optional[NoiseFn] = None, clip=True, callback=None, prediction: str = "epsilon",
                levels=None) -> np.ndarray:
    """DDPM ancestral sampling on the given timesteps (respaced betas 1 − ᾱ_t / ᾱ_s).

    `model(x, t)` predicts ε, v or x0 (`prediction`; any callable on arrays); `abar` is ᾱ_0..ᾱ_{T−1} (a bundle's
    schedule.npy) and `timesteps` is `sampling_timesteps(len(abar), steps)`, both computed once
    by the caller. `noise(shape)` draws each step's standard normal noise (default: a numpy
    generator seeded 0); `clip` clips x̂0 to [−1, 1] (True), to (lo, hi), or not (False);
    `callback(i, t, x)` sees x after step i; `levels` is ᾱ at each step (default ᾱ[timesteps];
    `sampling_schedule` gives both). `eta` is accepted for the shared signature and must be 1: DDPM is DDIM with η = 1.
    """
    if eta != 1.0:
        raise ValueError(f"the ddpm sampler has eta = 1; got eta={eta}")
    ts, a = _check_schedule(abar, timesteps, levels)
    noise = noise or _default_noise(x)
    for i, t in enumerate(ts):
        a_t, a_s = a[i], a[i + 1]
        beta = 1.0 - a_t / a_s
        _, x0 = _predict_x0(model, x, t, a_t, clip, prediction)
        x = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
        if i + 1 < len(ts):
            x = x + math.sqrt(beta * (1 - a_s) / (1 - a_t)) * _draw(noise, x)
        if callback is not None:
            callback(i, t, x)
    return x


def sample_ddim(model: EpsFn, x: np.ndarray, abar: np.ndarray, timesteps, *, eta: float = 0.0,
                noise: Optional[NoiseFn] = None, clip=True, callback=None, prediction: str = "epsilon",
                levels=None) -> np.ndarray:
    """DDIM sampling on the given timesteps; η = 0 is deterministic (only the starting noise matters).

    Song et al. 2021; η = 1 is DDPM-like. The arguments are those of `sample_ddpm`.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim eta must be in [0, 1], got {eta}")
    ts, a = _check_schedule(abar, timesteps, levels)
    noise = noise or _default_noise(x)
    for i, t in enumerate(ts):
        a_t, a_s = a[i], a[i + 1]
        eps, x0 = _predict_x0(model, x, t, a_t, clip, prediction)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _draw(noise, x)
        if callback is not None:
            callback(i, t, x)
    return x


def _check_deterministic(name: str, eta: float):
    if eta != 0.0:
        raise ValueError(f"the {name} sampler is deterministic (eta = 0); got eta={eta}")


# The two multistep solvers below are written by hand (a few lines each) so that the numpy twin can carry the
# same arithmetic to a board without torch; they equal diffusers' DPMSolverMultistepScheduler (dpmsolver++,
# order 2, midpoint, lower_order_final, final_sigmas_type="zero") and UniPCMultistepScheduler (bh2, order 2,
# predict_x0) step for step, which tests/test_samplers.py checks on the same model and noise. In the notation of
# the papers: α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t / σ_t), h = λ_s − λ_t; the step after the last
# timestep goes to σ = 0, where the first-order update is x̂0 itself.


def _lam(a: float) -> float:
    """λ = log(α / σ) at ᾱ = a (half the log-SNR)."""
    return 0.5 * math.log(a / (1 - a))


def sample_dpmpp2m(model: EpsFn, x: np.ndarray, abar: np.ndarray, timesteps, *, eta: float = 0.0,
                   noise: Optional[NoiseFn] = None, clip=True,
                   callback=None, prediction: str = "epsilon", levels=None) -> np.ndarray:
    """DPM-Solver++(2M) on the given timesteps: deterministic, second order, one network call per step.

    Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
    Models" (arXiv:2211.01095), Algorithm 2: the multistep data-prediction solver. The first step
    and the last (to σ = 0) are first order (DDIM), the usual lower-order ends. The arguments are
    those of `sample_ddpm`; `eta` must be 0 and `noise` is never drawn from.
    """
    _check_deterministic("dpmpp2m", eta)
    ts, a = _check_schedule(abar, timesteps, levels)
    prev = None  # (λ, x̂0) of the previous step
    for i, t in enumerate(ts):
        _, x0 = _predict_x0(model, x, t, a[i], clip, prediction)
        lam_t = _lam(a[i])
        if i + 1 == len(ts):
            x = x0
        else:
            h = _lam(a[i + 1]) - lam_t
            d = x0 if prev is None else x0 + (0.5 * h / (lam_t - prev[0])) * (x0 - prev[1])
            x = math.sqrt((1 - a[i + 1]) / (1 - a[i])) * x - (math.sqrt(a[i + 1]) * math.expm1(-h)) * d
        prev = (lam_t, x0)
        if callback is not None:
            callback(i, t, x)
    return x


def _unipc_rhos(h: float, r1: Optional[float]) -> tuple:
    """e^{−h} − 1 (hφ₁ and, with bh2, B(h) of the data-prediction update) and UniC's ρ: for order 1 (r1 None)
    ρ = ½, for order 2 the solution of R ρ = b."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    if r1 is None:
        return h_phi_1, [0.5]
    h_phi_k, b = h_phi_1 / hh - 1, []
    for k, fact in ((1, 1), (2, 2)):
        b.append(h_phi_k * fact / h_phi_1)
        h_phi_k = h_phi_k / hh - 1 / (fact * (k + 1))
    rho0 = (b[0] - b[1]) / (1 - r1)  # [[1, 1], [r1, 1]] ρ = b
    return h_phi_1, [rho0, b[0] - rho0]


def sample_unipc(model: EpsFn, x: np.ndarray, abar: np.ndarray, timesteps, *, eta: float = 0.0,
                   noise: Optional[NoiseFn] = None, clip=True,
                 callback=None, prediction: str = "epsilon", levels=None) -> np.ndarray:
    """UniPC (B(h) = e^h − 1, "bh2", order 2) on the given timesteps: deterministic, one network call per step.

    Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
    Diffusion Models" (arXiv:2302.04867), data prediction: each step's network output first
    corrects the sample it was computed at (UniC, using no extra call), then predicts the next
    (UniP-2, first order at the first and last steps). The arguments are those of `sample_ddpm`;
    `eta` must be 0 and `noise` is never drawn from.
    """
    _check_deterministic("unipc", eta)
    ts, a = _check_schedule(abar, timesteps, levels)
    lam = [_lam(v) for v in a[:-1]]
    m, last, order = [], None, 1  # x̂0 of the last 3 steps; the sample before the last prediction; its order
    for i, t in enumerate(ts):
        _, x0 = _predict_x0(model, x, t, a[i], clip, prediction)
        m = m[-2:] + [x0]  # m[-1] is this step's x̂0, m[-2] the previous step's, m[-3] the one before
        if i + 1 == len(ts):
            x = x0
        else:
            if i > 0:  # UniC: correct x_t with this step's x̂0, at the order of the prediction that made it
                h = lam[i] - lam[i - 1]
                r1 = (lam[i - 2] - lam[i - 1]) / h if order == 2 else None
                h_phi_1, rho = _unipc_rhos(h, r1)
                corr = rho[-1] * (m[-1] - m[-2])
                if r1 is not None:
                    corr = corr + (rho[0] / r1) * (m[-3] - m[-2])
                x = (math.sqrt((1 - a[i]) / (1 - a[i - 1])) * last - (math.sqrt(a[i]) * h_phi_1) * m[-2]
                     - (math.sqrt(a[i]) * h_phi_1) * corr)
            order = min(2, i + 1)  # (the last step, first order, is x̂0 above)
            last = x
            h = lam[i + 1] - lam[i]
            h_phi_1 = math.expm1(-h)
            x = math.sqrt((1 - a[i + 1]) / (1 - a[i])) * x - (math.sqrt(a[i + 1]) * h_phi_1) * x0
            if order == 2:  # UniP-2 (ρ = ½): with bh2 the same update as DPM-Solver++(2M)
                r1 = (lam[i - 1] - lam[i]) / h
                x = x - (math.sqrt(a[i + 1]) * h_phi_1 * 0.5 / r1) * (m[-2] - x0)
        if callback is not None:
            callback(i, t, x)
    return x



SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpmpp2m": sample_dpmpp2m, "unipc": sample_unipc}


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
           prediction: str = "epsilon", data_range=(-1.0, 1.0), spacing: str = "uniform") -> np.ndarray:
    """Draw n images in [−1, 1] with a named sampler from seeded Gaussian noise, in batches of `batch_size`.

    The starting and per-step noise come from one numpy generator seeded `seed`. Unlike the
    torch twin, which takes the config, this takes the schedule a bundle ships (and `clip`, the
    prediction type, and the network's data range, which the images are mapped back from), and the
    timestep `spacing` (`sampling_schedule`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    ts, levels = sampling_schedule(abar, steps, sampler=sampler, spacing=spacing)
    rng = np.random.default_rng(seed)
    kwargs = {} if eta is None else {"eta": eta}
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = rng.standard_normal((b, *shape), dtype=np.float32)
        x = SAMPLERS[sampler](model, x, abar, ts, noise=lambda s: rng.standard_normal(s, dtype=np.float32),
                              clip=clip, prediction=prediction, levels=levels, **kwargs)
        if tuple(data_range) == (0.0, 1.0):
            x = x * 2 - 1
        out.append(np.clip(x, -1, 1))
    return np.concatenate(out)
