"""`cunet-edge sample`: draw images from a checkpoint into a PNG grid."""

import click

from ..sampling import SampleConfig, write_sample_grid
from ._common import check_file_output, sampler_options


@click.command()
@sampler_options(SampleConfig)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--runtime", help="torch, onnxruntime, tensorrt, torch-tensorrt (default: from the artifact's kind).")
def sample(artifact, n, sampler, steps, spacing, eta, seed, solver, solver_steps, out, runtime):
    """Sample ARTIFACT (a model, or an exported one on its runtime) and save a PNG grid."""
    cfg = SampleConfig(n=n, sampler=sampler, steps=steps, spacing=spacing, eta=eta, seed=seed, solver=solver,
                       solver_steps=solver_steps)
    check_file_output(out, ".png")
    path = write_sample_grid(artifact, out, cfg, progress=True, runtime=runtime)
    click.echo(f"{path}  {n} samples ({sampler}, {steps} steps, {spacing} spacing, seed {seed})")
