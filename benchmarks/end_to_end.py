"""End to end, at equal quality: one image from the deployed model vs the paper's own recipe.

The paper's recipe samples with DDIM 256 steps through the torchdiffeq model in PyTorch eager.
Ours: the unrolled model exported to ONNX and run by ONNX Runtime, with the fewest sampler steps
whose FID stays within --fid-tolerance (default 10%) of the 256-step DDIM FID: DDIM at
--steps-list, and any other sampler at its own list (--sampler-steps dpmpp2m=16,12,10,8,6, at
--spacing), and a distilled student (--student, `cunet-edge distill`) at the DDIM steps it was
distilled for (trailing spacing). Every sampler's fewest steps within the tolerance is timed per image
in this run, side by side with the paper's recipe, and the speed-up is split into its factors (sampler
steps; solver: rk4 vs the trained one, both through torchdiffeq, with --paper-solver; unrolled vs
torchdiffeq; runtime; precision, FP32 on both sides here) so a reader sees where it comes from.
--seed draws other starting noise for every FID (the verdict should not depend on it); --fids-from
reuses the FIDs of an earlier result JSON measured at the same --n and --seed.

    python benchmarks/end_to_end.py runs/digits --work runs/e2e --json runs/e2e.json [--threads 1]
    python benchmarks/end_to_end.py runs/digits --steps-list 256,64 --sampler-steps dpmpp2m=16,12,10,8,6 \
        --sampler-steps unipc=16,12,10,8,6 --n 500 --json runs/e2e-samplers.json
    python benchmarks/end_to_end.py runs/digits --student runs/digits-d4 --paper-solver rk4 --steps-list 256,48 \
        --sampler-steps unipc=10,9,8 --n 500 --seed 1 --json runs/e2e-seed1.json
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
    p.add_argument("--seed", type=int, default=0, help="seed of the samples' starting noise for every FID")
    p.add_argument("--student", help="a checkpoint distilled from CHECKPOINT (cunet-edge distill): evaluated and "
                                     "timed at its DDIM steps, trailing spacing")
    p.add_argument("--paper-solver", help="time the paper's recipe with CHECKPOINT's weights through this torchdiffeq "
                                          "solver (rk4: the paper's; 1 step), not the trained one")
    return p.parse_args(argv)


def _artifacts(args, checkpoint: str, prefix: str = "") -> tuple[Path, Path]:
    """Unroll (trained solver settings unless told otherwise) and export to ONNX fp32; reused if present."""
    from cunet_edge.checkpoint import load_checkpoint
    from cunet_edge.export.onnx import OnnxExportConfig, export_onnx
    from cunet_edge.unrolling import UnrollConfig, unroll

    solver = load_checkpoint(checkpoint).config.model.solver
    cfg = UnrollConfig(method=args.method, steps=args.solver_steps).resolve(solver)
    work = Path(args.work)
    tag = f"{cfg.method}x{cfg.steps}"
    unrolled, onnx = work / f"{prefix}unrolled-{tag}", work / f"{prefix}onnx-{tag}"
    if not (unrolled / "manifest.json").is_file():
        unroll(checkpoint, cfg, unrolled)
    if not (onnx / "manifest.json").is_file():
        export_onnx(unrolled, OnnxExportConfig(), onnx)
    return unrolled, onnx


KEYS = ("fid", "fid_ratio", "kid_mean", "frac_confident", "fid_real_reference")


def _fids(onnx: Path, steps_list: list[int], args, sampler: str = "ddim", spacing: str = "uniform",
          cached: dict | None = None, label: str | None = None) -> dict[int, dict]:
    """FID per step count of one sampler, sampled through ONNX Runtime (same starting noise for every count);
    step counts in `cached` (measured with the same sampler, spacing, n and seed) are not sampled again."""
    from cunet_edge.evaluation import evaluate_checkpoint
    from cunet_edge.sampling import SampleConfig

    out = {}
    for s in steps_list:
        if cached and s in cached:
            out[s] = cached[s]
            continue
        m = evaluate_checkpoint(onnx, SampleConfig(n=args.n, sampler=sampler, steps=s, spacing=spacing, seed=args.seed),
                                progress=True, runtime="onnxruntime", threads=args.threads)
        out[s] = {k: m[k] for k in KEYS} | {"sampler": sampler, "spacing": spacing, "n": args.n, "seed": args.seed}
        print(f"  {label or sampler} {s:4d} ({spacing}): FID {m['fid']:.3f}  confident "
              f"{100 * m['frac_confident']:.1f}%", flush=True)
    return out


def _cache(args) -> dict[str, dict[int, dict]]:
    """The FIDs of --fids-from that match this run: same sampler and spacing per name, same n and seed."""
    if not args.fids_from:
        return {}
    data = json.loads(Path(args.fids_from).read_text())
    n, seed = data.get("n"), data.get("seed", 0)  # results from before --seed sampled with seed 0
    if n is not None and (n != args.n or seed != args.seed):
        sys.exit(f"--fids-from {args.fids_from} was measured at n {n}, seed {seed}; this run asks for n {args.n}, "
                 f"seed {args.seed}")
    by = data.get("fid_by_sampler") or {"ddim": data["fid_by_steps"]}
    spacing = data.get("spacing", "uniform")
    out: dict[str, dict[int, dict]] = {}
    for name, rows in by.items():
        for s, e in rows.items():
            e = {"sampler": name if name != "student" else "ddim", "n": n, "seed": seed,
                 "spacing": "uniform" if name == "ddim" else "trailing" if name == "student" else spacing} | e
            out.setdefault(name, {})[int(s)] = e
    return out


def _other_samplers(args) -> dict[str, list[int]]:
    out = {}
    for spec in args.sampler_steps:
        name, _, steps = spec.partition("=")
        out[name] = sorted({int(s) for s in steps.split(",")}, reverse=True)
    return out


def _timings(args, targets: dict, recipes: dict) -> dict:
    """Per-call latency (batch 1) of each model and per-image latency of each recipe, interleaved."""
    from contextlib import ExitStack

    from cunet_edge.benchmark import BenchConfig, example_feed, image_call
    from cunet_edge.runtimes.base import open_runner
    from cunet_edge.timing import time_side_by_side, wall_clock_ms

    with ExitStack() as stack:
        runners = {name: stack.enter_context(open_runner(path, rt, threads=args.threads, **opts))
                   for name, (path, rt, opts) in targets.items()}
        calls = {name: r.bind(example_feed(r, 1)) for name, r in runners.items()}
        per_call = time_side_by_side(calls, rounds=5, warmup=5, min_iters=30, min_seconds=1.0)
        diffusion = runners["onnxruntime"].train_config().diffusion
        shape = tuple(runners["onnxruntime"].signature["inputs"]["x"]["shape"][1:])
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
    unrolled, onnx = _artifacts(args, args.checkpoint)
    cache = _cache(args)
    steps_list = sorted({int(s) for s in args.steps_list.split(",")} | {args.reference_steps}, reverse=True)
    # name -> (ONNX model, sampler, spacing, steps): DDIM at uniform spacing, the others at --spacing
    plan = {"ddim": (onnx, "ddim", "uniform", steps_list)}
    for name, steps in _other_samplers(args).items():
        plan[name] = (onnx, name, args.spacing, steps)
    student_steps = None
    if args.student:
        from cunet_edge.artifact import Artifact

        d = Artifact.load(args.student).manifest.get("distillation") or {}
        if not isinstance(d.get("steps"), int) or d.get("in_progress") is not None:
            sys.exit(f"--student {args.student} is not a finished `cunet-edge distill` output")
        student_steps = d["steps"]
        s_unrolled, s_onnx = _artifacts(args, args.student, "student-")
        plan["student"] = (s_onnx, "ddim", "trailing", [student_steps])
    by_sampler = {name: _fids(path, steps, args, sampler, spacing, cache.get(name), label=name)
                  for name, (path, sampler, spacing, steps) in plan.items()}
    ref = by_sampler["ddim"][args.reference_steps]["fid"]
    limit = (1 + args.fid_tolerance) * ref
    fewest = {}
    for name, fids in by_sampler.items():
        within = [s for s in fids if fids[s]["fid"] <= limit]
        fewest[name] = min(within) if within else None
    # fewest steps first; at equal steps the lower FID
    ranked = sorted((s, by_sampler[name][s]["fid"], name) for name, s in fewest.items() if s is not None)
    fast, _, fast_sampler = ranked[0]
    result = {"checkpoint": str(args.checkpoint), "student": args.student, "onnx": str(onnx), "n": args.n,
              "seed": args.seed, "fid_by_steps": by_sampler["ddim"], "fid_by_sampler": by_sampler,
              "spacing": args.spacing, "fewest_steps_by_sampler": fewest, "fast_sampler": fast_sampler,
              "reference_steps": args.reference_steps, "reference_fid": ref, "fid_limit": limit,
              "fewest_steps_within_tolerance": fast, "fid_tolerance": args.fid_tolerance, "threads": args.threads}
    print(f"fewest steps within {100 * args.fid_tolerance:.0f}% of DDIM {args.reference_steps} (FID {ref:.3f}, "
          f"limit {limit:.3f}): " + ", ".join(f"{k} {v}" for k, v in fewest.items()))
    if args.fids_only:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    targets = {"torchdiffeq": (args.checkpoint, "torch", {}), "unrolled": (unrolled, "torch", {}),
               "onnxruntime": (onnx, "onnxruntime", {})}
    if args.paper_solver:
        targets["paper_solver"] = (args.checkpoint, "torch", {"solver": args.paper_solver, "solver_steps": 1})
    if args.paper_checkpoint:
        targets["paper_model"] = (args.paper_checkpoint, "torch", {})
    if args.student:
        targets["student_onnxruntime"] = (s_onnx, "onnxruntime", {})
    paper = "paper_solver" if args.paper_solver else "torchdiffeq"
    recipes = {"paper": (paper, args.reference_steps, "ddim", "uniform")}
    if args.paper_solver:
        recipes["trained_solver_paper_recipe"] = ("torchdiffeq", args.reference_steps, "ddim", "uniform")
    if args.paper_checkpoint:
        recipes["paper_model"] = ("paper_model", args.reference_steps, "ddim", "uniform")
    for name, s in fewest.items():
        if s is not None:
            _, sampler, spacing, _ = plan[name]
            recipes[f"ours_{name}"] = ("student_onnxruntime" if name == "student" else "onnxruntime", s, sampler,
                                       spacing)
    t = _timings(args, targets, recipes)
    c, img = t["per_call_ms"], t["per_image_ms"]
    factors = {"sampler_steps": args.reference_steps / fast}
    if args.paper_solver:
        factors[f"solver_{args.paper_solver}_vs_trained"] = c["paper_solver"] / c["torchdiffeq"]
    factors |= {"solver_unrolled_vs_torchdiffeq": c["torchdiffeq"] / c["unrolled"],
                "runtime_onnxruntime_vs_torch": c["unrolled"] / c["onnxruntime"],
                "precision_fp32_vs_fp32": 1.0}  # both sides FP32 here: INT8/FP16 are measured by bench, not here
    product = 1.0
    for v in factors.values():
        product *= v
    factors["product"] = product
    speedups = {name: img["paper"] / img[f"ours_{name}"] for name, s in fewest.items() if s is not None}
    result |= {**t, "factors": factors, "speedup_by_sampler": speedups, "paper_recipe": {
        "runner": paper, "solver": args.paper_solver or "trained", "steps": args.reference_steps},
        "end_to_end_speedup": speedups[fast_sampler]}
    if args.paper_checkpoint:
        result["end_to_end_speedup_vs_paper_model"] = img["paper_model"] / img[f"ours_{fast_sampler}"]
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"paper recipe (torchdiffeq {args.paper_solver or 'trained solver'}, eager, DDIM {args.reference_steps}): "
          f"{img['paper']:.0f} ms/image")
    for name, sp in speedups.items():
        print(f"  ours (unrolled, ONNX Runtime) {name} {fewest[name]} steps: {img[f'ours_{name}']:.1f} ms/image, "
              f"{sp:.1f}x")
    if args.paper_checkpoint:
        print(f"the paper's model ({args.paper_checkpoint}, torchdiffeq, DDIM {args.reference_steps}): "
              f"{img['paper_model']:.0f} ms/image; {result['end_to_end_speedup_vs_paper_model']:.1f}x")
    print("per call, batch 1: " + ", ".join(f"{k} {v:.2f} ms" for k, v in c.items()))
    print("factors: " + ", ".join(f"{k} {v:.2f}x" for k, v in factors.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
