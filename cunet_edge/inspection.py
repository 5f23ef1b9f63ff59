"""`inspect`: an artifact's lineage, architecture, solver, and the cost of one network call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .config import to_dict
from .kinds import STAGE_IO
from .models import profile_model

__all__ = ["inspect_artifact"]


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
