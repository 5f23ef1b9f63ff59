"""DDPM noise schedules, the training loss, and the samplers (DDPM, DDIM, DPM-Solver++(2M), UniPC), for ε-, v- and
x0-prediction.

The schedule is computed in numpy float64 so the numpy sampler that runs on the device
(without torch) uses exactly the same numbers as training.

The samplers have one signature, schedule arrays in (as k-diffusion's `sample_*`):
`sample_ddim(model, x, abar, timesteps, *, eta, noise, clip, callback, prediction)`, with
`abar = alphas_cumprod(cfg)` and `timesteps, levels = sampling_schedule(cfg, steps, sampler=...,
spacing=...)` (or `timesteps = sampling_timesteps(cfg, steps)`, the uniform DDIM grid, levels
then default to ᾱ at the timesteps) computed once by the caller.
`cunet_edge.runtimes.numpy_sampler` (runtimes/numpy_sampler.py) is their numpy twin, function by
function with the same names and arguments, for runners and deployment bundles without torch;
tests/test_samplers.py pins both to the same images.
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
    "PREDICTIONS",
    "DATA_RANGES",
    "make_betas",
    "model_output_to_eps_x0",
    "to_model_range",
    "from_model_range",
    "alphas_cumprod",
    "sampling_timesteps",
    "sampling_schedule",
    "SPACINGS",
    "q_sample",
    "training_target",
    "diffusion_loss",
    "sample_ddpm",
    "sample_ddim",
    "sample_dpmpp2m",
    "sample_unipc",
    "sample",
]

SCHEDULES = ("linear", "cosine", "sigmoid", "scaled_linear", "explicit")
# What the network predicts: the noise ε (DDPM), v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022), or x0 itself.
PREDICTIONS = ("epsilon", "v", "sample")
# The range of x0 the network was trained on; images everywhere else in the toolkit are in [−1, 1].
DATA_RANGES = ((-1.0, 1.0), (0.0, 1.0))
# Where the sampler's timesteps lie (`sampling_schedule`): diffusers' timestep_spacing "linspace" / "trailing",
# or Karras et al. 2022's noise levels (diffusers' use_karras_sigmas=True). docs/samplers.md has the details.
SPACINGS = ("uniform", "trailing", "karras")
# The multistep solvers end at the clean image from their last timestep, as diffusers' schedulers with
# final_sigmas_type="zero": their uniform grid is steps + 1 points from T−1 to 0 with the 0 dropped.
_MULTISTEP = ("dpmpp2m", "unipc")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and what the network predicts.

    Schedules: `linear` in β (Ho et al.) from beta_start to beta_end; `cosine` in ᾱ (Nichol &
    Dhariwal, s = 0.008); `sigmoid` in ᾱ (Jabri et al. 2022, as denoising-diffusion-pytorch: start
    −3, end 3, τ = 1); `scaled_linear` linear in √β (diffusers, Stable Diffusion); `explicit`: the
    β_1..β_T given in `betas`. `prediction` is what the network outputs (epsilon, v or sample = x0);
    `data_range` the range of x0 it was trained on ([−1, 1] or [0, 1]), which x̂0 is clipped to.
    """

    timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    betas: tuple[float, ...] = ()
    prediction: str = "epsilon"
    data_range: tuple[float, float] = (-1.0, 1.0)
    clip_denoised: bool = True

    def __post_init__(self):
        check_positive("diffusion.timesteps", self.timesteps)
        check_choice("diffusion.schedule", self.schedule, SCHEDULES)
        check_choice("diffusion.prediction", self.prediction, PREDICTIONS)
        if tuple(self.data_range) not in DATA_RANGES:
            raise ConfigError(f"diffusion.data_range must be [-1, 1] or [0, 1], got {list(self.data_range)}")
        if self.schedule == "explicit":
            b = np.asarray(self.betas, dtype=np.float64)
            if b.size != self.timesteps:
                raise ConfigError(f"diffusion.betas holds {b.size} values but diffusion.timesteps is {self.timesteps}")
            if not (np.all(np.isfinite(b)) and np.all(b > 0) and np.all(b < 1)):
                raise ConfigError("diffusion.betas must all lie in (0, 1)")
        elif self.betas:
            raise ConfigError(f"diffusion.betas is given but diffusion.schedule is {self.schedule!r} "
                              "(use \"explicit\")")
        if self.schedule in ("linear", "scaled_linear") and not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(
                f"diffusion betas need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )

    @property
    def clip_range(self) -> tuple[float, float] | bool:
        """What the samplers clip x̂0 to: the data range, or False when clip_denoised is off."""
        return tuple(self.data_range) if self.clip_denoised else False

    def sampler_options(self) -> dict:
        """The keyword arguments every sampler step takes from the config: clip and prediction."""
        return {"clip": self.clip_range, "prediction": self.prediction}


def _betas_from_abar(f: np.ndarray) -> np.ndarray:
    """β_t = 1 − ᾱ(t/T) / ᾱ((t−1)/T) from ᾱ on the T + 1 grid points, capped at 0.999 (as Nichol & Dhariwal)."""
    return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)


