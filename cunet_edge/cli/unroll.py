"""`cunet-edge unroll`: write each ODE block's solver out as a fixed number of explicit steps."""

import click

from ._common import JSON_OPTION, write_json


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--method", default="rk4", show_default=True,
              help="euler, midpoint, heun2, heun3 or rk4 (torchdiffeq's names; rk4 is the 3/8 rule).")
@click.option("--steps", default=1, show_default=True, help="Solver steps over ODE time [0, 1] per block.")
@click.option("--out", required=True, type=click.Path(), help="Directory of the unrolled artifact.")
@JSON_OPTION
def unroll(checkpoint, method, steps, out, json_path):
    """Make an `unrolled` artifact from CHECKPOINT: same weights, no torchdiffeq at inference."""
    from ..artifact import check_output_path
    from ..unrolling import UnrollConfig
    from ..unrolling import unroll as run_unroll

    cfg = UnrollConfig(method=method, steps=steps)
    check_output_path(out)
    art = run_unroll(checkpoint, cfg, out)
    rec = art.manifest["solver"]
    click.echo(f"{art.path}  unrolled ({rec['method']} x{rec['steps']}: {rec['nfe_per_block']} NFE/block, "
               f"{rec['nfe_per_call']} NFE/call)")
    write_json(json_path, {"path": str(art.path), "id": art.manifest["id"], **rec})
