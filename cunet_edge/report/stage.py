"""The `report` stage: a run directory → report.md, report.html, report.csv, report.json, a Pareto plot, grids.

Rows are variants (see `gather`), in lineage order; each carries the artifact's facts, its
latency and quality, the ε error against its lineage's FP32 reference and the drift each stage
on the way added (see `measure`), and roofline estimates per device profile. The Pareto front
is taken per dataset and per measuring device, over quality (FID, else ε error) and latency
(per image, else per call). Everything is written into a temporary sibling directory and
renamed into place at the end, so a failure never leaves a half-written report.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..artifact import check_output_path, move_into_place, staging_dir
from ..config import check_choice, check_positive, to_dict
from ..data import save_image_grid
from ..devices.profiles import list_profiles
from ..errors import OutputPathError
from ..records import pruning_record, recorded_drift
from ..search import pareto_front as non_dominated
from . import render
from .gather import (
    DEFAULT_SAMPLER,
    Node,
    artifact_facts,
    find_artifacts,
    find_not_measured,
    link_lineage,
    variant_label,
    variant_rows,
)
from .measure import EPS_RUNS, EPS_STEPS, estimate_devices, measure_lineages, psnr, rel_err
from ..limits import check_seed, check_threads

__all__ = ["ReportConfig", "report", "pareto_front", "QUALITY_AXES", "LATENCY_AXES", "STAGE_ORDER"]

QUALITY_AXES = (("fid", "FID (lower is better)"), ("eps_rel_err", "ε relative error vs FP32 reference"))
LATENCY_AXES = (("image_p50_ms", "latency per image, p50 (ms)"), ("call_p50_ms", "latency per network call, p50 (ms)"))
# Drift columns come in pipeline order; a stage not listed here (a new one) follows, alphabetically.
STAGE_ORDER = ("unroll", "prune", "export", "quantize")


@dataclass(frozen=True)
class ReportConfig:
    """Device profiles to estimate on, and whether to measure drift and sample grids (runs every model once)."""

    devices: tuple[str, ...] = ()
    measure: bool = True
    samples: int = 16  # images per sample grid
    seed: int = 0
    # CPU threads of the models the report runs: they are small, and on a loaded machine threads that
    # wait for each other make convolutions many times slower (the report on this project's runs, 2-core CPU
    # shared with other jobs: 21 min with torch's 2 threads, 57 s with one).
    threads: int | None = 1

    def __post_init__(self):
        check_seed(self.seed)
        check_positive("samples", self.samples)
        if self.threads is not None:
            check_threads(self.threads)
        if self.devices:

            for d in self.devices:
                check_choice("device", d, list_profiles())


# --- rows -------------------------------------------------------------------------------------------------


def _tree_order(nodes: list[Node]) -> list[Node]:
    """Depth first from each root, children by name: the table reads like the pipeline."""
    children: dict[Node | None, list[Node]] = {}
    for n in nodes:
        children.setdefault(n.parent, []).append(n)
    order: list[Node] = []

    def walk(n: Node) -> None:
        order.append(n)
        for c in sorted(children.get(n, []), key=lambda c: c.name):
            walk(c)

    for root in sorted(children.get(None, []), key=lambda c: c.name):
        walk(root)
    return order


def _stage_drift(node: Node) -> tuple[dict[str, float], list[str]]:
    """Drift each stage on the lineage added: measured here (child vs parent ε), else as the stage recorded it."""
    drift: dict[str, float] = {}
    sources = []
    for hop in node.lineage()[1:]:
        stage = hop.art.manifest.get("stage") or hop.kind
        if hop.eps is not None and hop.parent is not None and hop.parent.eps is not None:
            value, source = rel_err(hop.eps, hop.parent.eps), "measured"
        elif (rec := recorded_drift(hop.art.manifest)) is not None:
            value, source = rec["eps_rel_err"], "recorded"
        else:
            sources.append(f"{stage}: unknown")
            continue
        drift[stage] = drift.get(stage, 0.0) + value  # two prunes on one lineage: their drifts add up (a bound)
        sources.append(f"{stage}: {source}")
    return drift, sources


def _measured(node: Node, row: dict) -> dict:
    ref = node.reference
    out: dict = {"reference": ref.name if ref else None}
    if ref is node:
        out["eps_rel_err"] = 0.0  # the reference against itself, whether or not its lineage needed ε measured
    elif ref is not None and node.eps is not None and ref.eps is not None:
        out["eps_rel_err"] = rel_err(node.eps, ref.eps)
    key = (row["sampler"], row["sampler_steps"]) if row["sampler"] else DEFAULT_SAMPLER
    key = key if key in node.grids else next(iter(node.grids), None)
    if key is not None:
        out["samples"] = node.grid_files.get(key)
        if ref is not None and key in ref.grids:
            out["sample_psnr_db"] = psnr(node.grids[key], ref.grids[key])
    drift, sources = _stage_drift(node)
    out.update({f"drift_{s}": v for s, v in drift.items()})
    out["drift_sources"] = "; ".join(sources) or None
    return out


def _estimated(node: Node, row: dict, devices: tuple[str, ...]) -> dict:
    out = {}
    steps = row["sampler_steps"] or DEFAULT_SAMPLER[1]
    for d in devices:
        e = node.estimates.get(d)
        if isinstance(e, dict):
            out[f"est_{d}_call_ms"] = e["call_ms"]
            out[f"est_{d}_image_ms"] = e["call_ms"] * steps
    return out


def build_rows(nodes: list[Node], cfg: ReportConfig) -> list[dict]:
    rows = []
    for node in _tree_order(nodes):
        if not node.in_run:
            continue
        facts = artifact_facts(node)
        for v in variant_rows(node):
            rows.append({"variant": variant_label(facts, v), **facts, **v, **_measured(node, v),
                         **_estimated(node, v, cfg.devices)})
    return rows


def stages_of(rows: list[dict]) -> list[str]:
    found = {k[len("drift_"):] for r in rows for k in r if k.startswith("drift_") and k != "drift_sources"}
    return [s for s in STAGE_ORDER if s in found] + sorted(found - set(STAGE_ORDER))


# --- Pareto front -----------------------------------------------------------------------------------------


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _against_reference(front: list[str], members: list[dict], q: str, lat: str) -> list[dict]:
    """Each frontier variant against its lineage's reference, same sampler settings when measured: speed-up, cost."""
    by_label = {r["variant"]: r for r in members}
    out = []
    for label in front:
        r = by_label[label]
        bases = [m for m in members if m["artifact"] == r.get("reference")]
        bases.sort(key=lambda m: (m["sampler"], m["sampler_steps"]) != (r["sampler"], r["sampler_steps"]))
        if bases:
            b = bases[0]
            out.append({"variant": label, "reference": b["variant"], "speedup": b[lat] / r[lat], "quality": r[q],
                        "reference_quality": b[q]})
    return out


