"""Gathering a run: its artifacts, their lineage, the facts each one carries, and its measured variants.

Each directory under the run that holds a manifest.json is an artifact. Its `parent` links give
the lineage back to the FP32 checkpoint it came from (matched by id first, so a moved run still
links; followed outside the run when the parent lives elsewhere). A *variant* is one (artifact,
runtime, precision, sampler, sampler steps) found in the artifact's metrics.json:
`bench:<runtime>:b<B>:<sampler>-<steps>` sections give latency per call and per image, `evaluate:<sampler>-<steps>`
FID/KID at each sampler setting.
An artifact with no measurements still gets a row (params, MACs, size on disk). Nothing here is
special to a stage: a stage's own drift record (`drift` or `verification` in its manifest) and a
`prune` record anywhere up the lineage are read wherever they appear.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifact import MANIFEST, Artifact
from ..errors import ArtifactError, CunetEdgeError
from ..inspection import inspect_artifact
from ..kinds import MODEL_KINDS, kind_runtime
from ..records import (
    BENCH_SECTION,
    EVALUATE_SECTION,
    NOT_MEASURED,
    RESULT,
    SOLVER,
    evaluation_features,
    precision_of,
    prune_macs_ratio,
    read_metrics,
    sampler_setting,
)

__all__ = ["Node", "find_artifacts", "find_not_measured", "link_lineage", "artifact_facts", "variant_rows",
           "variant_label", "DEFAULT_SAMPLER"]

ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
DEFAULT_SAMPLER = ("ddim", 50)  # what bench and evaluate use by default; grids of unmeasured artifacts too


@dataclass(eq=False)
class Node:
    """One artifact in the lineage forest: the loaded artifact, where it sits, and what was measured on it."""

    art: Artifact
    name: str  # path relative to the run dir (absolute for an ancestor outside it)
    in_run: bool = True
    parent: Node | None = None
    parent_note: str | None = None  # why the recorded parent could not be followed
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    eps: Any = None  # ε on the lineage's common inputs (numpy), when it ran here
    grids: dict[tuple[str, int], Any] = field(default_factory=dict)  # (sampler, steps) -> images
    grid_files: dict[tuple[str, int], str] = field(default_factory=dict)
    estimates: dict[str, dict | str] = field(default_factory=dict)  # device -> figures, or why none
    reference: Node | None = None  # the lineage's node every ε and grid is compared with (its root, if it ran)

    @property
    def kind(self) -> str:
        return self.art.kind

    def lineage(self) -> list[Node]:
        """Root first, this node last."""
        chain, node = [], self
        while node is not None and node not in chain:  # a cycle can only come from hand-edited manifests
            chain.append(node)
            node = node.parent
        return chain[::-1]


# --- gathering ------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def find_artifacts(run_dir: str | Path) -> tuple[list[Node], list[dict]]:
    """Every artifact directory under run_dir (itself included), and the directories skipped with the reason."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"run directory {run_dir} does not exist" if not run_dir.exists()
                            else f"{run_dir} is a file; give the directory that holds the run's artifacts")
    nodes, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        # Hidden folders are in-progress writes (.name.tmp-*) or swapped-out old copies.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if MANIFEST not in filenames:
            continue
        dirnames[:] = []  # an artifact's sub-folders (train_state/, calibration/) are payload
        path = Path(dirpath)
        name = path.relative_to(run_dir).as_posix() if path != run_dir else path.name
        try:
            art = Artifact.load(path)
        except ArtifactError as exc:
            skipped.append({"path": name, "reason": str(exc)})
            continue
        node = Node(art, name)
        try:
            node.metrics = read_metrics(path)
        except (OSError, ValueError, UnicodeDecodeError):  # not JSON, or not a table
            node.notes.append("metrics.json is unreadable; its measurements are left out")
        nodes.append(node)
    if not nodes:
        raise ArtifactError(f"no artifacts under {run_dir}: no directory in it holds a valid {MANIFEST}"
                            + (f" ({len(skipped)} skipped: {skipped[0]['reason']})" if skipped else ""))
    return nodes, skipped


def find_not_measured(run_dir: str | Path) -> list[dict]:
    """Stages of a pipeline run that could not run on its machine (no TensorRT, no GPU): each folder directly in
    run_dir whose result.json says why ({"stage", "name", "inputs", "not_measured"}), by name."""
    rows = []
    for d in sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (d / MANIFEST).exists():
            continue
        rec = _read_json(d / RESULT)
        if isinstance(rec, dict) and isinstance(rec.get(NOT_MEASURED), str):
            rows.append({"artifact": d.name, "stage": str(rec.get("stage", "?")),
                         "inputs": [str(i) for i in rec.get("inputs") or []], NOT_MEASURED: rec[NOT_MEASURED]})
    return rows


