"""DDPM noise schedules, the training loss, and the DDPM and DDIM samplers, for ε-, v- and x0-prediction.

The schedule is computed in numpy float64 so the numpy sampler that runs on the device
(without torch) uses exactly the same numbers as training.

The samplers have one signature, schedule arrays in (as k-diffusion's `sample_*`):
`sample_ddim(model, x, abar, timesteps, *, eta, noise, clip, callback, prediction)`, with
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
    "PREDICTIONS",
    "DATA_RANGES",
    "make_betas",
    "model_output_to_eps_x0",
    "to_model_range",
    "from_model_range",
    "alphas_cumprod",
    "sampling_timesteps",
    "q_sample",
    "training_target",
    "diffusion_loss",
    "sample_ddpm",
    "sample_ddim",
    "sample",
]

SCHEDULES = ("linear", "cosine", "sigmoid", "scaled_linear", "explicit")
# What the network predicts: the noise ε (DDPM), v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022), or x0 itself.
PREDICTIONS = ("epsilon", "v", "sample")
# The range of x0 the network was trained on; images everywhere else in the toolkit are in [−1, 1].
DATA_RANGES = ((-1.0, 1.0), (0.0, 1.0))


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


def _check_timesteps(timesteps, T: int) -> list[int]:
    """The sampling timesteps as ints: a non-empty 1-d integer sequence in T−1..0, strictly decreasing."""
    ts = np.asarray(timesteps)
    if (ts.ndim != 1 or ts.size == 0 or ts.dtype.kind not in "iu" or ts.min() < 0 or ts.max() >= T
            or np.any(ts[1:] >= ts[:-1])):
        raise ConfigError(f"sampling timesteps must be distinct integers in {T - 1}..0, decreasing; got {ts.tolist()}")
    return [int(t) for t in ts]


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
                callback: Callable | None = None, prediction: str = "epsilon"):
    """DDPM ancestral sampling on the given timesteps (respaced betas 1 − ᾱ_t / ᾱ_s).

    `model(x, t)` predicts ε, v or x0 (`prediction`); `abar` is `alphas_cumprod(cfg)` and `timesteps` is
    `sampling_timesteps(cfg, steps)`, both computed once by the caller. With fewer timesteps
    than T, Ho et al. 2020's chain uses the respaced betas β' = 1 − ᾱ_t / ᾱ_s between
    consecutive kept timesteps (Nichol & Dhariwal 2021). `noise(shape)` draws each step's standard normal noise
    (default: a torch generator seeded 0); `clip` clips x̂0 to [−1, 1] (True), to (lo, hi), or not
    (False) — `cfg.sampler_options()` gives clip and prediction from the config;
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
        _, x0 = _predict_x0(model, x, t, a_t, clip, prediction)
        x = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
        if i + 1 < len(ts):
            x = x + math.sqrt(beta * (1 - a_s) / (1 - a_t)) * _draw(noise, x)
        if callback is not None:
            callback(i, t, x)
    return x


def sample_ddim(model, x, abar, timesteps, *, eta: float = 0.0, noise: NoiseFn | None = None, clip=True,
                callback: Callable | None = None, prediction: str = "epsilon"):
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
        eps, x0 = _predict_x0(model, x, t, a_t, clip, prediction)
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
    timesteps once from `cfg`, reads the network's output as `cfg.prediction` says, clips x̂0 as
    `cfg.clip_denoised` says, and maps the network's data range back to [−1, 1].
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
                                  **cfg.sampler_options(), **kwargs)
            out.append(from_model_range(x, cfg.data_range).clamp(-1, 1).cpu())
            if progress is not None:
                progress(b)
    return torch.cat(out)