def pareto_front(rows: list[dict]) -> dict:
    """Non-dominated rows (lower quality figure and lower latency), per (dataset, measuring device, and for FID
    the feature space it was measured in).

    Axes: the first (quality, latency) pair of QUALITY_AXES x LATENCY_AXES that some row has both of.
    Sets rows' `pareto` to True/False where plotted, None where a figure is missing.
    """
    for (q, q_label), (lat, lat_label) in itertools.product(QUALITY_AXES, LATENCY_AXES):
        plotted = [r for r in rows if _num(r.get(q)) and _num(r.get(lat))]
        if plotted:
            break
    else:
        for r in rows:
            r["pareto"] = None
        return {"quality": None, "latency": None, "groups": []}
    groups: dict[tuple, list[dict]] = {}
    for r in plotted:  # FIDs in two feature spaces are not comparable: never on one front
        groups.setdefault((r.get("dataset"), r.get("hw"), r.get("features") if q == "fid" else None), []).append(r)
    out = []
    for (dataset, hw, features), members in sorted(groups.items(), key=lambda g: str(g[0])):
        front = [r["variant"] for r in non_dominated(members, quality=q, cost=lat)]
        out.append({"dataset": dataset, "hw": hw, "features": features, "points": [r["variant"] for r in members],
                    "frontier": front, "vs_reference": _against_reference(front, members, q, lat)})
    on_front, shown = {v for g in out for v in g["frontier"]}, {id(r) for r in plotted}
    for r in rows:
        r["pareto"] = (r["variant"] in on_front) if id(r) in shown else None
    return {"quality": q, "quality_label": q_label, "latency": lat, "latency_label": lat_label, "groups": out}


