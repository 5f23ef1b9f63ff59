"""Wall time and peak memory of a stage against model size, before and after a change: a table and a log-log plot.

Reads what the runs left behind: the `/usr/bin/time -v` log of each run (wall clock, maximum resident set
size) and, for the x axis, the MACs per call recorded in the ONNX artifact the stage read (`model_cost`). The
phase wall times come from the output artifact's manifest (`timings_s`) where the stage records them.

    python benchmarks/scale_plot.py --run 16:before:/tmp/scale/quant16.before.log:/tmp/scale/d16t-onnx \\
        --run 16:after:/tmp/scale/quant16.after.log:/tmp/scale/d16t-onnx ... --out docs/results/2026-12-02-scale.png

Each --run is SIZE:LABEL:TIME_LOG:INPUT_ARTIFACT[:OUTPUT_ARTIFACT]. One line is drawn per LABEL: before/after,
or a stage name per line (docs/results/2026-12-02-stage-costs.md: INPUT is that size's ONNX export, for the MACs).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def parse_time_log(path: Path) -> dict:
    """Wall seconds, CPU seconds (user + system), peak RSS (MiB) and exit status from a `/usr/bin/time -v` log."""
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    status = int(re.search(r"Exit status: (\d+)", text).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", text).group(1)) for k in ("User", "System"))
    return {"wall_s": seconds, "cpu_s": cpu, "peak_mib": rss_kb / 1024, "exit": status}


def _slope(pts: list[dict], key: str) -> float:
    """Least-squares slope of log(key) against log(MACs)."""
    import numpy as np

    return float(np.polyfit(np.log([r["macs"] for r in pts]), np.log([r[key] for r in pts]), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="SIZE:LABEL:TIME_LOG:INPUT[:OUTPUT]")
    ap.add_argument("--out", required=True, help="PNG path")
    ap.add_argument("--title", default="quantize --target cpu")
    args = ap.parse_args()

    rows = []
    for spec in args.run:
        size, label, log, src, *rest = spec.split(":")
        cost = json.loads((Path(src) / "manifest.json").read_text())["model_cost"]
        row = {"size": int(size), "label": label, "macs": cost["macs"], "params": cost["params"],
               **parse_time_log(Path(log))}
        if rest and (Path(rest[0]) / "manifest.json").exists():
            man = json.loads((Path(rest[0]) / "manifest.json").read_text())
            row["timings_s"] = man.get("timings_s")
            row["float_nodes"] = len(man.get("float_nodes", []))
            row["sensitivity_evaluations"] = man.get("sensitivity_evaluations")
        rows.append(row)

    print("| px | model MACs/call | run | wall | CPU (user + sys) | peak RSS | exit |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["size"], r["label"])):
        print(f"| {r['size']} | {r['macs'] / 1e6:,.0f} M | {r['label']} | {r['wall_s'] / 60:.1f} min | "
              f"{r['cpu_s'] / 60:.1f} min | {r['peak_mib']:,.0f} MiB | {r['exit']} |")
    # Growth with the model: the slope of log(time) and log(peak memory) against log(MACs), per line (1.0: linear).
    for label in dict.fromkeys(r["label"] for r in rows):
        pts = [r for r in rows if r["label"] == label and r["exit"] == 0]
        if len({r["macs"] for r in pts}) >= 2:
            print(f"{label}: wall ~ MACs^{_slope(pts, 'wall_s'):.2f}, CPU ~ MACs^{_slope(pts, 'cpu_s'):.2f}, "
                  f"peak RSS ~ MACs^{_slope(pts, 'peak_mib'):.2f} (least squares in log-log, {len(pts)} runs)")
    for r in rows:
        if r.get("timings_s"):
            print(f"{r['size']} px {r['label']}: phases {r['timings_s']}, evaluations {r['sensitivity_evaluations']}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = list(dict.fromkeys(r["label"] for r in rows))  # before/after, or one line per stage
    for label, marker in zip(labels, "osD^v<>ph*x+"):
        pts = sorted((r for r in rows if r["label"] == label and r["exit"] == 0), key=lambda r: r["macs"])
        if not pts:
            continue
        x = [r["macs"] for r in pts]
        line, = axes[0].loglog(x, [r["wall_s"] for r in pts], marker=marker, label=f"{label}: wall")
        axes[0].loglog(x, [r["cpu_s"] for r in pts], marker=marker, ls="--", color=line.get_color(),
                       label=f"{label}: CPU (user + sys)")
        axes[1].loglog(x, [r["peak_mib"] for r in pts], marker=marker, label=label)
        for r in pts:
            axes[0].annotate(f"{r['size']} px", (r["macs"], r["wall_s"]), textcoords="offset points", xytext=(4, 4),
                             fontsize=8)
    axes[0].set(xlabel="model MACs per call", ylabel="seconds", title=f"{args.title}: time")
    axes[1].set(xlabel="model MACs per call", ylabel="peak RSS (MiB)", title=f"{args.title}: peak memory")
    from matplotlib.ticker import NullFormatter

    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())  # the minor labels of a log axis overlap
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
