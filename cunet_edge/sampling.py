"""Drawing images from a checkpoint with a named sampler: the `sample` and `evaluate` front half."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import Artifact
from .checkpoint import load_checkpoint, read_train_config, with_solver
from .config import check_choice, check_positive
from .data import save_image_grid
from .diffusion import SAMPLERS, SPACINGS, alphas_cumprod, from_model_range, sample, sampling_schedule
from .errors import ConfigError
from .kinds import MODEL_KINDS, STAGE_IO, runtime_for
from .runtimes import numpy_sampler
from .runtimes.base import open_runner
from .limits import check_fits_memory, check_fits_time, check_seed, time_one_call

__all__ = ["SampleConfig", "EvaluateConfig", "FEATURE_SPACES", "generate", "generate_with_runner", "open_for_sampling",
           "draw_images", "check_sample_request", "check_sample_time",
           "write_sample_grid"]


@dataclass(frozen=True)
class SampleConfig:
    """How to draw images: sampler, steps and timestep spacing, DDIM η, count, seed, batch size, and the ODE solver.

    `solver`/`solver_steps` run a checkpoint with another torchdiffeq solver; an unrolled
    artifact only accepts the settings baked into it (or none).
    """

    n: int = 64
    sampler: str = "ddim"
    steps: int = 50
    eta: float | None = None
    seed: int = 0
    batch_size: int = 250
    solver: str | None = None
    solver_steps: int | None = None
    spacing: str = "uniform"

    def __post_init__(self):
        check_seed(self.seed)
        check_positive("n", self.n)
        check_positive("batch_size", self.batch_size)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("spacing", self.spacing, SPACINGS)
        if self.steps < 1:
            raise ConfigError(f"sampler steps must be >= 1, got {self.steps}")
        if self.solver_steps is not None:
            check_positive("solver_steps", self.solver_steps)
        # Checked here, before any work: the numpy sampler (exported models) can only raise ValueError.
        if self.eta is not None and self.sampler == "ddpm" and self.eta != 1.0:
            raise ConfigError(f"the ddpm sampler has eta = 1; got eta={self.eta} (use --sampler ddim for other values)")
        if self.eta is not None and self.sampler in ("dpmpp2m", "unipc") and self.eta != 0.0:
            raise ConfigError(f"the {self.sampler} sampler is deterministic (eta = 0); got eta={self.eta} "
                              "(use --sampler ddim for other values)")
        if self.eta is not None and not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"ddim eta must be in [0, 1], got {self.eta}")


# The feature spaces FID/KID can be measured in: the dataset's own classifier, or Inception-v3 (torch-fidelity).
FEATURE_SPACES = ("classifier", "inception")


@dataclass(frozen=True)
class EvaluateConfig(SampleConfig):
    """A SampleConfig for FID/KID: 1,000 images by default (a 64-image FID says little; docs/results' are at 1,000).

    `features` is the space FID/KID are measured in: "classifier" (the dataset's own small classifier) or
    "inception" (torch-fidelity's Inception-v3); None picks the classifier for a labelled dataset, Inception
    otherwise. `inception_weights` is the path of the Inception weights file (default: the torch hub cache).
    """

    n: int = 1000
    features: str | None = None
    inception_weights: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.features is not None:
            check_choice("features", self.features, FEATURE_SPACES)
        if self.inception_weights is not None and self.features == "classifier":
            raise ConfigError("inception_weights is for features = \"inception\"; features is \"classifier\"")


def generate(ckpt, cfg: SampleConfig, *, progress: bool = False):
    """Draw cfg.n images in [−1, 1] from a loaded Checkpoint, seeded, batched."""
    from rich.progress import Progress


    import torch

    ckpt = with_solver(ckpt, cfg.solver, cfg.solver_steps)
    m = ckpt.config.model
    device = next(ckpt.model.parameters()).device
    b = min(cfg.batch_size, cfg.n)
    x0 = torch.zeros((b, m.in_channels, m.image_size, m.image_size), device=device)
    t0 = torch.full((b,), ckpt.config.diffusion.timesteps - 1, dtype=torch.long, device=device)
    ckpt.model.eval()

    def one_call():
        with torch.no_grad():
            ckpt.model(x0, t0)

    check_sample_time(cfg, one_call, b)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"sample {cfg.sampler} x{cfg.steps}", total=cfg.n)
        return sample(ckpt.model, cfg.n, (m.in_channels, m.image_size, m.image_size), ckpt.config.diffusion,
                      sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta, seed=cfg.seed,
                      batch_size=cfg.batch_size, device=device, spacing=cfg.spacing,
                      progress=lambda b: bar.update(task, advance=b))


def generate_with_runner(runner, cfg: SampleConfig, *, progress: bool = False):
    """Draw cfg.n images through any runner with the numpy sampler, from the torch sampler's seeded noise.

    The noise comes from the same torch generator, in the same order, as `generate`, so an
    exported model and its PyTorch parent are compared on identical noise: the images differ
    only by what export, quantization or the runtime changed.
    """
    import numpy as np
    import torch
    from rich.progress import Progress

    tc = runner.train_config()
    m = tc.model
    shape = (m.in_channels, m.image_size, m.image_size)
    # a ConfigError (not the numpy twin's ValueError) for steps or a spacing that does not fit the schedule
    ts, levels = sampling_schedule(tc.diffusion, cfg.steps, sampler=cfg.sampler, spacing=cfg.spacing)
    abar = alphas_cumprod(tc.diffusion)
    g = torch.Generator().manual_seed(cfg.seed)
    fixed = runner.static_batch()
    size = fixed or cfg.batch_size
    kwargs = {} if cfg.eta is None else {"eta": cfg.eta}
    eps, out = runner.eps_fn(), []
    b0 = fixed or min(size, cfg.n)
    x0 = np.zeros((b0, *shape), np.float32)
    t0 = np.full((b0,), tc.diffusion.timesteps - 1, np.int64)
    check_sample_time(cfg, lambda: eps(x0, t0), size)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"sample {cfg.sampler} x{cfg.steps} ({runner.name})", total=cfg.n)
        for start in range(0, cfg.n, size):
            b = min(size, cfg.n - start)

            def draw(s, b=b):  # a static-batch model gets zero rows as padding; they use no randomness
                z = torch.randn((b, *s[1:]), generator=g).numpy()
                return np.concatenate([z, np.zeros((s[0] - b, *s[1:]), np.float32)]) if s[0] > b else z

            x = numpy_sampler.SAMPLERS[cfg.sampler](eps, draw((size if fixed else b, *shape)), abar, ts, noise=draw,
                                                    levels=levels, **tc.diffusion.sampler_options(), **kwargs)
            x = from_model_range(x[:b], tc.diffusion.data_range)
            out.append(torch.from_numpy(np.clip(x, -1, 1)))
            bar.update(task, advance=b)
    return torch.cat(out)


def open_for_sampling(art: Artifact, cfg: SampleConfig, runtime: str | None = None, **options):
    """A runner for an opened artifact on `runtime` (default: the one that runs its kind), checked against
    cfg's solver."""
    return open_runner(art, runtime or runtime_for(art.kind, art.path), solver=cfg.solver,
                       solver_steps=cfg.solver_steps, **options)


def check_sample_request(art: Artifact, cfg: SampleConfig) -> None:
    """Refuse, before any work, a sample count whose images cannot be held in this machine's memory (they are held
    whole, as float32), with the estimate in the message, and sampler steps the artifact's schedule does not have
    (on every runtime: the numpy sampler of exported models as the torch one)."""
    shape = ((art.manifest.get("signature") or {}).get("inputs", {}).get("x") or {}).get("shape") or []
    pixels = math.prod(d for d in shape[1:] if isinstance(d, int)) or 1
    check_fits_memory(f"drawing {cfg.n} images", 4.0 * cfg.n * pixels,
                      f"{cfg.n} x {'x'.join(str(d) for d in shape[1:]) or pixels} float32 values held")
    if "config.json" in art.manifest["files"]:  # the sampler's options, as every runtime's sampler takes them
        sampling_schedule(read_train_config(art).diffusion, cfg.steps, sampler=cfg.sampler, spacing=cfg.spacing)


def check_sample_time(cfg: SampleConfig, one_call, batch: int) -> None:
    """Refuse, before drawing, a request estimated to run longer than the bound (limits.max_hours: 24 h, or
    $CUNET_EDGE_MAX_HOURS): one network call at the batch the sampler uses is timed, times the calls it makes
    (a batch of at most `batch` images takes `cfg.steps` calls; a lower bound: a sampler may make more)."""
    calls = math.ceil(cfg.n / batch) * cfg.steps
    per_call = time_one_call(one_call)
    check_fits_time(f"drawing {cfg.n} images", per_call * calls,
                    f"{calls} network calls of {per_call * 1000:.3g} ms at batch {min(batch, cfg.n)}, measured")


def draw_images(artifact: str | Path | Artifact, cfg: SampleConfig, *, progress: bool = False,
                runtime: str | None = None, **runner_options) -> tuple[Any, str]:
    """cfg.n images from an artifact, opened (and its hashes checked) once, and the runtime that drew them.

    Model artifacts run in PyTorch by default (the torch sampler); any artifact runs on a named
    runtime (ONNX Runtime, TensorRT, ...) through the numpy sampler, fed the same seeded noise.
    """
    kinds = STAGE_IO["sample"].accepts
    art = artifact.require(kinds) if isinstance(artifact, Artifact) else Artifact.load(artifact, kinds=kinds)
    check_sample_request(art, cfg)
    if runtime in (None, "torch") and art.kind in MODEL_KINDS and not runner_options:
        return generate(load_checkpoint(art), cfg, progress=progress), "torch"
    with open_for_sampling(art, cfg, runtime, **runner_options) as runner:
        return generate_with_runner(runner, cfg, progress=progress), runner.name


def write_sample_grid(artifact_path: str | Path, out: str | Path, cfg: SampleConfig, *, progress: bool = False,
                      runtime: str | None = None) -> Path:
    """Draw cfg.n images from an artifact (PyTorch, or any runtime) and save them as a PNG grid at `out`."""
    images, _ = draw_images(artifact_path, cfg, progress=progress, runtime=runtime)
    return save_image_grid(images, Path(out))
