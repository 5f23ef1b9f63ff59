"""Fixed-step explicit Runge–Kutta solvers written out as plain tensor operations.

torchdiffeq's solvers cannot be exported to a static graph (adaptive ones loop on data, and
fixed-grid `odeint` leaves ScatterND plumbing in legacy ONNX exports). Here each method is
its Butcher tableau, and integration is an explicit Python loop over a uniform grid, so a
traced or exported network holds only the tensor ops of every stage.

The coefficients are torchdiffeq's, under its names: its `rk4` is Kutta's **3/8 rule**
(`rk4_alt_step_func`), not the classic RK4; `heun3` is Heun's third-order method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .config import check_choice, to_dict
from .errors import ConfigError

__all__ = ["TABLEAUS", "UNROLLABLE", "nfe_per_step", "integrate_unrolled", "UnrollConfig", "unroll", "solver_record",
           "check_solver_request"]

# method -> (a: stage rows of the Butcher matrix, b: weights). c is unused: the fields are
# autonomous in ODE time (they see the diffusion timestep through the embedding instead).
TABLEAUS: dict[str, tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    "euler": (((),), (1.0,)),
    "midpoint": (((), (0.5,)), (0.0, 1.0)),
    "heun2": (((), (1.0,)), (0.5, 0.5)),
    "heun3": (((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    "rk4": (((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (0.125, 0.375, 0.375, 0.125)),
}
UNROLLABLE = tuple(TABLEAUS)


def nfe_per_step(method: str) -> int:
    """Function evaluations per step: the number of stages of the tableau."""
    return len(TABLEAUS[method][1])


def _combine(state: Sequence, ks: Sequence[Sequence], coeffs: Sequence[float], dt: float) -> tuple:
    """state + dt · Σ_j coeffs[j] · ks[j], component by component; zero coefficients emit no op."""
    out = []
    for i, s in enumerate(state):
        acc = s
        for c, k in zip(coeffs, ks):
            if c != 0.0:
                acc = acc + (dt * c) * k[i]
        out.append(acc)
    return tuple(out)


def integrate_unrolled(field: Callable[[tuple], tuple], state: tuple, method: str, steps: int) -> tuple:
    """Explicit Runge–Kutta over s ∈ [0, 1] in `steps` equal steps; `field(state) -> d state / ds`."""
    a, b = TABLEAUS[method]
    dt = 1.0 / steps
    for _ in range(steps):
        ks: list[tuple] = []
        for row in a:
            ks.append(field(_combine(state, ks, row, dt) if row else state))
        state = _combine(state, ks, b, dt)
    return state


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


def solver_record(solver, ode_blocks: int) -> dict:
    """What an unrolled artifact records of its baked-in solver (checked by every later stage)."""
    per_block = nfe_per_step(solver.method) * solver.steps
    return {"method": solver.method, "steps": solver.steps, "nfe_per_block": per_block,
            "nfe_per_call": per_block * ode_blocks, "ode_blocks": ode_blocks}


def check_solver_request(manifest: dict, where, method: str | None = None, steps: int | None = None) -> None:
    """Refuse to run an artifact whose solver was baked in at unroll time with other solver settings.

    Every artifact made from an unrolled one carries the same `solver` record in its manifest,
    so ONNX files, quantized models and engines refuse a mismatched request the same way.
    """
    rec = manifest.get("solver")
    if rec is None or (method is None and steps is None):
        return
    want = (method or rec["method"], steps or rec["steps"])
    if want != (rec["method"], rec["steps"]):
        raise ConfigError(
            f"{where} has its solver baked in at unroll time ({rec['method']} x{rec['steps']}); it cannot run "
            f"{want[0]} x{want[1]}: unroll the checkpoint again with --method {want[0]} --steps {want[1]}"
        )


def unroll(src, cfg: UnrollConfig, out: str | Path):
    """Stage: a continuous U-Net checkpoint → an `unrolled` artifact (same weights, explicit solver loops)."""
    import dataclasses

    from .checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src, kinds=("checkpoint",))
    model_cfg = ckpt.config.model
    if model_cfg.arch != "cunet":
        raise ConfigError(f"{src} is a {model_cfg.arch!r} model; only continuous U-Nets (cunet) have ODE blocks to unroll")
    cfg = cfg.resolve(model_cfg.solver)
    solver = dataclasses.replace(model_cfg.solver, method=cfg.method, steps=cfg.steps, adjoint=False, unrolled=True)
    train_cfg = dataclasses.replace(ckpt.config, model=dataclasses.replace(model_cfg, solver=solver))
    blocks = ckpt.model.num_ode_blocks
    extra = {"solver": solver_record(solver, blocks), "trained_solver": to_dict(model_cfg.solver)}
    return save_checkpoint(Path(out), train_cfg, ckpt.model.state_dict(), step=ckpt.artifact.manifest.get("train_step", 0),
                           train_state=None, kind="unrolled", stage="unroll", parent=ckpt.artifact, extra=extra)
