"""`cunet-edge distill`: progressive distillation of a checkpoint to fewer DDIM steps (Salimans & Ho, 2022)."""

from functools import partial

import click

from ..distillation import DistillConfig
from ..distillation import distill as run_distill
from ._common import JSON_OPTION, config_option, write_json

option = partial(config_option, DistillConfig)


@click.command()
@click.argument("checkpoint", type=click.Path())
@option("--from-steps", help="DDIM steps the input checkpoint is taken at (the first round's teacher).")
@option("--factor", help="Steps divided per round: the teacher's FACTOR DDIM steps train one student step (2: "
                          "the paper's halving; 8 takes 32 to 4 steps in one round, as TRACT does, at 4x the teacher "
                          "cost).")
@option("--to-steps", help="DDIM steps of the student; --from-steps is divided by --factor down to it, one round each.")
@option("--train-steps", help="Optimizer steps per round.")
@option("--lr", help="Peak learning rate of each round.")
@option("--lr-schedule", help="After each round's warm-up: cosine down to 10% of --lr, or constant.")
@option("--weighting", help="The loss: auto (epsilon for ε-models, snr-trunc for v/x0), epsilon, snr-trunc, or "
                            "landing (the distance between the student's and the teacher's landing points).")
@option("--batch-size", help="Training images per step.")
@option("--warmup-steps", help="Linear warm-up steps at the start of each round.")
@option("--ema-decay", help="EMA decay of the student's weights.")
@option("--seed", help="Seed of the batches and noise (round r uses seed + r - 1).")
@option("--save-every", help="Save the resume state every this many steps of a round.")
@option("--fid-n", help="Samples for the FID after each round, recorded in the manifest (0: none).")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@click.option("--out", required=True, type=click.Path(), help="Student checkpoint directory (re-run to resume).")
@JSON_OPTION
def distill(checkpoint, from_steps, factor, to_steps, train_steps, lr, lr_schedule, weighting, batch_size, warmup_steps,
            ema_decay, seed, save_every, fid_n, threads, progress, out, json_path):
    """Distill CHECKPOINT into a checkpoint for --to-steps DDIM steps (trailing spacing); re-run to resume.

    Sample the result with --sampler ddim --steps TO_STEPS --spacing trailing."""
    cfg = DistillConfig(from_steps=from_steps, factor=factor, to_steps=to_steps, train_steps=train_steps, lr=lr,
                        lr_schedule=lr_schedule, weighting=weighting,
                        batch_size=batch_size, warmup_steps=warmup_steps, ema_decay=ema_decay, seed=seed,
                        save_every=save_every, fid_n=fid_n)
    art = run_distill(checkpoint, cfg, out, progress=progress, threads=threads)
    d = art.manifest["distillation"]
    fids = [r["fid"]["fid"] for r in d["rounds"] if "fid" in r]
    tail = f"; FID per round {', '.join(f'{f:.2f}' for f in fids)}" if fids else ""
    click.echo(f"{art.path}  checkpoint distilled {cfg.from_steps} → {d['steps']} DDIM steps (trailing) in "
               f"{len(d['rounds'])} rounds{tail}")
    write_json(json_path, {"path": str(art.path), "id": art.manifest["id"], **d})
