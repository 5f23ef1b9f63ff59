"""`cunet-edge pipeline`: run a TOML recipe of stages into one run folder, resumable."""

import click

from ..pipeline import load_recipe, run_pipeline
from ._common import JSON_OPTION, write_json


@click.command()
@click.argument("recipe", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Run folder (run again to resume).")
@click.option("--dry-run", is_flag=True, help="Check the whole recipe (stages, keys, types, kinds, backends); run nothing.")
@click.option("--search", is_flag=True, help="Also explore the recipe's [search] grid and name the Pareto front.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@JSON_OPTION
def pipeline(recipe, out, dry_run, search, progress, json_path):
    """Run RECIPE's stages in order into --out, skipping those already done with the same config and inputs."""
    if dry_run:
        r = load_recipe(recipe, search=search)
        for i, s in enumerate(r.stages, 1):
            src = f" <- {', '.join(s.inputs)}" if s.inputs else ""
            click.echo(f"[{i}/{len(r.stages)}] {s.name} ({s.stage}){src} -> {s.makes or s.definition.io.writes}")
        click.echo(f"{recipe}: {len(r.stages)} stages, all valid (dry run: nothing was run)")
        write_json(json_path, {"recipe": str(recipe), "valid": True,
                               "stages": [{"name": s.name, "stage": s.stage, "inputs": list(s.inputs),
                                           "makes": s.makes} for s in r.stages]})
        return
    result = run_pipeline(recipe, out, search=search, progress=progress, echo=click.echo)
    stages = result["stages"]
    skipped, not_run = sum(s["skipped"] for s in stages), sum("not_run" in s for s in stages)
    click.echo(f"{out}  {len(stages)} stages ({len(stages) - skipped - not_run} run, "
               + (f"{not_run} not run here, " if not_run else "") + f"{skipped} skipped) in {result['seconds']:.1f} s")
    write_json(json_path, result)
