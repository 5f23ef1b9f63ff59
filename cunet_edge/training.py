"""Training: DDPM ε-prediction with EMA, seeded and resumable, single process or DDP via torchrun.

Randomness for step k on rank r comes from a generator seeded with (seed, r, k), so a run
resumed from its own checkpoint draws exactly the batches and noise it would have drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .artifact import Artifact, check_output_path
from .checkpoint import TrainConfig, load_train_state, save_checkpoint, train_config_from_dict
from .config import to_dict
from .data import image_channels, load_images
from .diffusion import alphas_cumprod, diffusion_loss, sample, to_model_range
from .errors import ArtifactError, ConfigError
from .kinds import STAGE_IO
from .models import build_model
from .models.explicit import UNROLLABLE
from .limits import check_threads

__all__ = ["train", "fit", "training_model_config", "launch_data_parallel"]

def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def training_model_config(cfg: TrainConfig):
    """The model config the optimizer steps through: a fixed-step solver as the explicit loop (see explicit_solver)."""
    s = getattr(cfg.model, "solver", None)
    if not cfg.explicit_solver or s is None or s.unrolled or s.adjoint or s.method not in UNROLLABLE:
        return cfg.model
    if s.method == "euler" and s.steps == 1:  # x(1) = x + v never reads the ODE function: its weights
        return cfg.model  # would get no gradient at all (DDP refuses that); torchdiffeq gives them zeros
    return dataclasses.replace(cfg.model, solver=dataclasses.replace(s, unrolled=True))


def _ema_update(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for name, p in model.state_dict().items():
            e = ema[name]
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
            else:
                e.copy_(p)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> _Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on GPU)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(device="cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = "cpu"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return _Dist(rank=rank, world=dist.get_world_size(), device=device)


def _step_generator(seed: int, rank: int, step: int):
    """A generator seeded from (seed, rank, step): resuming replays the same randomness."""
    import numpy as np
    import torch

    s = int(np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(s)


def _resume_state(out: Path, cfg: TrainConfig) -> dict | None:
    """State to resume from if `out` is this run's own checkpoint; None if `out` is new."""
    if not out.exists():
        return None
    art = Artifact.load(out, kinds=[STAGE_IO["train"].produces()])
    # Compare parsed configs, so fields added since (with their defaults) do not count as changes.
    try:
        saved = to_dict(train_config_from_dict(art.config))
    except ConfigError as exc:
        raise ArtifactError(f"{out} holds a checkpoint whose config is not valid: {exc}") from None
    mine = to_dict(cfg)
    saved.pop("steps", None), mine.pop("steps", None)
    if saved != mine:
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        raise ArtifactError(
            f"{out} holds a checkpoint trained with a different config ({', '.join(diff)} differ); "
            "resume with the same settings or choose a new --out"
        )
    return load_train_state(art)


def _progress_bar(enabled: bool, label: str = "train"):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} it/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False,
    )


