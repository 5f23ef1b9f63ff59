"""`cunet-edge inspect`: what an artifact holds and what one network call costs."""

import click

from ..inspection import inspect_artifact
from ._common import JSON_OPTION, write_json


@click.command()
@click.argument("artifact", type=click.Path())
@JSON_OPTION
def inspect(artifact, json_path):
    """Print kind, parameters, MACs and solver NFE per network call of ARTIFACT."""
    info = inspect_artifact(artifact)
    click.echo(
        f"{info['kind']} {info['arch']}: {info['params']:,} params, {info['macs'] / 1e6:.2f} M MACs/call, "
        f"NFE/call {info['nfe_per_call']:g}, solver {info['solver_summary']}"
    )
    if info["widths"] and info["arch"] == "imported":
        tensors = len(info["model"]["pruned"].get("shapes", {}))
        click.echo(f"pruned: {len(info['widths'])} layers of the network resized ({tensors} tensors; their widths "
                   "under widths in --json)")
    elif info["widths"]:
        click.echo("pruned widths: " + "; ".join(f"{k} {'/'.join(map(str, v))}" for k, v in info["widths"].items()))
    write_json(json_path, info)
