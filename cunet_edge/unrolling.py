"""The `unroll` stage: a continuous U-Net checkpoint → the same weights with each ODE block's solver
baked in as a fixed number of explicit steps (`cunet_edge.models.explicit`), a static graph.

torchdiffeq's solvers cannot be exported to a static graph (adaptive ones loop on data, and
fixed-grid `odeint` leaves ScatterND plumbing in legacy ONNX exports); the unrolled model can.
The artifact records its solver (`cunet_edge.records.solver_record`), and every later stage
refuses other solver settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

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
    if model_cfg.arch != "cunet":
        raise ConfigError(f"{src} is a {model_cfg.arch!r} model; only continuous U-Nets (cunet) have ODE blocks to unroll")
    cfg = cfg.resolve(model_cfg.solver)
    solver = dataclasses.replace(model_cfg.solver, method=cfg.method, steps=cfg.steps, adjoint=False, unrolled=True)
    train_cfg = dataclasses.replace(ckpt.config, model=dataclasses.replace(model_cfg, solver=solver))
    record = solver_record(solver.method, solver.steps, nfe_per_step(solver.method), ckpt.model.num_ode_blocks)
    extra = {SOLVER: record, TRAINED_SOLVER: to_dict(model_cfg.solver)}
    return save_checkpoint(Path(out), train_cfg, ckpt.model.state_dict(), step=ckpt.artifact.manifest.get("train_step", 0),
                           train_state=None, kind=io.produces(), stage="unroll", parent=ckpt.artifact, extra=extra)
