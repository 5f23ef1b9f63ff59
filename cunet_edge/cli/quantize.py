"""`cunet-edge quantize`: INT8 Q/DQ from an FP32 ONNX artifact, calibrated on the diffusion process."""

import click

from ..artifact import check_output_path
from ..quantize.calibration import CalibrationConfig
from ..quantize.int8 import QuantizeConfig, format_side_by_side, parse_tolerance, quantize_int8
from ..records import DRIFT
from ._common import JSON_OPTION, write_json


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--target", default="tensorrt", show_default=True, help="tensorrt (symmetric S8 Q/DQ) or cpu (U8S8).")
@click.option("--out", required=True, type=click.Path(), help="Directory of the INT8 artifact.")
@click.option("--method", default="percentile", show_default=True, help="Calibration: minmax, percentile or entropy.")
@click.option("--percentile", default=99.99, show_default=True, help="Percentile for --method percentile.")
@click.option("--calibration-images", default=32, show_default=True, help="Seeded sampling runs captured.")
@click.option("--calibration-steps", default=20, show_default=True, help="Sampler steps per run (inputs per image).")
@click.option("--seed", default=0, show_default=True, help="Seed of the calibration runs.")
@click.option("--tolerance", default="0.03", show_default=True,
              help="Max eps relative error vs the FP32 model: '0.03' (FID check: 'eps=0.03,fid=0.10').")
@click.option("--max-float-layers", default=32, show_default=True, help="Most layers kept in float by the fallback.")
@click.option("--select", type=click.Choice(["fastest", "fewest-float"]),
              help="Among passing layouts (default: fastest for cpu, fewest-float for tensorrt).")
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
    d = m[DRIFT]
    status = "within" if m["passed"] else "NOT within (best attempt saved, marked failing)"
    click.echo(f"{art.path}  int8 ({target}), {len(m['float_nodes'])} layers kept in float; eps rel err "
               f"{d['eps_rel_err']:.4f} {status} tolerance {m['tolerance']:g}; sample PSNR {d['sample_psnr_vs_parent']:.1f} dB; "
               f"{m['size']['ratio']:.2f}x the FP32 file")
    click.echo(format_side_by_side(m["precisions"]))
    write_json(json_path, {"path": str(art.path), "id": m["id"], **{k: m[k] for k in (
        "passed", "target", "float_nodes", "drift", "size", "tolerance", "tried", "precisions")}})
