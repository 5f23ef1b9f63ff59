"""`cunet-edge inspect`: what an artifact holds and what one network call costs (or a preset's, untrained)."""

import click

from ..artifact import Artifact
from ..errors import ConfigError
from ..export.trt_build import layers_line
from ..export.trt_check import summary_line
from ..inspection import ENGINE_KIND, inspect_artifact, inspect_engine, inspect_preset
from ..models.presets import PRESETS
from ._common import JSON_OPTION, write_json


@click.command()
@click.argument("artifact", type=click.Path(), required=False)
@click.option("--preset", help=f"Instead of an artifact: a model preset ({', '.join(PRESETS)}, or all), "
                               "built at random weights.")
@click.option("--image-size", type=int, help="With --preset: the image size (default: the preset's own).")
@click.option("--in-channels", type=int, help="With --preset: image channels (default 3).")
@JSON_OPTION
def inspect(artifact, preset, image_size, in_channels, json_path):
    """Print kind, parameters, MACs and solver NFE per network call of ARTIFACT (or of --preset NAME).

    A TensorRT engine: its layers per precision, the convolution/matmul layers that did not run INT8, and its
    check against ONNX Runtime."""
    if (artifact is None) == (preset is None):
        raise ConfigError("give an ARTIFACT or --preset NAME (one of them)")
    if preset is None and (image_size is not None or in_channels is not None):
        raise ConfigError("--image-size and --in-channels apply to --preset only")
    if preset is not None:
        info = inspect_preset(preset, image_size, in_channels)
        for row in info.get("presets", [info]):
            click.echo(_preset_line(row))
        write_json(json_path, info)
        return
    if Artifact.load(artifact, verify=False).kind == ENGINE_KIND:
        info = inspect_engine(artifact)
        click.echo("\n".join(engine_lines(info)))
        write_json(json_path, info)
        return
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


def _preset_line(r: dict) -> str:
    """One preset: size, params (vs the published count), MACs per call (all; thop's conv + linear count)."""
    ref = r["reference"]
    params = f"{r['params']:,} params"
    if "params" in ref:
        params += f" (published {ref['params'] / 1e6:.2f} M: {100 * (ref['params_ratio'] - 1):+.1f}%)"
    thop = f"conv+linear (thop-style) {r['macs_conv_linear'] / 1e9:.2f} G"
    if "macs_thop" in ref:
        thop += f" vs published {ref['macs_thop'] / 1e9:.2f} G"
    return (f"{r['preset']:8} {r['arch']} {r['image_size']}x{r['image_size']}x{r['in_channels']}: {params}, "
            f"{r['macs'] / 1e9:.2f} G MACs/call, {thop}; NFE/call {r['nfe_per_call']:g}, "
            f"solver {r['solver_summary']}")


def engine_lines(info: dict) -> list[str]:
    """What `inspect ENGINE` (and `export --format tensorrt`) print: where it runs, its layers, its check."""
    s, c = info["engine_layers"], info["engine_check"]
    return [f"{info['kind']} {info['precision']}, TensorRT {info['tensorrt_version']} on {info['gpu_name']} "
            f"(sm {info['compute_capability']})",
            layers_line(s) if s else "layers: not recorded (an engine exported before cunet-edge read its inspector)",
            summary_line(c) if c else "engine check against ONNX Runtime: not recorded"]
