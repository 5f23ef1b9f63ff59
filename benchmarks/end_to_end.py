"""End to end, at equal quality: one image from the deployed model vs the paper's own recipe.

The paper's recipe samples with DDIM 256 steps through the torchdiffeq model in PyTorch eager.
Ours: the unrolled model exported to ONNX and run by ONNX Runtime, with the fewest sampler steps
whose FID stays within --fid-tolerance (default 10%) of the 256-step DDIM FID: DDIM at
--steps-list, and any other sampler at its own list (--sampler-steps dpmpp2m=16,12,10,8,6, at
--spacing). Both are timed in this run, side by side, and the speed-up is split into its factors
(sampler steps, solver, runtime) so a reader sees where it comes from.

    python benchmarks/end_to_end.py runs/digits --work runs/e2e --json runs/e2e.json [--threads 1]
    python benchmarks/end_to_end.py runs/digits --steps-list 256,64 --sampler-steps dpmpp2m=16,12,10,8,6 \
        --sampler-steps unipc=16,12,10,8,6 --n 500 --json runs/e2e-samplers.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a trained continuous U-Net checkpoint (torchdiffeq solver)")
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--work", default="runs/e2e", help="folder for the unrolled and ONNX artifacts")
    p.add_argument("--method", default=None, help="unroll method (default: the trained one)")
    p.add_argument("--solver-steps", type=int, default=None, help="unroll steps (default: the trained ones)")
    p.add_argument("--steps-list", default="256,128,64,48,32,24,16,12,8", help="DDIM steps to evaluate")
    p.add_argument("--reference-steps", type=int, default=256, help="the paper's DDIM steps")
    p.add_argument("--n", type=int, default=1000, help="samples per FID")
    p.add_argument("--fid-tolerance", type=float, default=0.10, help="allowed relative FID increase")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime")
    p.add_argument("--image-reps", type=int, default=3, help="timed images per configuration")
    p.add_argument("--paper-checkpoint", help="a model trained with the paper's solver (rk4 x1), timed as the "
                                               "paper's recipe too (default: only CHECKPOINT through torchdiffeq)")
    p.add_argument("--fids-from", help="reuse fid_by_steps from an earlier result JSON of this script")
    p.add_argument("--sampler-steps", action="append", default=[], metavar="SAMPLER=STEPS",
                   help="another sampler and the steps to evaluate it at, e.g. unipc=16,12,10,8 (repeatable)")
    p.add_argument("--spacing", default="uniform", help="timestep spacing of those samplers (DDIM keeps uniform)")
    p.add_argument("--fids-only", action="store_true", help="write the FIDs and the fewest steps; time nothing")
    return p.parse_args(argv)


def _artifacts(args) -> tuple[Path, Path]:
    """Unroll (trained solver settings unless told otherwise) and export to ONNX fp32; reused if present."""
    from cunet_edge.checkpoint import load_checkpoint
    from cunet_edge.export.onnx import OnnxExportConfig, export_onnx
    from cunet_edge.unrolling import UnrollConfig, unroll

    solver = load_checkpoint(args.checkpoint).config.model.solver
    cfg = UnrollConfig(method=args.method, steps=args.solver_steps).resolve(solver)
    work = Path(args.work)
    unrolled, onnx = work / f"unrolled-{cfg.method}x{cfg.steps}", work / f"onnx-{cfg.method}x{cfg.steps}"
    if not (unrolled / "manifest.json").is_file():
        unroll(args.checkpoint, cfg, unrolled)
    if not (onnx / "manifest.json").is_file():
        export_onnx(unrolled, OnnxExportConfig(), onnx)
    return unrolled, onnx


def _fids(onnx: Path, steps_list: list[int], args, sampler: str = "ddim", spacing: str = "uniform") -> dict[int, dict]:
    """FID per step count of one sampler, sampled through ONNX Runtime (same starting noise for every count)."""
    from cunet_edge.evaluation import evaluate_checkpoint
    from cunet_edge.sampling import SampleConfig

    out = {}
    for s in steps_list:
        m = evaluate_checkpoint(onnx, SampleConfig(n=args.n, sampler=sampler, steps=s, spacing=spacing), progress=True,
                                runtime="onnxruntime", threads=args.threads)
        out[s] = {k: m[k] for k in ("fid", "fid_ratio", "kid_mean", "frac_confident", "fid_real_reference")}
        print(f"  {sampler} {s:4d} ({spacing}): FID {m['fid']:.3f}  confident {100 * m['frac_confident']:.1f}%",
              flush=True)
    return out


def _other_samplers(args) -> dict[str, list[int]]:
    out = {}
    for spec in args.sampler_steps:
        name, _, steps = spec.partition("=")
        out[name] = sorted({int(s) for s in steps.split(",")}, reverse=True)
    return out


def _timings(args, targets: dict, steps_fast: int, sampler_fast: str = "ddim", spacing: str = "uniform") -> dict:
    """Per-call latency (batch 1) of each model and per-image latency of each recipe, interleaved."""
    from contextlib import ExitStack

    from cunet_edge.benchmark import BenchConfig, example_feed, image_call
    from cunet_edge.runtimes.base import open_runner
    from cunet_edge.timing import time_side_by_side, wall_clock_ms

    with ExitStack() as stack:
        runners = {name: stack.enter_context(open_runner(path, rt, threads=args.threads))
                   for name, (path, rt) in targets.items()}
        calls = {name: r.bind(example_feed(r, 1)) for name, r in runners.items()}
        per_call = time_side_by_side(calls, rounds=5, warmup=5, min_iters=30, min_seconds=1.0)
        diffusion = runners["onnxruntime"].train_config().diffusion
        shape = tuple(runners["onnxruntime"].signature["inputs"]["x"]["shape"][1:])
        recipes = {"paper": ("torchdiffeq", args.reference_steps, "ddim", "uniform"),
                   "ours": ("onnxruntime", steps_fast, sampler_fast, spacing)}
        if "paper_model" in runners:
            recipes["paper_model"] = ("paper_model", args.reference_steps, "ddim", "uniform")
        images = {k: image_call(runners[r], BenchConfig(sampler_steps=s, sampler=sm, spacing=sp), diffusion, shape)[0]
                  for k, (r, s, sm, sp) in recipes.items()}
        per_image = {k: [] for k in images}
        for _ in range(args.image_reps):
            for k, fn in images.items():
                per_image[k].append(wall_clock_ms(fn))
    return {"per_call_ms": per_call, "per_image_ms": {k: sorted(v)[len(v) // 2] for k, v in per_image.items()}}


def main(argv=None) -> int:
    import torch

    args = _parse(argv)
    torch.set_num_threads(args.threads)
    unrolled, onnx = _artifacts(args)
    steps_list = sorted({int(s) for s in args.steps_list.split(",")} | {args.reference_steps}, reverse=True)
    if args.fids_from:
        fids = {int(k): v for k, v in json.loads(Path(args.fids_from).read_text())["fid_by_steps"].items()}
    else:
        fids = _fids(onnx, steps_list, args)
    ref = fids[args.reference_steps]["fid"]
    ok = [s for s in steps_list if fids[s]["fid"] <= (1 + args.fid_tolerance) * ref]
    fast, fast_sampler = min(ok), "ddim"
    by_sampler = {"ddim": fids}
    fewest = {"ddim": fast}
    for name, steps in _other_samplers(args).items():
        by_sampler[name] = _fids(onnx, steps, args, name, args.spacing)
        within = [s for s in steps if by_sampler[name][s]["fid"] <= (1 + args.fid_tolerance) * ref]
        fewest[name] = min(within) if within else None
        if within and min(within) < fast:
            fast, fast_sampler = min(within), name
    if args.fids_only:
        result = {"checkpoint": str(args.checkpoint), "onnx": str(onnx), "n": args.n, "fid_by_steps": fids,
                  "fid_by_sampler": by_sampler, "spacing": args.spacing, "fewest_steps_by_sampler": fewest,
                  "fast_sampler": fast_sampler, "reference_steps": args.reference_steps,
                  "fewest_steps_within_tolerance": fast, "fid_tolerance": args.fid_tolerance}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"fewest steps within {100 * args.fid_tolerance:.0f}% of DDIM {args.reference_steps} (FID {ref:.3f}): "
              + ", ".join(f"{k} {v}" for k, v in fewest.items()))
        return 0
    targets = {"torchdiffeq": (args.checkpoint, "torch"), "unrolled": (unrolled, "torch"),
               "onnxruntime": (onnx, "onnxruntime")}
    if args.paper_checkpoint:
        targets["paper_model"] = (args.paper_checkpoint, "torch")
    t = _timings(args, targets, fast, fast_sampler, args.spacing if fast_sampler != "ddim" else "uniform")
    c = t["per_call_ms"]
    factors = {"sampler_steps": args.reference_steps / fast, "solver_unrolled_vs_torchdiffeq": c["torchdiffeq"] / c["unrolled"],
               "runtime_onnxruntime_vs_torch": c["unrolled"] / c["onnxruntime"]}
    factors["product"] = factors["sampler_steps"] * factors["solver_unrolled_vs_torchdiffeq"] * factors["runtime_onnxruntime_vs_torch"]
    result = {"checkpoint": str(args.checkpoint), "onnx": str(onnx), "fid_by_steps": fids,
              "fid_by_sampler": by_sampler, "spacing": args.spacing, "fewest_steps_by_sampler": fewest,
              "fast_sampler": fast_sampler,
              "reference_steps": args.reference_steps, "fewest_steps_within_tolerance": fast,
              "fid_tolerance": args.fid_tolerance, **t, "factors": factors,
              "end_to_end_speedup": t["per_image_ms"]["paper"] / t["per_image_ms"]["ours"], "threads": args.threads}
    if args.paper_checkpoint:
        result["end_to_end_speedup_vs_paper_model"] = t["per_image_ms"]["paper_model"] / t["per_image_ms"]["ours"]
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"paper recipe (torchdiffeq, eager, DDIM {args.reference_steps}): {t['per_image_ms']['paper']:.0f} ms/image; "
          f"ours (unrolled, ONNX Runtime, {fast_sampler} {fast}): {t['per_image_ms']['ours']:.0f} ms/image; "
          f"{result['end_to_end_speedup']:.1f}x")
    if args.paper_checkpoint:
        print(f"the paper's model ({args.paper_checkpoint}, torchdiffeq, DDIM {args.reference_steps}): "
              f"{t['per_image_ms']['paper_model']:.0f} ms/image; {result['end_to_end_speedup_vs_paper_model']:.1f}x")
    print("per call, batch 1: " + ", ".join(f"{k} {v:.2f} ms" for k, v in c.items()))
    print("factors: " + ", ".join(f"{k} {v:.2f}x" for k, v in factors.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
