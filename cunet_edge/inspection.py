"""`inspect`: an artifact's lineage, architecture, solver, and the cost of one network call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import Artifact
from .checkpoint import load_checkpoint
from .config import to_dict
from .kinds import STAGE_IO
from .limits import check_engine_layers, check_member, read_json_record
from .models import PRESETS, build_model, get_preset, model_config_from_dict, preset_model_table, profile_model

__all__ = ["ENGINE_KIND", "inspect_artifact", "inspect_engine", "inspect_preset"]

ENGINE_KIND = "tensorrt-engine"


def _solver_summary(model_cfg, prof: dict) -> str:
    if model_cfg.arch == "imported":  # the network's own code: what it solves, if anything, was counted
        what = f"imported {model_cfg.source} network"
        if prof.get("ode_blocks"):
            return f"torchdiffeq inside the {what} ({prof['ode_blocks']} solve(s) per call)"
        return f"none ({what}, no torchdiffeq solve)"
    solver = getattr(model_cfg, "solver", None)
    if solver is None:
        return "none (discrete U-Net)"
    if solver.adaptive:
        return f"{solver.method} rtol={solver.rtol:g} atol={solver.atol:g}"
    return f"{solver.method} x{solver.steps}" + (" (unrolled)" if getattr(solver, "unrolled", False) else "")


def _pruned_widths(model_cfg) -> dict[str, Any] | None:
    """Every per-layer width of a pruned continuous U-Net, or the width attributes pruning changed in an imported
    network's layers (module path → attribute → value); None for a model at its nominal widths."""
    if not getattr(model_cfg, "pruned", False):
        return None
    if model_cfg.arch == "imported":
        return model_cfg.pruned.get("attributes", {})
    return model_cfg.layer_widths


def inspect_artifact(path: str | Path) -> dict[str, Any]:
    """params, MACs per call (every solver evaluation counted), NFE per call, configs, lineage."""
    ckpt = load_checkpoint(path, kinds=STAGE_IO["inspect"].accepts)
    m = ckpt.config.model
    prof = profile_model(ckpt.model, m)
    man = ckpt.artifact.manifest
    return {
        "path": str(ckpt.artifact.path),
        "kind": man["kind"],
        "id": man.get("id"),
        "parent": man.get("parent"),
        "arch": m.arch,
        "params": prof["params"],
        "macs": prof["macs"],
        "flops": prof["flops"],
        "nfe_per_call": prof["nfe_per_call"],
        "ode_blocks": prof.get("ode_blocks", 0),
        "model": to_dict(m),
        "widths": _pruned_widths(m),
        "solver": to_dict(m.solver) if hasattr(m, "solver") else None,
        "solver_summary": _solver_summary(m, prof),
        "diffusion": to_dict(ckpt.config.diffusion),
        "train_step": man.get("train_step"),
        "import": man.get("import"),
        "signature": man.get("signature"),
    }


def inspect_preset(name: str, image_size: int | None = None, in_channels: int | None = None) -> dict[str, Any]:
    """A preset's model built at random weights (no checkpoint): params, MACs per call (all, and thop's
    conv + linear count), NFE, and the published figures it is compared with. `name` "all": every preset."""
    if name == "all":
        return {"presets": [inspect_preset(n, image_size, in_channels) for n in PRESETS]}
    import torch

    p = get_preset(name)
    table = preset_model_table(name, image_size) | {"in_channels": in_channels or p.in_channels}
    m = model_config_from_dict(table)
    torch.manual_seed(0)
    prof = profile_model(build_model(m).eval(), m)
    ref = dict(p.reference)
    if "params" in ref:
        ref["params_ratio"] = prof["params"] / ref["params"]
    if "macs_thop" in ref:
        ref["macs_thop_ratio"] = prof["macs_conv_linear"] / ref["macs_thop"]
    return {
        "preset": name, "description": p.description, "arch": m.arch, "image_size": m.image_size,
        "in_channels": m.in_channels, "params": prof["params"], "macs": prof["macs"],
        "macs_conv_linear": prof["macs_conv_linear"], "nfe_per_call": prof["nfe_per_call"],
        "ode_blocks": prof.get("ode_blocks", 0), "solver_summary": _solver_summary(m, prof), "model": to_dict(m),
        "reference": ref,
    }


def inspect_engine(path: str | Path | Artifact) -> dict[str, Any]:
    """A TensorRT engine artifact: where it runs, its layers per precision (its IEngineInspector's report, which
    export saved in layers.json), the convolution/matmul layers that did not run INT8, and its check against ONNX
    Runtime."""
    art = path if isinstance(path, Artifact) else Artifact.load(path, kinds=(ENGINE_KIND,))
    m = art.manifest
    summary = m.get("engine_layers")
    layers = None
    if summary and summary.get("file"):
        where = f"{art.path}/{summary['file']}"
        layers = check_engine_layers(read_json_record(check_member(art.path, summary["file"], where), where), where)
    return {"path": str(art.path), "kind": m["kind"], "id": m.get("id"), "parent": m.get("parent"),
            "precision": m.get("precision"), "tensorrt_version": m.get("tensorrt_version"),
            "gpu_name": m.get("gpu_name"), "compute_capability": m.get("compute_capability"),
            "strongly_typed": m.get("strongly_typed"), "profile": m.get("profile"), "engine_layers": summary,
            "layers": layers, "engine_check": m.get("engine_check"), "signature": m.get("signature")}