def make_betas(cfg: DiffusionConfig) -> np.ndarray:
    """β_1..β_T as float64 for the config's schedule (see DiffusionConfig)."""
    T = cfg.timesteps
    if cfg.schedule == "linear":
        return np.linspace(cfg.beta_start, cfg.beta_end, T, dtype=np.float64)
    if cfg.schedule == "scaled_linear":
        return np.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, T, dtype=np.float64) ** 2
    if cfg.schedule == "explicit":
        return np.asarray(cfg.betas, dtype=np.float64)
    s = np.arange(T + 1, dtype=np.float64) / T
    if cfg.schedule == "cosine":
        return _betas_from_abar(np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
    # sigmoid, start −3, end 3, τ = 1: ᾱ(s) ∝ σ(3) − σ(−3 + 6 s). σ(±3) rounded to float32 as
    # denoising-diffusion-pytorch computes them, so the β equal that package's to float64 roundoff.
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    v_start, v_end = (float(np.float32(sig(np.float32(z)))) for z in (-3.0, 3.0))
    return _betas_from_abar((v_end - sig(-3.0 + 6.0 * s)) / (v_end - v_start))


def to_model_range(x, data_range):
    """Images in [−1, 1] → the network's x0 range (the identity for [−1, 1]); torch or numpy."""
    return (x + 1) * 0.5 if tuple(data_range) == (0.0, 1.0) else x


def from_model_range(x, data_range):
    """The network's x0 range → images in [−1, 1]; torch or numpy."""
    return x * 2 - 1 if tuple(data_range) == (0.0, 1.0) else x


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


def sampling_schedule(cfg: DiffusionConfig, steps: int, *, sampler: str = "ddim", spacing: str = "uniform"):
    """(timesteps, levels) for `steps` steps of `sampler` at a timestep spacing: the samplers' `timesteps`, `levels`.

    As diffusers' schedulers compute them (docs/samplers.md): `uniform` is DDIMScheduler's
    timestep_spacing="linspace" for ddim and ddpm (`sampling_timesteps`, today's grid) and
    DPMSolverMultistepScheduler's / UniPCMultistepScheduler's "linspace" for dpmpp2m and unipc;
    `trailing` is their "trailing"; `karras` is their use_karras_sigmas=True: Karras et al.
    2022's noise levels σ_i (ρ = 7, from σ at t = 0 to σ at T − 1), the model called at the
    rounded timestep nearest each σ_i (so a timestep may repeat, as in diffusers). `levels` is ᾱ
    at each step: ᾱ_t for uniform and trailing, 1 / (1 + σ_i²) for karras (the samplers step
    between the Karras levels, as diffusers does). The ᾱ table stays `alphas_cumprod(cfg)`.
    """
    check_choice("sampler", sampler, SAMPLERS)
    check_choice("spacing", spacing, SPACINGS)
    if not isinstance(steps, (int, np.integer)) or steps < 1 or steps > cfg.timesteps:
        raise ConfigError(f"sampler steps must be an integer in 1..{cfg.timesteps}, got {steps}")
    ts, levels = _schedule(alphas_cumprod(cfg), int(steps), sampler, spacing)
    if np.any(np.diff(levels) <= 0):
        raise ConfigError(f"the {spacing} spacing repeats timesteps at {steps} {sampler} steps (T = {cfg.timesteps}); "
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


def q_sample(x0, t, noise, abar):
    """Diffuse clean images to timestep t: sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε (torch tensors)."""
    a = abar.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def training_target(prediction: str, x0, noise, a_t):
    """What the network is trained to output at x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε: ε, v = √ᾱ_t ε − √(1−ᾱ_t) x0, or x0.

    `a_t` holds ᾱ_t per batch row (torch tensors)."""
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "epsilon":
        return noise
    if prediction == "sample":
        return x0
    a = a_t.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def diffusion_loss(model, x0, abar, generator=None, *, prediction: str = "epsilon", teacher=None,
                   distill_weight: float = 0.0):
    """The simple loss of DDPM, E_{t, ε} ‖target − f_θ(x_t, t)‖², t uniform on 0..T−1.

    `x0` is in the network's data range. The target is what the network predicts: ε, v =
    √ᾱ ε − √(1−ᾱ) x0, or x0 (`prediction`). With a `teacher`, plus distill_weight ·
    ‖f_teacher(x_t, t) − f_θ(x_t, t)‖² on the same x_t: distillation toward the (frozen) teacher's
    output. The random draws are the same either way.
    """
    import torch

    T = abar.shape[0]
    t = torch.randint(0, T, (x0.shape[0],), generator=generator, device="cpu").to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
    x_t = q_sample(x0, t, noise, abar)
    out = model(x_t, t)
    loss = torch.nn.functional.mse_loss(out, training_target(prediction, x0, noise, abar.to(x0.device)[t]))
    if teacher is not None and distill_weight > 0:
        with torch.no_grad():
            target = teacher(x_t, t)
        loss = loss + distill_weight * torch.nn.functional.mse_loss(out, target)
    return loss


def _check_schedule(abar, timesteps, levels):
    """The sampling timesteps as ints, and ᾱ at each (`levels`, default ᾱ[t]) followed by 1.0, the clean image.

    Timesteps are a non-empty 1-d integer sequence in T−1..0, strictly decreasing; with explicit levels (Karras
    spacing) they may repeat, and the levels must increase.
    """
    T = len(abar)
    ts = np.asarray(timesteps)
    if (ts.ndim != 1 or ts.size == 0 or ts.dtype.kind not in "iu" or ts.min() < 0 or ts.max() >= T
            or np.any(ts[1:] > ts[:-1]) or (levels is None and np.any(ts[1:] == ts[:-1]))):
        raise ConfigError(f"sampling timesteps must be distinct integers in {T - 1}..0, decreasing; got {ts.tolist()}")
    if levels is None:
        return [int(t) for t in ts], [float(abar[t]) for t in ts] + [1.0]
    lv = np.asarray(levels, dtype=np.float64)
    if lv.shape != ts.shape or not np.all((lv > 0) & (lv < 1)) or np.any(lv[1:] <= lv[:-1]):
        raise ConfigError(f"sampling levels must be one ᾱ in (0, 1) per timestep, increasing; got {lv.tolist()}")
    return [int(t) for t in ts], [float(v) for v in lv] + [1.0]


def model_output_to_eps_x0(out, x, a_t: float, prediction: str):
    """(ε̂, x̂0) from the network's output at x_t with ᾱ_t = a_t, for each prediction type; torch or numpy."""
    if prediction == "epsilon":
        return out, (x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
    if prediction == "v":
        return math.sqrt(1 - a_t) * x + math.sqrt(a_t) * out, math.sqrt(a_t) * x - math.sqrt(1 - a_t) * out
    if prediction == "sample":
        return (x - math.sqrt(a_t) * out) / math.sqrt(1 - a_t), out
    raise ConfigError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def _clip_range(clip) -> tuple[float, float] | None:
    """`clip` as the samplers take it (False, True = [−1, 1], or (lo, hi)) → (lo, hi) or None."""
    if clip is True:
        return (-1.0, 1.0)
    return tuple(clip) if clip else None


def _predict_x0(model, x, t: int, a_t: float, clip, prediction: str):
    """One denoiser call at timestep t: (ε̂, x̂0), x̂0 clipped and ε̂ made consistent with it."""
    import torch

    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    eps, x0 = model_output_to_eps_x0(model(x, tt), x, a_t, prediction)
    bounds = _clip_range(clip)
    if bounds is not None:
        x0 = x0.clamp(*bounds)
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


def sample_ddpm(model, x, abar, timesteps, *, eta: float = 1.0, noise: NoiseFn | None = None, clip=True,
                callback: Callable | None = None, prediction: str = "epsilon", levels=None):
    """DDPM ancestral sampling on the given timesteps (respaced betas 1 − ᾱ_t / ᾱ_s).

    `model(x, t)` predicts ε, v or x0 (`prediction`); `abar` is `alphas_cumprod(cfg)` and `timesteps` is
    `sampling_timesteps(cfg, steps)`, both computed once by the caller. With fewer timesteps
    than T, Ho et al. 2020's chain uses the respaced betas β' = 1 − ᾱ_t / ᾱ_s between
    consecutive kept timesteps (Nichol & Dhariwal 2021). `noise(shape)` draws each step's standard normal noise
    (default: a torch generator seeded 0); `clip` clips x̂0 to [−1, 1] (True), to (lo, hi), or not
    (False) — `cfg.sampler_options()` gives clip and prediction from the config;
    `callback(i, t, x)` sees x after step i; `levels` is ᾱ at each step (default ᾱ[timesteps];
    `sampling_schedule` gives both). `eta` is accepted for the shared signature and must be 1:
    DDPM is DDIM with η = 1.
    """
    if eta != 1.0:
        raise ConfigError(f"the ddpm sampler has eta = 1; got eta={eta} (use --sampler ddim for other values)")
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


def sample_ddim(model, x, abar, timesteps, *, eta: float = 0.0, noise: NoiseFn | None = None, clip=True,
                callback: Callable | None = None, prediction: str = "epsilon", levels=None):
    """DDIM sampling on the given timesteps; η = 0 is deterministic (only the starting noise matters).

    Song et al. 2021; η = 1 is DDPM-like. The arguments are those of `sample_ddpm`.
    """
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"ddim eta must be in [0, 1], got {eta}")
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
        raise ConfigError(f"the {name} sampler is deterministic (eta = 0); got eta={eta} (use --sampler ddim for other "
                          "values)")


# The two multistep solvers below are written by hand (a few lines each) so that the numpy twin can carry the
# same arithmetic to a board without torch; they equal diffusers' DPMSolverMultistepScheduler (dpmsolver++,
# order 2, midpoint, lower_order_final, final_sigmas_type="zero") and UniPCMultistepScheduler (bh2, order 2,
# predict_x0) step for step, which tests/test_samplers.py checks on the same model and noise. In the notation of
# the papers: α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t / σ_t), h = λ_s − λ_t; the step after the last
# timestep goes to σ = 0, where the first-order update is x̂0 itself.


def _lam(a: float) -> float:
    """λ = log(α / σ) at ᾱ = a (half the log-SNR)."""
    return 0.5 * math.log(a / (1 - a))


def sample_dpmpp2m(model, x, abar, timesteps, *, eta: float = 0.0, noise: NoiseFn | None = None, clip=True,
                   callback: Callable | None = None, prediction: str = "epsilon", levels=None):
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


def _unipc_rhos(h: float, r1: float | None) -> tuple[float, list[float]]:
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


def sample_unipc(model, x, abar, timesteps, *, eta: float = 0.0, noise: NoiseFn | None = None, clip=True,
                 callback: Callable | None = None, prediction: str = "epsilon", levels=None):
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


def sample(model, n: int, shape: tuple[int, int, int], cfg: DiffusionConfig, *, sampler: str = "ddim",
           steps: int = 50, eta: float | None = None, seed: int = 0, batch_size: int = 256,
           device="cpu", progress: Callable | None = None, spacing: str = "uniform"):
    """Draw n images in [−1, 1] with a named sampler from seeded Gaussian noise, in batches of `batch_size`.

    The starting and per-step noise come from one torch generator seeded `seed`. Unlike the
    numpy twin, which gets the deployed schedule, this takes the config: it computes ᾱ and the
    timesteps once from `cfg` (`sampling_schedule`, at `spacing`), reads the network's output as
    `cfg.prediction` says, clips x̂0 as `cfg.clip_denoised` says, and maps the network's data range back to [−1, 1].
    """
    import torch

    check_choice("sampler", sampler, SAMPLERS)
    check_positive("number of samples", n)
    abar = alphas_cumprod(cfg)
    ts, levels = sampling_schedule(cfg, steps, sampler=sampler, spacing=spacing)  # validates steps before any work
    kwargs = {} if eta is None else {"eta": eta}
    g = torch.Generator().manual_seed(seed)
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = torch.randn((b, *shape), generator=g).to(device)
            x = SAMPLERS[sampler](model, x, abar, ts, noise=lambda s, d=x.dtype: torch.randn(s, generator=g, dtype=d),
                                  **cfg.sampler_options(), levels=levels, **kwargs)
            out.append(from_model_range(x, cfg.data_range).clamp(-1, 1).cpu())
            if progress is not None:
                progress(b)
    return torch.cat(out)
