"""`cunet-edge quantize`: INT8 Q/DQ from an FP32 ONNX artifact, calibrated on the diffusion process."""

from functools import partial

import click

from ..artifact import check_output_path
from ..quantize.calibration import CalibrationConfig
from ..quantize.int8 import QuantizeConfig, format_side_by_side, parse_tolerance, quantize_int8
from ._common import JSON_OPTION, config_option, default_of, write_json

option = partial(config_option, QuantizeConfig)
TOLERANCE = default_of(QuantizeConfig, "tolerance")
SELECT = {t: QuantizeConfig(target=t).selection for t in ("cpu", "tensorrt")}  # select None: by target


@click.command()
@click.argument("artifact", type=click.Path())
@option("--target", help="tensorrt (symmetric S8 Q/DQ) or cpu (U8S8).")
@click.option("--out", required=True, type=click.Path(), help="Directory of the INT8 artifact.")
@option("--method", field="calibration.method", help="Calibration: minmax, percentile or entropy.")
@option("--percentile", field="calibration.percentile", help="Percentile for --method percentile.")
@option("--calibration-images", field="calibration.n_images", type=int,
        help="Seeded sampling runs captured (default: 32 at 16 px, fewer as the image grows; at least 64 inputs).")
@option("--calibration-steps", field="calibration.sampler_steps", help="Sampler steps per run (inputs per image).")
@option("--seed", field="calibration.seed", help="Seed of the calibration runs.")
@click.option("--tolerance", default=str(TOLERANCE), show_default=True,
              help=f"Max eps relative error vs the FP32 model (FID check too: 'eps={TOLERANCE},fid=0.10').")
@option("--max-float-layers", help="Most layers kept in float by the fallback.")
@click.option("--select", type=click.Choice(["fastest", "fewest-float"]),
              help=f"Among passing layouts (default: {SELECT['cpu']} for cpu, {SELECT['tensorrt']} for tensorrt).")
@JSON_OPTION
def quantize(artifact, target, out, method, percentile, calibration_images, calibration_steps, seed, tolerance,
             max_float_layers, select, json_path):
    """Quantize ARTIFACT (an FP32 ONNX export) to INT8, keeping sensitive layers in float as needed."""
    eps_tol, fid_tol = parse_tolerance(tolerance)
    cal = CalibrationConfig(n_images=calibration_images, sampler_steps=calibration_steps, seed=seed, method=method,
                            percentile=percentile)
    cfg = QuantizeConfig(target=target, calibration=cal, tolerance=eps_tol, fid_tolerance=fid_tol,
                         max_float_layers=max_float_layers, select=select)
    check_output_path(out)
    art = quantize_int8(artifact, cfg, out)
    m = art.manifest
    d = m["drift"]
    status = "within" if m["passed"] else "NOT within (best attempt saved, marked failing)"
    click.echo(f"{art.path}  int8 ({target}), {len(m['float_nodes'])} layers kept in float; eps rel err "
               f"{d['eps_rel_err']:.4f} {status} tolerance {m['tolerance']:g}; sample PSNR {d['sample_psnr_vs_parent']:.1f} dB; "
               f"{m['size']['ratio']:.2f}x the FP32 file")
    click.echo(format_side_by_side(m["precisions"]))
    write_json(json_path, {"path": str(art.path), "id": m["id"], **{k: m[k] for k in (
        "passed", "target", "float_nodes", "drift", "size", "tolerance", "tried", "precisions")}})
