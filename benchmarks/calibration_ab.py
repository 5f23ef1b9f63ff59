"""quantize's calibration at several numbers of sampling runs, side by side: its cost, and the decision it leads to.

    python benchmarks/calibration_ab.py ONNX_ARTIFACT --images 32,4          # cost and decisions, 32 vs 4 runs
    python benchmarks/calibration_ab.py ONNX_ARTIFACT --images auto --no-search   # the calibration phase alone

For each setting: wall seconds of the calibration phase (capture, held-out set, ranges), how the range
collection was split (inputs, MiB collected per calibrator call), and, unless --no-search, the fallback search
(sensitivity ranking and the layouts tried) run with those ranges on the FIRST setting's held-out inputs, so the
decisions are compared on one validation set. Run it under `/usr/bin/time -v` for the peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import onnx

from cunet_edge.artifact import Artifact
from cunet_edge.checkpoint import read_train_config
from cunet_edge.quantize.int8 import QuantizeConfig, _calibrate, _search, _Validator
from cunet_edge.quantize.qdq import SCHEMES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--images", default="32,auto", help="comma-separated sampling runs ('auto': the size rule)")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--no-search", action="store_true", help="time the calibration only")
    args = ap.parse_args()

    art = Artifact.load(args.artifact)
    size = read_train_config(art).model.image_size
    base = QuantizeConfig(target=args.target)
    fp32 = art.file("model.onnx")
    model, scheme = onnx.load(str(fp32)), SCHEMES[args.target]
    validator, first = None, None
    for text in args.images.split(","):
        n = None if text == "auto" else int(text)
        cfg = dataclasses.replace(base, calibration=dataclasses.replace(base.calibration, n_images=n))
        stats: dict = {}
        t0 = time.perf_counter()
        _, held, ranges = _calibrate(art, cfg, stats)
        seconds = time.perf_counter() - t0
        print(f"{size} px, {cfg.calibration.images_for(size)} runs ({text}): calibrate {seconds:.1f} s; {stats}")
        if first is None:
            first = ranges
        else:
            rel = [abs(a - b) / max(abs(b), 1e-8) for k in first for a, b in zip(ranges[k], first[k])]
            print(f"  ranges vs the first setting: median rel. diff {np.median(rel):.3f}, "
                  f"p90 {np.quantile(rel, 0.9):.3f}")
        if args.no_search:
            continue
        validator = validator or _Validator(fp32, held.val, held.groups)
        t0 = time.perf_counter()
        search = _search(model, ranges, scheme, validator, cfg, size)
        print(f"  search {time.perf_counter() - t0:.1f} s; head: {[s['node'] for s in search['sensitivity'][:8]]}")
        for c in search["tried"]:
            print(f"  float {c['float_layers']}: eps rel err {c['eps_rel_err']:.4f} passes {c['passes']} "
                  f"{c['float_nodes']}")


if __name__ == "__main__":
    main()