def _optimizer_step(cfg: TrainConfig, net, model, opt, x0, abar, g, step: int, loss_fn) -> float:
    """One AdamW step on `loss_fn` (scheduled lr, gradient clipping); returns the loss."""
    import torch

    for group in opt.param_groups:
        group["lr"] = _lr_at(cfg, step)
    loss = loss_fn(net, x0, abar, generator=g)
    if not torch.isfinite(loss):
        raise ConfigError(f"training diverged at step {step} (loss {loss.item()}); lower the lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss.item()


def _save(out: Path, cfg: TrainConfig, model, opt, ema: dict, step: int, *, final: bool, device):
    """Write the checkpoint (EMA weights, resume state; on the final save a sample grid too)."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
    samples = None
    if final:
        ema_model = build_model(training_model_config(cfg)).to(device)
        ema_model.load_state_dict(ema)
        m = cfg.model
        samples = sample(ema_model, cfg.sample_n, (m.in_channels, m.image_size, m.image_size), cfg.diffusion,
                         sampler="ddim", steps=cfg.sample_steps, seed=cfg.seed, device=device)
    return save_checkpoint(out, cfg, ema, step=step, train_state=state, samples=samples, replace=out.exists())


def fit(cfg: TrainConfig, model, opt, ema: dict, images, *, start: int = 0, dist: _Dist | None = None, net=None,
        loss_fn=None, progress: bool = True, label: str = "train", after_step=None) -> float:
    """The training loop: AdamW steps start..cfg.steps on seeded batches of `images`, EMA, progress bar.

    `loss_fn(net, x0, abar, generator=g)` defaults to the DDPM loss; `after_step(k)` runs after
    the k-th step (checkpoint saves). `ema` (a state dict) is updated in place. Returns the last loss.
    """
    import torch

    d = dist or _Dist(device=str(images.device))
    loss_fn = loss_fn or functools.partial(diffusion_loss, prediction=cfg.diffusion.prediction)
    abar = torch.tensor(alphas_cumprod(cfg.diffusion), dtype=torch.float32)
    per_rank = cfg.batch_size // d.world
    loss = float("nan")
    with _progress_bar(progress and d.main, label) as bar:
        task = bar.add_task(label, total=cfg.steps, completed=start, loss=float("nan"), rate=0.0)
        t0, done = time.perf_counter(), 0
        for step in range(start, cfg.steps):
            g = _step_generator(cfg.seed, d.rank, step)
            x0 = images[torch.randint(0, images.shape[0], (per_rank,), generator=g).to(d.device)]
            x0 = to_model_range(x0, cfg.diffusion.data_range)
            loss = _optimizer_step(cfg, net or model, model, opt, x0, abar, g, step, loss_fn)
            # Ramp the decay up ((1+k)/(10+k)) so the early, poor weights fade fast in short runs:
            # a plain running mean up to the horizon kept them and raised FID 3x on digits.
            _ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
            done += 1
            bar.update(task, advance=1, loss=loss, rate=done / (time.perf_counter() - t0))
            if after_step is not None:
                after_step(step + 1)
    return loss


def train(cfg: TrainConfig, out: str | Path, *, progress: bool = True, threads: int | None = None):
    """Train a denoiser with the DDPM loss and write (or resume) the checkpoint artifact at `out`.

    Returns the artifact on the main process (None on the other DDP ranks).
    """
    import torch

    out = check_output_path(out, exist_ok=True)
    if threads is not None:
        check_threads(threads)
    if cfg.model.in_channels != image_channels(cfg.data):
        raise ConfigError(
            f"model.in_channels {cfg.model.in_channels} but dataset {cfg.data.name} has "
            f"{image_channels(cfg.data)} channel(s)"
        )
    resume = _resume_state(out, cfg)
    if resume is not None and resume["step"] >= cfg.steps:
        return Artifact.load(out)
    if threads:
        torch.set_num_threads(threads)
    d = _init_distributed()
    if cfg.batch_size % d.world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {d.world} processes")
    torch.manual_seed(cfg.seed)
    model = build_model(training_model_config(cfg)).to(d.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        ema = {k: v.to(d.device) for k, v in resume["ema"].items()}
        start = resume["step"]
    net = model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    images, _ = load_images(cfg.data, "train")
    images = images.to(d.device)

    def save_periodically(step: int):
        if d.main and step % cfg.save_every == 0 and step < cfg.steps:
            _save(out, cfg, model, opt, ema, step, final=False, device=d.device)

    fit(cfg, model, opt, ema, images, start=start, dist=d, net=net, progress=progress, after_step=save_periodically)
    art = _save(out, cfg, model, opt, ema, cfg.steps, final=True, device=d.device) if d.main else None
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return art


def launch_data_parallel(procs: int, train_args: list[str]) -> int:
    """Run `cunet-edge train` in `procs` processes through torchrun (standalone, one machine); its exit status.

    With CUDA, nccl needs a GPU per process: more processes than visible GPUs is refused up front.
    """
    import subprocess
    import sys

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and procs > gpus:
        raise ConfigError(f"--procs {procs} needs {procs} GPUs (nccl runs one process per GPU); this machine has "
                          f"{gpus}: use --procs {gpus}, or CUDA_VISIBLE_DEVICES= to train on CPU processes")

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           "-m", "cunet_edge", "train", *train_args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: the point of using processes
    return subprocess.run(cmd, env=env).returncode
