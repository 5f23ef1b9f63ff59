"""Drawing images from a checkpoint with a named sampler: the `sample` and `evaluate` front half."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import check_choice, check_positive
from .errors import ConfigError

__all__ = ["SampleConfig", "generate", "write_sample_grid"]


@dataclass(frozen=True)
class SampleConfig:
    """How to draw images: sampler name and steps, DDIM η, count, seed, batch size, and the ODE solver.

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

    def __post_init__(self):
        from .diffusion import SAMPLERS

        check_positive("n", self.n)
        check_positive("batch_size", self.batch_size)
        check_choice("sampler", self.sampler, SAMPLERS)
        if self.steps < 1:
            raise ConfigError(f"sampler steps must be >= 1, got {self.steps}")
        if self.solver_steps is not None:
            check_positive("solver_steps", self.solver_steps)


def generate(ckpt, cfg: SampleConfig, *, progress: bool = False):
    """Draw cfg.n images in [−1, 1] from a loaded Checkpoint, seeded, batched."""
    from rich.progress import Progress

    from .checkpoint import with_solver
    from .diffusion import sample

    ckpt = with_solver(ckpt, cfg.solver, cfg.solver_steps)
    m = ckpt.config.model
    device = next(ckpt.model.parameters()).device
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"sample {cfg.sampler} x{cfg.steps}", total=cfg.n)
        return sample(ckpt.model, cfg.n, (m.in_channels, m.image_size, m.image_size), ckpt.config.diffusion,
                      sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta, seed=cfg.seed,
                      batch_size=cfg.batch_size, device=device,
                      progress=lambda b: bar.update(task, advance=b))


def write_sample_grid(artifact_path: str | Path, out: str | Path, cfg: SampleConfig, *, progress: bool = False) -> Path:
    """Load a checkpoint, draw cfg.n images and save them as a PNG grid at `out`."""
    from .checkpoint import load_checkpoint
    from .data import save_image_grid

    ckpt = load_checkpoint(artifact_path)
    images = generate(ckpt, cfg, progress=progress)
    save_image_grid(images, Path(out))
    return Path(out)
