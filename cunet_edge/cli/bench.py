"""`cunet-edge bench`: latency per call and per image of artifacts on their runtimes, side by side."""

from functools import partial

import click

from ..artifact import Artifact
from ..benchmark import BenchConfig, format_bench, parse_target
from ..benchmark import bench as run_bench
from ..diffusion import SPACINGS
from ..records import check_solver_request
from ._common import JSON_OPTION, check_file_output, config_option, write_json

option = partial(config_option, BenchConfig)


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--runtime", help="torch, onnxruntime, tensorrt or torch-tensorrt (default: from the artifact's kind).")
@click.option("--compare", multiple=True, metavar="PATH[@RUNTIME[:OPTS]]",
              help="More targets timed side by side (repeat). OPTS override the run's options for that target: "
                   "torch fp32|tf32|fp16,graphs,cpu|cuda,compile; onnxruntime cpu|cuda|tensorrt,spin|nospin "
                   "(e.g. m@torch:fp16,graphs, m@torch:compile).")
@option("--batch", help="Batch size per network call.")
@option("--provider", help="onnxruntime: cpu, cuda or tensorrt.")
@option("--trt-cache", type=click.Path(), help="onnxruntime on the TensorRT provider: its engine cache folder.")
@option("--precision", help="torch: fp32, or on CUDA tf32 or fp16.")
@option("--device", help="torch: auto, cpu or cuda.")
@option("--cuda-graphs", is_flag=True, help="torch on CUDA: replay one captured CUDA graph per call.")
@option("--threads", type=int, help="CPU threads for torch and onnxruntime.")
@option("--sampler-steps", help="Sampler steps for the per-image latency.")
@option("--sampler", help="ddim, ddpm, dpmpp2m or unipc for the per-image latency.")
@option("--spacing", type=click.Choice(SPACINGS), help="Timestep spacing of that sampler (docs/samplers.md).")
@option("--min-iters", help="At least this many timed calls per target.")
@option("--min-seconds", help="And at least this long per target.")
@option("--rounds", help="Interleaved rounds over the targets.")
@click.option("--solver", help="Expected solver method: refused if the artifact has another one baked in.")
@click.option("--solver-steps", type=int, help="Expected solver steps: refused if the artifact has others baked in.")
@JSON_OPTION
def bench(artifact, runtime, compare, batch, provider, trt_cache, precision, device, cuda_graphs, threads,
          sampler_steps, sampler, spacing, min_iters, min_seconds, rounds, solver, solver_steps, json_path):
    """Benchmark ARTIFACT (and --compare targets) on this machine; also stored in each artifact's metrics.json."""
    cfg = BenchConfig(batch=batch, provider=provider, trt_cache=trt_cache, precision=precision, device=device,
                      cuda_graphs=cuda_graphs, threads=threads, sampler_steps=sampler_steps, sampler=sampler,
                      spacing=spacing, min_iters=min_iters, min_seconds=min_seconds, rounds=rounds)
    if json_path not in (None, "-"):
        check_file_output(json_path)
    targets = [parse_target(artifact, runtime)] + [parse_target(spec) for spec in compare]
    if solver or solver_steps:

        for t in targets:
            check_solver_request(Artifact.load(t.path, verify=False).manifest, t.path, solver, solver_steps)
    result = run_bench(targets, cfg)
    click.echo(format_bench(result))
    for warning in (result["machine"].get("jetson") or {}).get("warnings", ()):
        click.echo(f"warning: {warning}", err=True)
    write_json(json_path, result)
