"""`cunet-edge train`: train a diffusion model and write a checkpoint artifact."""

import os

import click

from ..checkpoint import train_config_from_options
from ..config import check_positive
from ..data import DataConfig
from ..models.presets import PRESETS
from ..training import launch_data_parallel
from ..training import train as run_training
from ._common import JSON_OPTION, config_option, write_json

PRESET_NAMES = list(PRESETS)


@click.command()
@click.option("--dataset", help="digits (embedded), mnist, fashion-mnist, cifar10, or folder (with --data-root).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder of images / torchvision data root.")
@click.option("--download/--no-download", default=None, help="Let torchvision download its dataset.")
@config_option(DataConfig, "--image-size", unset=True, help="Square image size.")
@click.option("--arch", type=click.Choice(["cunet", "unet"]), help="Continuous U-Net or the DDPM U-Net baseline.")
@click.option("--preset", help=f"Model preset: {', '.join(PRESET_NAMES)} (docs/presets.md; TOML: preset = ...).")
@click.option("--steps", type=int, help="Optimizer steps (total, including resumed ones).")
@click.option("--batch-size", type=int, help="Global batch size (split over torchrun processes).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--seed", type=int, help="Seed for weights, batches and noise.")
@click.option("--solver", "method", help="torchdiffeq method of the ODE blocks (rk4, euler, dopri5, ...).")
@click.option("--solver-steps", type=int, help="Steps over [0, 1] for fixed-grid solvers.")
@click.option("--rtol", type=float, help="Relative tolerance for adaptive solvers.")
@click.option("--atol", type=float, help="Absolute tolerance for adaptive solvers.")
@click.option("--adjoint/--no-adjoint", default=None, help="Adjoint backprop through the ODE blocks (less memory).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML or JSON training config.")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--procs", default=1, show_default=True,
              help="Data-parallel processes on this machine (launched through torchrun; gloo on CPU, nccl on GPUs).")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@click.option("--out", required=True, type=click.Path(), help="Checkpoint directory (re-run to resume).")
@JSON_OPTION
def train(dataset, data_root, download, image_size, arch, preset, steps, batch_size, lr, seed, method, solver_steps,
          rtol, atol, adjoint, config_file, threads, procs, progress, out, json_path):
    """Train on a dataset; re-running with the same --out resumes from the last save."""
    solver = {"method": method, "steps": solver_steps, "rtol": rtol, "atol": atol, "adjoint": adjoint}
    cfg = train_config_from_options(config_file, dataset=dataset, data_root=data_root, download=download,
                                    image_size=image_size, arch=arch, preset=preset, solver=solver, steps=steps,
                                    batch_size=batch_size, lr=lr, seed=seed)
    if procs != 1:

        check_positive("procs", procs)
        if "LOCAL_RANK" not in os.environ:  # not yet under torchrun: start it, with the same options
            raise SystemExit(launch_data_parallel(procs, _forwarded_args(click.get_current_context())))
    art = run_training(cfg, out, progress=progress, threads=threads)
    if art is not None:
        click.echo(f"{art.path}  checkpoint ({cfg.model.arch}, {art.manifest['train_step']} steps)")
        write_json(json_path, {"path": str(art.path), "id": art.manifest["id"], "steps": art.manifest["train_step"]})


def _forwarded_args(ctx) -> list[str]:
    """This command's options as given (all but --procs), for the torchrun workers."""
    args = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == "procs" or value is None or not isinstance(param, click.Option):
            continue
        if param.is_flag and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            if value:
                args.append(param.opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args
