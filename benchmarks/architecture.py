"""Continuous U-Net vs the DDPM U-Net baseline at matched quality.

Trains a few widths of each architecture with the same recipe on the embedded digits, then
reports params, MACs per call (every solver evaluation counted), CPU latency per call
(batch 1, measured side by side in this run) and FID (classifier features) for each, and the
cunet/unet ratios for the pairs whose FIDs match within --match (default 10%).

    python benchmarks/architecture.py --json runs/arch.json [--steps 2000] [--n 1000]

Checkpoints go under --work (re-running resumes and reuses them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--work", default="runs/architecture", help="folder for the checkpoints")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--n", type=int, default=1000, help="samples for FID")
    p.add_argument("--sampler-steps", type=int, default=50, help="DDIM steps for FID")
    p.add_argument("--cunet-widths", default="8,16", help="base widths of the continuous U-Net")
    p.add_argument("--unet-widths", default="8,16,32", help="base widths of the baseline U-Net")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--match", type=float, default=0.10, help="relative FID difference that counts as matched")
    return p.parse_args(argv)


def _row(arch: str, width: int, args) -> dict:
    """Train (or resume) one model, then its params, MACs, NFE and FID."""
    from cunet_edge.checkpoint import load_checkpoint
    from cunet_edge.evaluation import evaluate_checkpoint
    from cunet_edge.models import profile_model
    from cunet_edge.sampling import SampleConfig
    from cunet_edge.checkpoint import train_config_from_options
    from cunet_edge.training import train

    extra = {"steps": args.steps} if args.steps else {}
    cfg = train_config_from_options(None, arch=arch, **extra)
    cfg = train_config_from_options_with_width(cfg, width)
    out = Path(args.work) / f"{arch}-w{width}"
    train(cfg, out, progress=True)
    ckpt = load_checkpoint(out)
    prof = profile_model(ckpt.model, cfg.model)
    m = evaluate_checkpoint(out, SampleConfig(n=args.n, steps=args.sampler_steps), progress=True)
    return {"arch": arch, "width": width, "params": prof["params"], "macs": prof["macs"],
            "nfe_per_call": prof["nfe_per_call"], "fid": m["fid"], "fid_ratio": m["fid_ratio"],
            "fid_real_reference": m["fid_real_reference"], "kid_mean": m["kid_mean"],
            "frac_confident": m["frac_confident"], "checkpoint": str(out)}


def _latencies(rows: list[dict], rounds: int = 5) -> None:
    """CPU latency per call at batch 1, every model timed in turn over several rounds (side by side)."""
    import torch

    from cunet_edge.checkpoint import load_checkpoint
    from cunet_edge.timing import time_side_by_side

    models = [load_checkpoint(r["checkpoint"]).model for r in rows]
    cfg = load_checkpoint(rows[0]["checkpoint"]).config.model
    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.tensor([500])
    with torch.no_grad():
        ms = time_side_by_side({i: (lambda m=m: m(x, t)) for i, m in enumerate(models)}, rounds=rounds,
                               warmup=3, min_iters=20, min_seconds=0.5)
    for i, r in enumerate(rows):
        r["latency_ms_b1"] = ms[i]


def train_config_from_options_with_width(cfg, width: int):
    """The same recipe with the model's base width changed (norm groups kept dividing it)."""
    from cunet_edge.config import to_dict
    from cunet_edge.training import train_config_from_dict

    d = to_dict(cfg)
    d["model"]["base_channels"] = width
    d["model"]["norm_groups"] = min(d["model"]["norm_groups"], width // 2)
    return train_config_from_dict(d)


def _matches(rows: list[dict], tol: float) -> list[dict]:
    """For each cunet row, the smallest baseline whose FID is within tol of it (relative)."""
    pairs = []
    for c in (r for r in rows if r["arch"] == "cunet"):
        close = [u for u in rows if u["arch"] == "unet" and abs(u["fid"] - c["fid"]) <= tol * c["fid"]]
        if not close:
            continue
        u = min(close, key=lambda r: r["params"])
        pairs.append({"cunet_width": c["width"], "unet_width": u["width"], "cunet_fid": c["fid"], "unet_fid": u["fid"],
                      "params_ratio": c["params"] / u["params"], "macs_ratio": c["macs"] / u["macs"],
                      "latency_ratio_b1": c["latency_ms_b1"] / u["latency_ms_b1"]})
    return pairs


def _print(rows, pairs):
    print(f"\n{'arch':6} {'width':>5} {'params':>10} {'MMACs':>8} {'NFE':>4} {'ms/call':>8} {'FID':>8} {'conf':>6}")
    for r in rows:
        print(f"{r['arch']:6} {r['width']:5d} {r['params']:10,d} {r['macs'] / 1e6:8.2f} {r['nfe_per_call']:4g} "
              f"{r['latency_ms_b1']:8.2f} {r['fid']:8.3f} {r['frac_confident']:6.2f}")
    print(f"real-vs-real reference FID: {rows[0]['fid_real_reference']:.3f}")
    if not pairs:
        print("no cunet/unet pair matched in FID; compare the rows above")
    for p in pairs:
        print(f"matched cunet w{p['cunet_width']} (FID {p['cunet_fid']:.3f}) vs unet w{p['unet_width']} "
              f"(FID {p['unet_fid']:.3f}): params x{p['params_ratio']:.2f}, MACs x{p['macs_ratio']:.2f}, "
              f"latency x{p['latency_ratio_b1']:.2f}")


def main(argv=None) -> int:
    args = _parse(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = [_row("cunet", int(w), args) for w in args.cunet_widths.split(",")]
    rows += [_row("unet", int(w), args) for w in args.unet_widths.split(",")]
    _latencies(rows)
    pairs = _matches(rows, args.match)
    _print(rows, pairs)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "matched": pairs, "match_tolerance": args.match}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
