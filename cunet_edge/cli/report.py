"""`cunet-edge report`: every artifact under a run, as an accuracy-vs-latency report (md, html, csv, json, plot)."""

import click

from ..report.render import FILES
from ..report.stage import ReportConfig
from ..report.stage import report as run_report
from ._common import JSON_OPTION, check_file_output, config_option, write_json


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Directory to write the report into (must not exist).")
@click.option("--device", multiple=True, help="Add roofline estimates on this device profile (repeat for several).")
@config_option(ReportConfig, "--samples", help="Images per sample grid.")
@config_option(ReportConfig, "--seed", help="Seed of the sample grids' noise.")
@config_option(ReportConfig, "--measure/--no-measure",
               help="Measure drift and draw sample grids (--no-measure: only gather).")
@config_option(ReportConfig, "--threads", help="CPU threads for the models the report runs.")
@click.option("--replace", is_flag=True, help="Replace an existing report at --out (swapped in when complete).")
@JSON_OPTION
def report(run_dir, out, device, samples, seed, measure, threads, replace, json_path):
    """Gather every artifact under RUN_DIR (lineage, metrics, drift per stage) into a report in --out."""
    cfg = ReportConfig(devices=tuple(device), measure=measure, samples=samples, seed=seed, threads=threads)
    if json_path not in (None, "-"):
        check_file_output(json_path)
    result = run_report(run_dir, cfg, out, replace=replace)
    front = [v for g in result["pareto"]["groups"] for v in g["frontier"]]
    click.echo(f"{result['out']}/{FILES['html']}  {len(result['variants'])} variants of "
               f"{len({r['artifact'] for r in result['variants']})} artifacts; Pareto front: "
               + ("; ".join(front) if front else "none (no variant has both quality and latency)"))
    write_json(json_path, result)  # strict JSON (artifact.json_text)