def _match(rec: dict, by_path: dict[Path, Node], by_id: dict[str, list[Node]]) -> Node | None:
    """The recorded parent: at its recorded path if that is the same artifact, else the artifact with its id.

    Copies of one artifact share its id (the id hashes the files), so among several the one whose
    folder name matches the recorded path's wins, then the first by name.
    """
    path = Path(rec.get("path", "")).resolve()
    at_path = by_path.get(path)
    if at_path is not None and at_path.art.manifest.get("id") == rec.get("id"):
        return at_path
    same = sorted(by_id.get(rec.get("id"), []) if rec.get("id") else [],
                  key=lambda n: (n.art.path.name != path.name, n.name))
    return same[0] if same else None


def link_lineage(nodes: list[Node]) -> list[Node]:
    """Set each node's parent (loading ancestors outside the run when needed); returns the ancestors added."""
    by_id: dict[str, list[Node]] = {}
    for n in nodes:
        by_id.setdefault(n.art.manifest.get("id"), []).append(n)
    by_path = {n.art.path.resolve(): n for n in nodes}
    outside: list[Node] = []
    pending = list(nodes)
    while pending:
        node = pending.pop()
        rec = node.art.manifest.get("parent")
        if not rec:
            continue
        found = _match(rec, by_path, by_id)
        if found is None:
            found = _load_outside(rec, node)
            if found is not None:
                by_id.setdefault(found.art.manifest.get("id"), []).append(found)
                by_path[found.art.path.resolve()] = found
                outside.append(found)
                pending.append(found)
        node.parent = found
    return outside


def _load_outside(rec: dict, child: Node) -> Node | None:
    if not rec.get("path"):
        child.parent_note = "its manifest names a parent without a path"
        return None
    path = Path(rec["path"])
    try:
        art = Artifact.load(path, verify=False)
    except ArtifactError as exc:
        child.parent_note = f"parent not followed: {exc}"
        return None
    if rec.get("id") and art.manifest.get("id") != rec["id"]:
        child.parent_note = f"parent {path} was replaced since (id {art.manifest.get('id')}, recorded {rec['id']})"
        return None
    return Node(art, str(path), in_run=False)


def _train_config(node: Node) -> dict:
    data = _read_json(node.art.file("config.json"))
    return data if isinstance(data, dict) else {}


def _solver_text(node: Node) -> str | None:
    rec = node.art.manifest.get(SOLVER)
    if rec:
        return f"{rec['method']} x{rec['steps']}"
    model = _train_config(node).get("model") or {}
    if model.get("arch") == "unet":
        return "none (U-Net)"
    s = model.get("solver")
    if not s:
        return None
    if s.get("method") in ADAPTIVE_SOLVERS:
        return f"{s['method']} rtol={s.get('rtol')} · torchdiffeq"
    return f"{s.get('method')} x{s.get('steps')} · torchdiffeq"


def _model_bytes(art: Artifact) -> int:
    """Bytes of the model payload (model.onnx, model.safetensors, model.engine, ...), else of every file."""
    files = art.manifest.get("files", {})
    model = [m["bytes"] for n, m in files.items() if "/" not in n and n.startswith("model.")]
    return sum(model) if model else sum(m["bytes"] for m in files.values())


def _cost(node: Node) -> dict:
    """params / MACs / NFE per call: recorded by the stage, else by a bench run, else counted now (inspect)."""
    cost = dict(node.art.manifest.get("model_cost") or {})
    for sec, rec in node.metrics.items():
        if BENCH_SECTION.fullmatch(sec) and isinstance(rec, dict):
            cost.setdefault("params", rec.get("params"))
            cost.setdefault("macs", rec.get("macs_per_call"))
            cost.setdefault("nfe_per_call", rec.get("nfe_per_call"))

    if (cost.get("params") is None or cost.get("macs") is None) and node.kind in MODEL_KINDS:

        try:
            info = inspect_artifact(node.art.path)
            cost.update(params=info["params"], macs=info["macs"], nfe_per_call=info["nfe_per_call"])
        except CunetEdgeError as exc:
            node.notes.append(f"params/MACs not counted: {exc}")
    return cost


def _prune_ratio(node: Node) -> float | None:
    """The nearest pruning record on the lineage (this stage or an ancestor): MACs kept / MACs before."""
    for n in reversed(node.lineage()):
        ratio = prune_macs_ratio(n.art.manifest)
        if ratio is not None:
            return ratio
    return None


def artifact_facts(node: Node) -> dict:
    """The columns an artifact has whatever was measured on it."""
    tc = _train_config(node)
    data = tc.get("data") or {}
    cost = _cost(node)
    solver = node.art.manifest.get(SOLVER) or {}
    return {
        "artifact": node.name, "kind": node.kind, "stage": node.art.manifest.get("stage"),
        "parent": node.parent.name if node.parent else None,
        "lineage": " → ".join(n.name for n in node.lineage()),
        "solver": _solver_text(node), "nfe_per_call": solver.get("nfe_per_call", cost.get("nfe_per_call")),
        "prune_macs_ratio": _prune_ratio(node), "params": cost.get("params"), "macs_per_call": cost.get("macs"),
        "size_bytes": _model_bytes(node.art),
        "dataset": f"{data['name']} {data.get('image_size')}px" if data.get("name") else None,
    }