# --- output -----------------------------------------------------------------------------------------------


@contextmanager
def _staging(out: Path, replace: bool) -> Iterator[Path]:
    """A temporary sibling of `out` to write into; renamed to `out` on success, removed on any failure."""
    tmp = staging_dir(out)
    try:
        yield tmp
        move_into_place(tmp, out, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "artifact"


def _write_grids(nodes: list[Node], folder: Path) -> None:
    import torch


    for node in nodes:
        if not node.in_run:
            continue
        for (sampler, steps), images in node.grids.items():
            rel = f"samples/{_slug(node.name)}-{sampler}{steps}.png"
            save_image_grid(torch.from_numpy(images), folder / rel)
            node.grid_files[(sampler, steps)] = rel


def _artifact_record(node: Node) -> dict:
    return {"artifact": node.name, "path": str(node.art.path), "id": node.art.manifest.get("id"), "kind": node.kind,
            "stage": node.art.manifest.get("stage"), "in_run": node.in_run,
            "parent": node.parent.name if node.parent else None, "parent_note": node.parent_note,
            "reference": node.reference.name if node.reference else None,
            "recorded_drift": recorded_drift(node.art.manifest), "pruning": pruning_record(node.art.manifest),
            "metrics_sections": sorted(node.metrics), "estimates": node.estimates, "notes": node.notes,
            "engine_layers": node.art.manifest.get("engine_layers"),
            "engine_check": node.art.manifest.get("engine_check")}


def _check_out(out, nodes: list[Node]) -> None:
    target = Path(out).absolute()
    for n in nodes:
        if target == n.art.path.absolute() or n.art.path.absolute() in target.parents:
            raise OutputPathError(f"output {out} is inside artifact {n.art.path}; write the report elsewhere")


def _check_is_report(out: Path) -> None:
    """`--replace` swaps out only a report this command wrote: its report.json and nothing but report files."""
    known = set(render.FILES.values()) | {"samples"}
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else [out.name]
    try:
        record = json.loads((out / render.FILES["json"]).read_text())
    except (OSError, ValueError, RecursionError):
        record = None
    foreign = [n for n in names if n not in known]
    if not isinstance(record, dict) or "variants" not in record or foreign:
        why = f"it holds {', '.join(foreign[:3])}" if foreign else f"it has no {render.FILES['json']} of a report"
        raise OutputPathError(f"--replace replaces only a report, and {out} is not one ({why}); choose another --out")


def report(run_dir: str | Path, cfg: ReportConfig, out: str | Path, *, replace: bool = False,
           progress: bool = True) -> dict:
    """Stage: every artifact under run_dir → the report files in `out` (a directory, written atomically)."""
    from rich.progress import Progress


    out = check_output_path(out, exist_ok=replace)
    if replace and out.exists():
        _check_is_report(out)
    render.check_plotting()
    nodes, skipped = find_artifacts(run_dir)
    _check_out(out, nodes)
    everything = nodes + link_lineage(nodes)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("report", total=None)
        if cfg.measure:
            variants = {n: variant_rows(n) for n in nodes}
            measure_lineages(everything, variants, cfg, lambda name: bar.update(task, description=f"measure {name}"))
        for n in nodes:
            bar.update(task, description=f"estimate {n.name}")
            estimate_devices(n, cfg.devices)
    with _staging(out, replace) as tmp:
        _write_grids(nodes, tmp)
        rows = build_rows(everything, cfg)
        result = {
            "run_dir": str(Path(run_dir).absolute()), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": to_dict(cfg), "stages": stages_of(rows), "devices": list(cfg.devices),
            "eps_inputs": {"runs": EPS_RUNS, "ddim_steps": EPS_STEPS, "n": EPS_RUNS * EPS_STEPS, "seed": cfg.seed + 1},
            "pareto": pareto_front(rows), "variants": rows,
            "artifacts": [_artifact_record(n) for n in _tree_order(everything)], "skipped": skipped,
            "not_measured": find_not_measured(run_dir),
        }
        render.write_all(result, tmp)
    result["out"] = str(out)
    return result
