"""`cunet-edge prune`: remove channels from a continuous U-Net or an imported network to a MACs or parameter target,
then fine-tune."""

from functools import partial

import click

from ..artifact import check_output_path
from ..pruning import PruneConfig
from ..pruning import prune as run_prune
from ._common import JSON_OPTION, config_option, write_json

# None when not given: PruneConfig applies its default (shown in --help).
option = partial(config_option, PruneConfig, unset=True)


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--target-macs", type=float, help="Keep at most this fraction of the parent's MACs per call, in (0, 1).")
@click.option("--target-params", type=float, help="Keep at most this fraction of the parent's parameters, in (0, 1).")
@option("--importance", help="taylor (diffusion-loss gradients over the schedule) or l1.")
@option("--scope", help="global (one ranking across layers) or local (one ratio in every layer).")
@option("--iterative-steps", help="Rounds of prune + fine-tune, importance re-estimated.")
@option("--importance-batches", help="Batches of Taylor gradients, timesteps stratified over the schedule.")
@option("--ratio-step", help="Spacing of the pruning ratios scanned at each round.")
@option("--coarse-step", help="First pass over the ratios at this spacing, the --ratio-step grid scanned only "
                              "around where the target is first met (0: every ratio of the grid).")
@option("--select", help="Among ratios meeting the target: least-error (closest eps to the parent) "
                         "or largest (the most MACs/params kept).")
@option("--finetune-steps", help="Fine-tuning optimizer steps after pruning (0: none).")
@option("--distill-weight", help="Weight of the MSE to the parent's eps in the loss.")
@option("--lr", help="Peak fine-tuning learning rate.")
@option("--batch-size", help="Batch size of importance estimation and fine-tuning.")
@option("--seed", help="Seed of the importance batches, fine-tuning and drift.")
@click.option("--keep", multiple=True, metavar="MODULE",
              help="Imported networks: leave this module whole (its path in the network, e.g. mid_block.attentions.0; "
                   "repeat for more). A refusal names what to keep.")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@click.option("--out", required=True, type=click.Path(), help="Directory of the pruned artifact.")
@JSON_OPTION
def prune(artifact, target_macs, target_params, importance, scope, iterative_steps, importance_batches, ratio_step,
          coarse_step, select, finetune_steps, distill_weight, lr, batch_size, seed, keep, threads, progress, out,
          json_path):
    """Prune ARTIFACT (a continuous U-Net or an imported network, unrolled or not) and fine-tune it toward its
    parent."""
    options = {"target_macs": target_macs, "target_params": target_params, "importance": importance, "scope": scope,
               "iterative_steps": iterative_steps, "importance_batches": importance_batches, "ratio_step": ratio_step,
               "coarse_step": coarse_step,
               "select": select, "finetune_steps": finetune_steps, "distill_weight": distill_weight, "lr": lr,
               "batch_size": batch_size, "seed": seed, "keep": tuple(keep) or None}
    cfg = PruneConfig(**{k: v for k, v in options.items() if v is not None})
    check_output_path(out)
    art = run_prune(artifact, cfg, out, progress=progress, threads=threads)
    p, d = art.manifest["pruning"], art.manifest["drift"]
    click.echo(f"{art.path}  {art.kind} pruned ({p['importance']}): {p['macs_ratio']:.3f}x MACs, "
               f"{p['params_ratio']:.3f}x params; eps rel err vs parent {d['after_pruning']['eps_rel_err']:.3f} "
               f"after pruning, {d['eps_rel_err']:.3f} after {p['finetune']['steps']} fine-tuning steps; "
               f"sample PSNR {d['sample_psnr_vs_parent']:.1f} dB")
    write_json(json_path, {"path": str(art.path), "id": art.manifest["id"], "kind": art.kind, **p, "drift": d})
