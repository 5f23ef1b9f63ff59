"""`cunet-edge sample`: draw images from a checkpoint into a PNG grid."""

import click

from ._common import sampler_options


@click.command()
@sampler_options(n_default=64)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
def sample(artifact, n, sampler, steps, eta, seed, solver, solver_steps, out):
    """Sample ARTIFACT (a checkpoint) and save a PNG grid."""
    from ..sampling import SampleConfig, write_sample_grid
    from ._common import check_file_output

    cfg = SampleConfig(n=n, sampler=sampler, steps=steps, eta=eta, seed=seed, solver=solver,
                       solver_steps=solver_steps)
    check_file_output(out, ".png")
    path = write_sample_grid(artifact, out, cfg, progress=True)
    click.echo(f"{path}  {n} samples ({sampler}, {steps} steps, seed {seed})")
