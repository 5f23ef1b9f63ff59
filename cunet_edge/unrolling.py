"""The `unroll` stage: a continuous U-Net checkpoint → the same weights with each ODE block's solver
baked in as a fixed number of explicit steps (`cunet_edge.models.explicit`), a static graph.

An imported model (`cunet-edge import`) whose own code calls `torchdiffeq.odeint` or
`odeint_adjoint` is unrolled the same way: every such call is replaced by the explicit loop of the
chosen method (`cunet_edge.models.odeint_unroll`), checked in float64 against torchdiffeq's own
fixed-grid solution of the same method and steps.

torchdiffeq's solvers cannot be exported to a static graph (adaptive ones loop on data, and
fixed-grid `odeint` leaves ScatterND plumbing in legacy ONNX exports); the unrolled model can.
The artifact records its solver (`cunet_edge.records.solver_record`), and every later stage
refuses other solver settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from . import models
from .checkpoint import load_checkpoint, save_checkpoint
from .config import check_choice, to_dict
from .errors import ConfigError
from .kinds import STAGE_IO
from .models.explicit import UNROLLABLE, nfe_per_step
from .records import SOLVER, TRAINED_SOLVER, solver_record

__all__ = ["UnrollConfig", "unroll"]


@dataclass(frozen=True)
class UnrollConfig:
    """Which fixed-step method, and how many steps over [0, 1], each ODE block gets (None: as trained)."""

    method: str | None = None
    steps: int | None = None

    def __post_init__(self):
        if self.method is not None:
            check_choice("method", self.method, UNROLLABLE)
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")

    def resolve(self, trained) -> "UnrollConfig":
        """Fill what is left as None from the solver the model was trained with (if it can be unrolled)."""
        method = self.method or trained.method
        if method not in UNROLLABLE:
            raise ConfigError(f"the model was trained with {trained.method!r}, which cannot be unrolled; "
                              f"pass --method (one of: {', '.join(UNROLLABLE)})")
        return UnrollConfig(method=method, steps=self.steps or (trained.steps if method == trained.method else 1))


def unroll(src, cfg: UnrollConfig, out: str | Path):
    """Stage: a continuous U-Net checkpoint → an `unrolled` artifact (same weights, explicit solver loops)."""
    io = STAGE_IO["unroll"]
    ckpt = load_checkpoint(src, kinds=io.accepts)
    model_cfg = ckpt.config.model
    if model_cfg.arch == "imported":
        return _unroll_imported(ckpt, cfg, Path(out))
    if model_cfg.arch != "cunet":
        raise ConfigError(f"{src} is a {model_cfg.arch!r} model; only continuous U-Nets (cunet) have ODE blocks to unroll")
    cfg = cfg.resolve(model_cfg.solver)
    solver = dataclasses.replace(model_cfg.solver, method=cfg.method, steps=cfg.steps, adjoint=False, unrolled=True)
    train_cfg = dataclasses.replace(ckpt.config, model=dataclasses.replace(model_cfg, solver=solver))
    record = solver_record(solver.method, solver.steps, nfe_per_step(solver.method), ckpt.model.num_ode_blocks)
    extra = {SOLVER: record, TRAINED_SOLVER: to_dict(model_cfg.solver)}
    return save_checkpoint(Path(out), train_cfg, ckpt.model.state_dict(), step=ckpt.artifact.manifest.get("train_step", 0),
                           train_state=None, kind=io.produces(), stage="unroll", parent=ckpt.artifact, extra=extra)


def _probe_inputs(model_cfg, diffusion, batch: int = 4, dtype=None):
    """Seeded inputs whose timesteps span the schedule: what the unroll check runs the model on."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size, generator=g,
                    dtype=dtype or torch.float32)
    t = torch.as_tensor(np.round(np.linspace(0, diffusion.timesteps - 1, batch)).astype(np.int64))
    return x, t


def _unroll_imported(ckpt, cfg: UnrollConfig, out: Path):
    """An imported model whose code calls torchdiffeq: the same weights, every solve an explicit fixed-step loop.

    The artifact records the solves seen in one forward (`solver.ode_blocks`, the NFE per call) and
    `unroll_check`: the float64 error against torchdiffeq's own fixed-grid solution with the same
    method and steps (what the rewrite may change: nothing but roundoff), and the float32 relative
    error against the model as imported, with the solvers its code asks for (what the fixed-step
    method changes).
    """
    import copy
    import functools

    import torch

    model_cfg = ckpt.config.model
    if cfg.method is None:
        raise ConfigError(f"{ckpt.artifact.path} is an imported model: its solvers are its own code's; pass --method "
                          f"(one of: {', '.join(UNROLLABLE)}) and --steps (per output interval of each solve)")
    method, steps = cfg.method, cfg.steps or 1
    x, t = _probe_inputs(model_cfg, ckpt.config.diffusion)
    stats = models.count_odeint_calls(ckpt.model, x, t, method=method, steps=steps, require=False)
    models.require_odeint(stats, f"{ckpt.artifact.path} ({model_cfg.factory or model_cfg.source})")
    unrolled_cfg = dataclasses.replace(model_cfg, unroll_method=method, unroll_steps=steps)
    unrolled = models.build_model(unrolled_cfg)
    unrolled.load_state_dict(ckpt.model.state_dict())
    unrolled.eval()
    with torch.no_grad():
        x64, model64 = x.double(), copy.deepcopy(unrolled).double()
        ours = model64(x64, t)
        reference = functools.partial(models.reference_odeint, method=method, steps=steps)
        with models.patch_odeint(reference, model=model64.net):
            theirs = model64._call_net(x64, t)
        as_imported = ckpt.model(x, t).double()
        ours32 = unrolled(x, t).double()
    check = {
        "max_abs_err_vs_torchdiffeq_fixed_grid": float((ours - theirs).abs().max()),
        "reference": f"torchdiffeq.odeint({method}, {steps} steps per interval), float64",
        "rel_err_vs_imported_solvers": float((ours32 - as_imported).norm() / as_imported.norm()),
        "inputs": int(x.shape[0]), "timesteps": t.tolist(),
    }
    record = solver_record(method, steps, nfe_per_step(method), stats.calls) | {
        "nfe_per_call": stats.nfe, "odeint": stats.as_dict()["per_call"]}
    train_cfg = dataclasses.replace(ckpt.config, model=unrolled_cfg)
    extra = {SOLVER: record, "unroll_check": check}
    return save_checkpoint(out, train_cfg, unrolled.state_dict(), step=ckpt.artifact.manifest.get("train_step", 0),
                           train_state=None, kind=STAGE_IO["unroll"].produces(), stage="unroll", parent=ckpt.artifact,
                           extra=extra)
