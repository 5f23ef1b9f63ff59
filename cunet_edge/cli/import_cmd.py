"""`cunet-edge import`: a model trained elsewhere (own code, diffusers, denoising-diffusion-pytorch) → a checkpoint."""

import time

import click

from ..artifact import check_output_path
from ..importing import describe_import, import_model
from ._common import JSON_OPTION, check_file_output, write_json


@click.command(name="import")
@click.argument("spec", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Directory of the checkpoint artifact to write.")
@click.option("--code-dir", type=click.Path(),
              help="Folder holding the factory's module (instead of the spec's network.code_dir).")
@JSON_OPTION
def import_(spec, out, code_dir, json_path):
    """Import the model that SPEC (a TOML import spec) describes as a `checkpoint` artifact.

    The network is the user's own code, a diffusers UNet2DModel folder, or a denoising-diffusion-pytorch
    Unet; its weights must fit it exactly. See docs/import.md.
    """
    if json_path not in (None, "-"):
        check_file_output(json_path)
    check_output_path(out)
    t0 = time.perf_counter()
    art = import_model(spec, out, code_dir=code_dir)
    seconds = time.perf_counter() - t0
    click.echo(f"{art.path}  checkpoint ({describe_import(art)}) imported in {seconds:.2f} s")
    rec = art.manifest["import"]
    write_json(json_path, {"path": str(art.path), "id": art.manifest["id"], "source": rec["source"],
                           "network": rec["network"], "params": rec["params"], "seconds": seconds,
                           "diffusion": {k: v for k, v in art.config["diffusion"].items() if k != "betas"},
                           "inputs": rec["inputs"]})
