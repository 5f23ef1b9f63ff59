"""`cunet-edge unroll`: write each ODE block's solver out as explicit steps, or sweep the choices."""

from functools import partial

import click

from ..artifact import check_output_path
from ..errors import ConfigError
from ..sweep import SweepConfig, format_table, solver_sweep
from ..unrolling import UnrollConfig
from ..unrolling import unroll as run_unroll
from ._common import JSON_OPTION, config_option, write_json

sweep_option = partial(config_option, SweepConfig)


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--method", help="euler, midpoint, heun2, heun3 or rk4 (torchdiffeq's names; rk4 is the 3/8 rule); "
                               "default: the one the model was trained with.")
@click.option("--steps", type=int, help="Solver steps over ODE time [0, 1] per block (default: as trained).")
@click.option("--out", type=click.Path(), help="Directory of the unrolled artifact.")
@click.option("--sweep", is_flag=True, help="Measure every method x steps 1..--max-steps instead of unrolling.")
@sweep_option("--max-steps", help="Largest step count in the sweep.")
@sweep_option("--tolerance", help="Max eps relative error vs the trained model.")
@sweep_option("--fid", is_flag=True, help="FID for every sweep row (always for recommended/trained/adaptive).")
@sweep_option("--fid-n", help="Samples per FID.")
@JSON_OPTION
def unroll(checkpoint, method, steps, out, sweep, max_steps, tolerance, fid, fid_n, json_path):
    """Make an `unrolled` artifact from CHECKPOINT (same weights, no torchdiffeq), or --sweep the solvers."""
    if sweep:

        result = solver_sweep(checkpoint, SweepConfig(max_steps=max_steps, tolerance=tolerance, fid=fid, fid_n=fid_n))
        click.echo(format_table(result))
        return write_json(json_path, result)

    if out is None:
        raise ConfigError("--out is required (or pass --sweep)")
    cfg = UnrollConfig(method=method, steps=steps)
    check_output_path(out)
    art = run_unroll(checkpoint, cfg, out)
    rec = art.manifest["solver"]
    click.echo(f"{art.path}  unrolled ({rec['method']} x{rec['steps']}: {rec['nfe_per_block']} NFE/block, "
               f"{rec['nfe_per_call']} NFE/call)")
    write_json(json_path, {"path": str(art.path), "id": art.manifest["id"], **rec})
