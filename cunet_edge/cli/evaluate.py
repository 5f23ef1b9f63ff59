"""`cunet-edge evaluate`: FID/KID in the dataset classifier's or Inception's features, with the real-vs-real
reference."""

import click

from ..evaluation import evaluate_checkpoint, format_evaluation
from ..sampling import FEATURE_SPACES, EvaluateConfig
from ._common import JSON_OPTION, check_file_output, config_option, sampler_options, write_json


@click.command()
@sampler_options(EvaluateConfig)
@config_option(EvaluateConfig, "--features", type=click.Choice(FEATURE_SPACES),
               help="Feature space of FID/KID: the dataset's own classifier, or Inception-v3 (torch-fidelity; its "
                    "weights from the local torch hub cache, never downloaded). Default: classifier for a labelled "
                    "dataset, inception otherwise.")
@config_option(EvaluateConfig, "--inception-weights", type=click.Path(dir_okay=False),
               help="torch-fidelity's Inception weights file (default: $CUNET_EDGE_INCEPTION_WEIGHTS, else "
                    "weights-inception-2015-12-05-6726825d.pth in the torch hub cache's checkpoints folder).")
@click.option("--runtime", help="torch, onnxruntime, tensorrt, torch-tensorrt (default: from the artifact's kind).")
@click.option("--provider", help="onnxruntime: cpu, cuda or tensorrt.")
@JSON_OPTION
def evaluate(artifact, n, sampler, steps, spacing, eta, seed, solver, solver_steps, features, inception_weights,
             runtime, provider, json_path):
    """Evaluate ARTIFACT's samples against the dataset; also stored as the artifact's metrics.json."""
    cfg = EvaluateConfig(n=n, sampler=sampler, steps=steps, spacing=spacing, eta=eta, seed=seed, solver=solver,
                         solver_steps=solver_steps, features=features, inception_weights=inception_weights)
    if json_path not in (None, "-"):
        check_file_output(json_path)
    options = {"provider": provider} if provider else {}
    m = evaluate_checkpoint(artifact, cfg, progress=True, runtime=runtime, **options)
    click.echo(f"{format_evaluation(m)}  [{n} samples, {sampler} {steps}{_spaced(spacing)}, {m['runtime']}]")
    write_json(json_path, m)


def _spaced(spacing: str) -> str:
    return "" if spacing == "uniform" else f" {spacing}"
