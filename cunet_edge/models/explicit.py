"""Fixed-step explicit Runge–Kutta solvers written out as plain tensor operations.

torchdiffeq's solvers cannot be exported to a static graph (adaptive ones loop on data, and
fixed-grid `odeint` leaves ScatterND plumbing in legacy ONNX exports). Here each method is
its Butcher tableau, and integration is an explicit Python loop over a uniform grid, so a
traced or exported network holds only the tensor ops of every stage. The model runs its ODE
blocks through this loop when its solver is `unrolled` (and training does, for fixed-step
solvers); the `unroll` stage (`cunet_edge.unrolling`) writes such a model out as an artifact.

The coefficients are torchdiffeq's, under its names: its `rk4` is Kutta's **3/8 rule**
(`rk4_alt_step_func`), not the classic RK4; `heun3` is Heun's third-order method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["NODES", "TABLEAUS", "UNROLLABLE", "integrate_unrolled", "nfe_per_step"]

# method -> (a: stage rows of the Butcher matrix, b: weights). Our continuous U-Net's fields are
# autonomous in ODE time (they see the diffusion timestep through the embedding instead), so
# `integrate_unrolled` needs no nodes; `models.odeint_unroll` feeds time-dependent fields f(s, x)
# the stage times s0 + c_i·ds from NODES.
TABLEAUS: dict[str, tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    "euler": (((),), (1.0,)),
    "midpoint": (((), (0.5,)), (0.0, 1.0)),
    "heun2": (((), (1.0,)), (0.5, 0.5)),
    "heun3": (((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    "rk4": (((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (0.125, 0.375, 0.375, 0.125)),
}
UNROLLABLE = tuple(TABLEAUS)
# method -> c: the stage nodes, c_i = Σ_j a_ij, written out with torchdiffeq's constants (a row sum
# would give rk4's 2/3 one ulp off); torchdiffeq evaluates stage i at t0 + c_i·dt (rk4's last at t1).
NODES: dict[str, tuple[float, ...]] = {
    "euler": (0.0,),
    "midpoint": (0.0, 0.5),
    "heun2": (0.0, 1.0),
    "heun3": (0.0, 1 / 3, 2 / 3),
    "rk4": (0.0, 1 / 3, 2 / 3, 1.0),
}


def nfe_per_step(method: str) -> int:
    """Function evaluations per step: the number of stages of the tableau."""
    return len(TABLEAUS[method][1])


def _combine(state: Sequence, ks: Sequence[Sequence], coeffs: Sequence[float], dt) -> tuple:
    """state + dt · Σ_j coeffs[j] · ks[j], component by component; zero coefficients emit no op.

    `dt` is a float (our cunet's [0, 1] steps) or a tensor (odeint_unroll's grid on any output times)."""
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
