"""ODE solver settings for the continuous U-Net's blocks, checked against torchdiffeq's table.

torchdiffeq is imported inside the functions that need it, so importing this module is cheap.
Note that torchdiffeq's ``"rk4"`` is the 3/8-rule Runge-Kutta variant (``rk4_alt_step_func``),
not the classic 1/6-1/3-1/3-1/6 one; the paper's code runs it with one step over [0, 1], i.e.
four function evaluations per ODE block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import check_positive
from ..errors import ConfigError
from .explicit import UNROLLABLE

__all__ = ["SolverConfig", "UniformGrid", "solver_methods"]

# scipy_solver round-trips through numpy and detaches the state, so training through it
# would silently give no gradients to the ODE blocks: leave it out of the valid methods.
_EXCLUDED = {"scipy_solver": "it detaches the state from autograd (no gradients)"}


def _solver_table() -> dict[str, type]:
    """torchdiffeq's method-name → solver-class table, the registry SolverConfig checks against."""
    from torchdiffeq._impl.odeint import SOLVERS

    return {name: cls for name, cls in SOLVERS.items() if name not in _EXCLUDED}


def solver_methods() -> list[str]:
    """Names of the torchdiffeq methods a SolverConfig accepts, in torchdiffeq's order."""
    return list(_solver_table())


class UniformGrid:
    """Grid constructor for torchdiffeq fixed-grid solvers: `steps` equal steps on each interval of t.

    Over t = [t0, t1] that is `steps` equal steps over [t0, t1]; with more output times every
    interval [t_k, t_k+1] gets its own `steps` (the grid of `models.odeint_unroll`), and each t_k is
    a grid point exactly, so torchdiffeq never interpolates between steps.

    torchdiffeq's own ``step_size`` option builds its grid with ``ceil(T / step_size + 1)``,
    which rounds up for some step counts (e.g. 49 in float64, 61 in float32) and adds a
    zero-length step that still costs function evaluations; a linspace grid never does.
    """

    def __init__(self, steps: int):
        self.steps = steps

    def __call__(self, func: Any, y0: Any, t: Any) -> Any:
        import torch

        # Tensor arithmetic, not .item(): no device sync, and the grid ends exactly at t[-1].
        frac = torch.linspace(0.0, 1.0, self.steps + 1, dtype=t.dtype, device=t.device)[:-1]
        inner = t[:-1, None] + (t[1:] - t[:-1])[:, None] * frac
        return torch.cat([inner.reshape(-1), t[-1:]])

    def __repr__(self) -> str:
        return f"UniformGrid({self.steps})"


@dataclass(frozen=True)
class SolverConfig:
    """How each ODE block is integrated over ODE time [0, 1] (a torchdiffeq method and its knobs).

    `steps` applies to fixed-grid methods (euler, midpoint, rk4, heun2, heun3, the Adams
    methods); `rtol`/`atol` to adaptive ones (dopri5, dopri8, bosh3, fehlberg2,
    adaptive_heun). `adjoint` backpropagates with torchdiffeq's adjoint method (less memory,
    more function evaluations in the backward pass). `unrolled` replaces torchdiffeq by the
    explicit loop of `cunet_edge.models.explicit` (same coefficients, a static graph).
    """

    # One midpoint step per block by default: measured on digits, it gives the best FID for the
    # 10-minute CPU budget (the paper's one 3/8-rule rk4 step costs twice the evaluations).
    # See docs/results/2026-11-27-digits-training.md.
    method: str = "midpoint"
    steps: int = 1
    rtol: float = 1e-3
    atol: float = 1e-3
    adjoint: bool = False
    unrolled: bool = False

    def __post_init__(self) -> None:
        table = _solver_table()
        if self.method not in table:
            why = _EXCLUDED.get(self.method)
            why = f" ({self.method} is excluded: {why})" if why else ""
            valid = ", ".join(table)
            raise ConfigError(f"solver.method {self.method!r} is not one of: {valid}{why}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"solver.steps must be an integer >= 1, got {self.steps!r}")
        check_positive("solver.rtol", self.rtol)
        check_positive("solver.atol", self.atol)
        if self.unrolled:
            if self.method not in UNROLLABLE:
                raise ConfigError(
                    f"solver.method {self.method!r} cannot be unrolled; unrollable methods: {', '.join(UNROLLABLE)}"
                )
            if self.adjoint:
                raise ConfigError("solver.adjoint does not apply to an unrolled solver (plain backprop)")

    @property
    def adaptive(self) -> bool:
        """True for error-controlled methods, False for torchdiffeq's fixed-grid solvers."""
        from torchdiffeq._impl.solvers import FixedGridODESolver

        return not issubclass(_solver_table()[self.method], FixedGridODESolver)

    @property
    def step_size(self) -> float | None:
        """ODE-time step of a fixed-grid method (1 / steps over [0, 1]); None when adaptive."""
        return None if self.adaptive else 1.0 / self.steps

    def odeint_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``torchdiffeq.odeint`` / ``odeint_adjoint`` over t = [0, 1]."""
        if self.adaptive:
            return {"method": self.method, "rtol": self.rtol, "atol": self.atol}
        return {"method": self.method, "options": {"grid_constructor": UniformGrid(self.steps)}}
