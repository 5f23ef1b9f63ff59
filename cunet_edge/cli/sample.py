"""`cunet-edge sample`: draw images from a checkpoint into a PNG grid."""

import click


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--n", default=64, show_default=True, help="Number of images.")
@click.option("--sampler", default="ddim", show_default=True, help="ddim or ddpm.")
@click.option("--steps", default=50, show_default=True, help="Sampler steps (<= T).")
@click.option("--eta", type=float, help="DDIM eta (default 0: deterministic).")
@click.option("--seed", default=0, show_default=True, help="Seed of the initial noise.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
def sample(artifact, n, sampler, steps, eta, seed, out):
    """Sample ARTIFACT (a checkpoint) and save a PNG grid."""
    from ..sampling import SampleConfig, write_sample_grid
    from ._common import check_file_output

    cfg = SampleConfig(n=n, sampler=sampler, steps=steps, eta=eta, seed=seed)
    check_file_output(out, ".png")
    path = write_sample_grid(artifact, out, cfg, progress=True)
    click.echo(f"{path}  {n} samples ({sampler}, {steps} steps, seed {seed})")
