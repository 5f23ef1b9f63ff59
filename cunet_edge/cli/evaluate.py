"""`cunet-edge evaluate`: FID/KID in classifier feature space, with the real-vs-real reference."""

import click

from ..evaluation import evaluate_checkpoint
from ..sampling import EvaluateConfig
from ._common import JSON_OPTION, check_file_output, sampler_options, write_json


@click.command()
@sampler_options(EvaluateConfig)
@click.option("--runtime", help="torch, onnxruntime, tensorrt, torch-tensorrt (default: from the artifact's kind).")
@click.option("--provider", help="onnxruntime: cpu, cuda or tensorrt.")
@JSON_OPTION
def evaluate(artifact, n, sampler, steps, eta, seed, solver, solver_steps, runtime, provider, json_path):
    """Evaluate ARTIFACT's samples against the dataset; also stored as the artifact's metrics.json."""
    cfg = EvaluateConfig(n=n, sampler=sampler, steps=steps, eta=eta, seed=seed, solver=solver,
                         solver_steps=solver_steps)
    if json_path not in (None, "-"):
        check_file_output(json_path)
    options = {"provider": provider} if provider else {}
    m = evaluate_checkpoint(artifact, cfg, progress=True, runtime=runtime, **options)
    click.echo(
        f"FID {m['fid']:.3f} (real-vs-real {m['fid_real_reference']:.3f}, ratio {m['fid_ratio']:.2f}), "
        f"at n={m['n_reference']}: ratio {m['fid_ratio_at_reference_n']:.2f}; KID {m['kid_mean']:.2f}; "
        f"confident {100 * m['frac_confident']:.1f}% (real {100 * m['frac_confident_real_reference']:.1f}%)"
        f"  [{n} samples, {sampler} {steps}, {m['runtime']}]"
    )
    write_json(json_path, m)
