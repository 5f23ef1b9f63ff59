"""The Pareto plot: quality against latency, one panel per (dataset, measuring device), the front marked.

Drawn on matplotlib's Agg canvas through `Figure` (no pyplot state, no display needed).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import import_backend

__all__ = ["plot_pareto", "check_plotting"]

_HINT = "pip install 'cunet-edge[report]' (matplotlib draws the Pareto plot)"
COLORS = {"fp32": "#4c72b0", "fp16": "#55a868", "bf16": "#8172b3", "int8": "#dd8452"}
FRONT = "#c44e52"


def check_plotting():
    """matplotlib, or a one-line BackendMissingError with the install hint (checked before any work)."""
    return import_backend("matplotlib", "matplotlib", _HINT)


def _label(r: dict) -> str:
    return f"{r['artifact']} ({r['runtime']} {r['precision']}, {r['sampler']} {r['sampler_steps']})"


def _panel(ax, group: dict, rows: dict, p: dict) -> None:
    """Points numbered by latency, the key beside the axes; the front as a dashed staircase with rings."""
    from matplotlib.lines import Line2D

    q, lat = p["quality"], p["latency"]
    pts = sorted((rows[v] for v in group["points"]), key=lambda r: (r[lat], r[q]))
    front = [r for r in pts if r["variant"] in group["frontier"]]
    key, numbers = [], {}
    for i, r in enumerate(pts, 1):
        color = COLORS.get(r["precision"], "#777777")
        ax.scatter(r[lat], r[q], s=46, color=color, edgecolor="black", linewidth=0.5, zorder=3)
        numbers.setdefault((r[lat], r[q]), []).append(str(i))  # copies of one model measured alike coincide
        star = " ★" if r in front else ""
        key.append(Line2D([], [], marker="o", linestyle="", color=color, markeredgecolor="black",
                          label=f"{i}  {_label(r)}{star}"))
    for xy, labels in numbers.items():
        ax.annotate(",".join(labels), xy, xytext=(6, 5), textcoords="offset points", fontsize=8, weight="bold")
    xs, ys = [r[lat] for r in front], [r[q] for r in front]
    ax.step(xs, ys, where="post", color=FRONT, linestyle="--", linewidth=1.4, zorder=2)
    ax.scatter(xs, ys, s=190, facecolors="none", edgecolors=FRONT, linewidths=2, zorder=4)
    key.append(Line2D([], [], marker="o", linestyle="--", color=FRONT, markerfacecolor="none", markersize=11,
                      markeredgewidth=2, label="Pareto front"))
    if q == "fid":
        refs = sorted({r["fid_real_reference"] for r in pts if isinstance(r.get("fid_real_reference"), float)})
        for ref in refs[:1]:
            ax.axhline(ref, color="#888888", linestyle=":", linewidth=1.2)
            key.append(Line2D([], [], color="#888888", linestyle=":", label=f"real vs real FID {ref:.2f}"))
    lats = [r[lat] for r in pts]
    if min(lats) > 0 and max(lats) / min(lats) > 8:
        ax.set_xscale("log")
    ax.set_xlabel(p["latency_label"] + " — lower is faster")
    ax.set_ylabel(p["quality_label"])
    space = f" · FID in {group['features']} features" if group.get("features") else ""
    ax.set_title(f"{group['dataset'] or 'dataset unknown'} · measured on {group['hw'] or '?'}{space}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=key, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              title="fp32 blue · fp16 green · int8 orange", title_fontsize=7.5, alignment="left")
    ax.margins(x=0.12, y=0.12)


def plot_pareto(result: dict, path: Path) -> None:
    """Write the PNG at `path`; with nothing to plot, a panel that says what is missing."""
    check_plotting()
    from matplotlib.figure import Figure

    p, rows = result["pareto"], {r["variant"]: r for r in result["variants"]}
    groups = p["groups"]
    fig = Figure(figsize=(12, 5.2 * max(1, len(groups))), dpi=100, layout="constrained")
    axes = fig.subplots(max(1, len(groups)), 1, squeeze=False)[:, 0]
    if not groups:
        axes[0].text(0.5, 0.5, "No variant has both a quality figure and a latency:\nrun `cunet-edge bench` and "
                     "`cunet-edge evaluate` on the run's artifacts.", ha="center", va="center",
                     transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, g in zip(axes, groups):
        _panel(ax, g, rows, p)
    fig.suptitle("Quality against latency (the front: nothing else is both faster and better)", fontsize=11)
    fig.savefig(path, format="png")
