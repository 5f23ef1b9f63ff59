"""`cunet-edge estimate`: roofline latency of an ONNX artifact on a device profile, or calibrated on this CPU."""

from functools import partial

import click

from ..devices.estimate import CPU_DEVICE, DEFAULT_LAUNCH_US, CalibrateConfig, EstimateConfig, format_estimate
from ..devices.estimate import calibrate as run_calibrate
from ..devices.estimate import estimate as run_estimate
from ..errors import ConfigError
from ._common import JSON_OPTION, check_file_output, config_option, write_json

option = partial(config_option, EstimateConfig)


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--device", help="A profile from `cunet-edge devices list`, or `cpu` (this machine, implies --calibrate).")
@click.option("--precision", multiple=True, help="fp32, fp16 or int8; repeat for several (default: the artifact's).")
@option("--batch", help="Batch size per network call.")
@option("--sampler-steps", help="Network calls per image.")
@option("--float-layers", help="int8: precision of the unquantized layers.")
@click.option("--launch-us", type=float,
              help=f"Overhead per executed node, us (default {DEFAULT_LAUNCH_US:g}; measured on this CPU).")
@option("--top", help="How many of the slowest nodes to list.")
@click.option("--calibrate", is_flag=True, help="Measure this CPU, estimate on it and compare with ONNX Runtime here.")
@click.option("--threads", type=int, help="--calibrate: CPU threads for the peak and ONNX Runtime.")
@JSON_OPTION
def estimate(artifact, device, precision, batch, sampler_steps, float_layers, launch_us, top, calibrate, threads,
             json_path):
    """Roofline latency per call and per image of ONNX ARTIFACT on --device (method: devices/README.md)."""
    cfg = EstimateConfig(precisions=tuple(precision), batch=batch, sampler_steps=sampler_steps,
                         float_layers=float_layers, launch_us=launch_us, top=top)
    calibrate = calibrate or device == CPU_DEVICE
    if calibrate and device not in (None, CPU_DEVICE):
        raise ConfigError(f"--calibrate measures this CPU; leave out --device {device} (or use --device cpu)")
    if not calibrate and device is None:
        raise ConfigError("--device is required: a name from `cunet-edge devices list`, or cpu")
    if threads is not None and not calibrate:
        raise ConfigError("--threads applies to --calibrate (this CPU) only")
    if json_path not in (None, "-"):
        check_file_output(json_path)
    if calibrate:
        result = run_calibrate(artifact, cfg, CalibrateConfig(threads=threads))
    else:
        result = run_estimate(artifact, device, cfg)
    if json_path != "-":
        click.echo(format_estimate(result))
    write_json(json_path, result)
