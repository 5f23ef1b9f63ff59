"""quantize's sensitivity ranking, the previous loop (every layer on the whole validation set) against the screened
one, side by side on the same calibration, ranges and validation set.

    python benchmarks/sensitivity_ab.py ONNX_ARTIFACT [--k 0,1,2,3,4,6,8]

Prints the wall time of each ranking, the evaluations each made, and whether the head the fallback uses
(the first k layers for each k tried) is the same.
"""

from __future__ import annotations

import argparse
import time

import onnx

from cunet_edge.artifact import Artifact
from cunet_edge.checkpoint import read_train_config
from cunet_edge.quantize.int8 import QuantizeConfig, _calibrate, _Sensitivity, _Validator
from cunet_edge.quantize.qdq import SCHEMES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--k", default="0,1,2,3,4,6,8", help="fallback sizes whose head is compared")
    ap.add_argument("--screen-n", type=int, help="inputs each layer is screened on (default: by the image size)")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")]

    art = Artifact.load(args.artifact)
    cfg = QuantizeConfig(target="cpu")
    t0 = time.perf_counter()
    _, held, ranges = _calibrate(art, cfg)
    print(f"calibrate: {time.perf_counter() - t0:.1f} s")
    fp32 = art.file("model.onnx")
    model, scheme = onnx.load(str(fp32)), SCHEMES["cpu"]
    validator = _Validator(fp32, held.val, held.groups)

    t0 = time.perf_counter()
    old = _Sensitivity(model, ranges, scheme, validator, None)
    old_order = old.order(max(ks))
    t_old = time.perf_counter() - t0
    t0 = time.perf_counter()
    size = read_train_config(art).model.image_size
    screen_n = cfg.screen_inputs_for(size) if args.screen_n is None else args.screen_n
    new = _Sensitivity(model, ranges, scheme, validator, screen_n)
    heads = {k: new.order(k)[:k] for k in ks}
    t_new = time.perf_counter() - t0

    same = {k: heads[k] == old_order[:k] for k in ks}
    print(f"layers: {len(old.nodes)}; validation inputs: {len(validator.ref)}")
    print(f"every layer on all inputs: {t_old:.1f} s, {len(old.nodes)} evaluations on {len(validator.ref)} inputs")
    print(f"screened: {t_new:.1f} s, {new.evaluations['screen']} on {new.evaluations['screen_inputs']} inputs + "
          f"{new.evaluations['full']} on {len(validator.ref)}")
    print(f"ratio: {t_old / t_new:.2f}x; same head for k in {ks}: {same}")


if __name__ == "__main__":
    main()