# --- variants -------------------------------------------------------------------------------------------


def _bench_records(node: Node) -> list[dict]:
    """Bench records by batch; a section named with its sampler wins over an older one without it."""
    def older_last(item) -> bool:
        m = BENCH_SECTION.fullmatch(item[0])
        return not (m and m["sampler"])

    out: dict[tuple, dict] = {}
    for sec, rec in sorted(node.metrics.items(), key=older_last):
        m = BENCH_SECTION.fullmatch(sec)
        if m and isinstance(rec, dict) and isinstance(rec.get("p50_ms"), (int, float)):
            r = {**rec, "runtime": rec.get("runtime", m["runtime"]), "batch": int(m["batch"])}
            key = (m["runtime"], r["batch"], r.get("precision"), sampler_setting(r), r.get("sampler_steps"))
            out.setdefault(key, r)
    return sorted(out.values(), key=lambda r: r["batch"])


def _evaluations(node: Node) -> list[dict]:
    """Every evaluation stored for the artifact, one per sampler setting (`evaluate:SAMPLER-STEPS`, else `evaluate`)."""
    by_setting: dict[tuple, dict] = {}
    for sec, rec in sorted(node.metrics.items(), key=lambda kv: kv[0] == "evaluate"):  # the named ones first
        if EVALUATE_SECTION.fullmatch(sec) and isinstance(rec, dict):
            by_setting.setdefault((sampler_setting(rec), rec.get("sampler_steps")), rec)
    return list(by_setting.values())


def _variant_keys(node: Node, benches: list[dict], evs: list[dict]) -> list[tuple]:
    own = precision_of(node.art.manifest)
    keys = {(b["runtime"], b.get("precision") or own, sampler_setting(b), b.get("sampler_steps")) for b in benches}
    for ev in evs:
        keys.add((ev.get("runtime") or kind_runtime(node.kind), own, sampler_setting(ev),
                  ev.get("sampler_steps")))
    return sorted(keys, key=lambda k: tuple(str(v) for v in k))


def _hw(b: dict) -> str:
    """Where the latency was measured (cpu, cuda): Pareto fronts never mix two of them."""
    return b.get("device") or "?"


def _one_variant(key: tuple, benches: list[dict], evs: list[dict], own_precision: str) -> dict:
    """Latency at batch 1 (else the smallest batch benched), throughput at the best batch, quality if evaluated."""
    runtime, precision, sampler, steps = key
    same = [b for b in benches if b["runtime"] == runtime and (b.get("precision") or own_precision) == precision]
    row = {"runtime": runtime, "precision": precision, "sampler": sampler, "sampler_steps": steps}
    if same:
        smallest = [b for b in same if b["batch"] == same[0]["batch"]]
        call = next((b for b in smallest if (sampler_setting(b), b.get("sampler_steps")) == (sampler, steps)),
                    smallest[0])  # the run that timed this sampler setting, if there was one
        best = max(same, key=lambda b: b.get("images_per_s") or 0)
        row.update(hw=_hw(call), call_batch=call["batch"], call_p50_ms=call["p50_ms"], call_p90_ms=call.get("p90_ms"),
                   throughput_img_s=best.get("images_per_s"), throughput_batch=best["batch"])
        image = [b for b in same if sampler_setting(b) == sampler and b.get("sampler_steps") == steps
                 and isinstance(b.get("image_latency_ms"), (int, float))]
        if image:
            per = image[0].get("image_batch") or 1
            row.update(image_p50_ms=image[0]["image_latency_ms"] / per,
                       image_p90_ms=image[0]["image_p90_ms"] / per if "image_p90_ms" in image[0] else None)
    ev = next((e for e in evs if (e.get("runtime") or runtime) == runtime and precision == own_precision
               and (sampler_setting(e), e.get("sampler_steps")) == (sampler, steps)), None)
    if ev:
        row.update(fid=ev.get("fid"), kid=ev.get("kid_mean"), kid_std=ev.get("kid_std"),
                   kid_real_reference=ev.get("kid_real_reference"), kid_subset_size=ev.get("kid_subset_size"),
                   features=evaluation_features(ev), fid_real_reference=ev.get("fid_real_reference"),
                   eval_n=ev.get("n_samples"), frac_confident=ev.get("frac_confident"))
    return row


def variant_rows(node: Node) -> list[dict]:
    """One row per (runtime, precision, sampler, steps) this artifact was measured at; one bare row if none."""
    own = precision_of(node.art.manifest)
    evs = _evaluations(node)
    benches = _bench_records(node)
    keys = _variant_keys(node, benches, evs)
    if not keys:
        return [{"runtime": None, "precision": own, "sampler": None, "sampler_steps": None}]
    return [_one_variant(k, benches, evs, own) for k in keys]


def variant_label(facts: dict, row: dict) -> str:
    if row["runtime"] is None:
        return f"{facts['artifact']} (not measured)"
    return f"{facts['artifact']} · {row['runtime']} {row['precision']} · {row['sampler']} {row['sampler_steps']}"
