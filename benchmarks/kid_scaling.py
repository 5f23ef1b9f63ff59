"""KID in the classifier's features: raw features with subsets of 100 (before) against features centred and
scaled by the real set with subsets of half the smaller set (what `evaluate` does now), and per-dimension
standardization for comparison, on the real test split and on a checkpoint's samples at several DDIM step counts.

    python benchmarks/kid_scaling.py runs/digits --steps 50,10,5,3 [--n 1000] [--json out.json]

Prints a Markdown table (docs/results/2026-12-02-kid.md); the FID column is the samples' FID (raw features).
"""

from __future__ import annotations

import argparse
import json
import sys


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a model artifact trained on a labelled dataset")
    p.add_argument("--steps", default="50,10,5,3", help="DDIM step counts to sample at")
    p.add_argument("--n", type=int, default=1000, help="samples per step count")
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args(argv)


def _cell(d: dict) -> str:
    return f"{d['kid_mean']:.3g} ± {d['kid_std']:.2g}"


def main(argv=None) -> int:
    import torch

    from cunet_edge import models
    from cunet_edge.artifact import Artifact
    from cunet_edge.checkpoint import read_train_config
    from cunet_edge.data import load_images
    from cunet_edge.evaluation import extract_features, fid_kid_features, load_or_train_classifier
    from cunet_edge.sampling import EvaluateConfig, draw_images

    args = _parse(argv)
    art = Artifact.load(args.checkpoint)
    data = read_train_config(art).data
    extractor = models.FeatureExtractor(load_or_train_classifier(data))
    real = extract_features(extractor, load_images(data, "train")[0])
    sd = real.std(dim=0)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))

    def per_dim(f):
        return (f - real.mean(dim=0)) / sd

    sets = [("real test split", extract_features(extractor, load_images(data, "test")[0]))]
    for steps in (int(s) for s in args.steps.split(",")):
        images, _ = draw_images(art, EvaluateConfig(n=args.n, steps=steps))
        sets.append((f"DDIM {steps}", extract_features(extractor, images)))
    rows = []
    print("| images | FID | KID before (raw, subsets of 100) | KID now (scaled, subsets of n/2) | "
          "per-dimension standardized, subsets of n/2 |")
    print("|---|---|---|---|---|")
    for name, feats in sets:
        before = fid_kid_features(feats, real, kid_subset_size=100)
        now = fid_kid_features(feats, real, scale_kid=True)
        per = fid_kid_features(per_dim(feats), per_dim(real))
        rows.append({"images": name, "n": int(feats.shape[0]), "fid": now["fid"], "before": before, "now": now,
                     "per_dim": per})
        print(f"| {name} ({feats.shape[0]}) | {now['fid']:.2f} | {_cell(before)} | {_cell(now)} "
              f"(m={now['kid_subset_size']}) | {_cell(per)} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
