"""torch.compile vs eager on the continuous U-Net: ms per call, and how many graphs get compiled.

As a user would: torch.compile(model) with the default backend (inductor), then calls of one
shape. For each batch size, from an empty compile cache: the first call's seconds and the
graphs it compiled; the graphs compiled by the next --settle calls (recompiles: dynamo gives
up after torch._dynamo.config.recompile_limit and runs that code eagerly); then eager and
compiled p50 ms per call, timed side by side in this run. Weights are random (the default
config, freshly built): latency does not depend on them.

    python benchmarks/compile.py [--solver unrolled|torchdiffeq] [--batches 1,16] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from cunet_edge.models import CUNetConfig, SolverConfig, build_model
from cunet_edge.timing import time_side_by_side, wall_clock_ms


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solver", choices=("unrolled", "torchdiffeq"), default="unrolled",
                   help="the default solver (midpoint x1) unrolled, or through torchdiffeq (a checkpoint's model)")
    p.add_argument("--batches", default="1,16", help="batch sizes, comma-separated")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--settle", type=int, default=None,
                   help="calls after the first before timing (default: recompile_limit + 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the rows here")
    return p.parse_args(argv)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def measure(model, cfg, batch: int, backend: str, settle: int) -> dict:
    """Compile from scratch at one batch size; graphs compiled by the first and by later calls; p50 ms side by side."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    t = torch.full((batch,), 500)
    with torch.no_grad():
        start = _graphs()
        first_s = wall_clock_ms(lambda: compiled(x, t)) / 1e3
        first = _graphs() - start
        for step in range(settle):  # a sampler's calls: same shape, other timesteps
            compiled(x, torch.full((batch,), 999 - 10 * step))
        ms = time_side_by_side({"eager": lambda: model(x, t), "compiled": lambda: compiled(x, t)},
                               warmup=2, min_iters=10, min_seconds=0.5)
        later = _graphs() - start - first
        err = (compiled(x, t) - model(x, t)).abs().max().item()
    return {"batch": batch, "eager_ms": ms["eager"], "compiled_ms": ms["compiled"],
            "speedup": ms["eager"] / ms["compiled"], "first_call_s": first_s, "graphs_first_call": first,
            "graphs_later_calls": later, "max_abs_diff": err}


def main(argv=None) -> int:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CUNetConfig(solver=SolverConfig(unrolled=args.solver == "unrolled"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    settle = args.settle if args.settle is not None else torch._dynamo.config.recompile_limit + 2
    rows = [measure(model, cfg, int(b), args.backend, settle) for b in args.batches.split(",")]
    s = cfg.solver
    print(f"continuous U-Net, default config ({cfg.image_size}x{cfg.image_size}, {s.method} x{s.steps}, "
          f"{args.solver}), torch {torch.__version__}, {torch.get_num_threads()} threads, backend {args.backend}, "
          f"{settle} calls after the first")
    print(f"{'batch':>5} {'eager ms':>9} {'compiled ms':>11} {'speed-up':>8} {'1st call s':>10} "
          f"{'graphs 1st':>10} {'graphs later':>12} {'max |diff|':>10}")
    for r in rows:
        print(f"{r['batch']:5d} {r['eager_ms']:9.2f} {r['compiled_ms']:11.2f} {r['speedup']:7.2f}x "
              f"{r['first_call_s']:10.1f} {r['graphs_first_call']:10d} {r['graphs_later_calls']:12d} "
              f"{r['max_abs_diff']:10.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"solver": args.solver, "backend": args.backend, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
