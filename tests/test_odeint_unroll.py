"""Generic unroll (models.odeint_unroll): any torchdiffeq odeint call equals torchdiffeq on the same grid, and exports
to a static ONNX graph.

The reference is torchdiffeq itself: `odeint(func, y0, t, method=M, options={"grid_constructor": UniformGrid(N)})`,
N equal steps on each interval of t. Everything runs in float64 (max abs error <= 1e-10), except the export (fp32).
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchdiffeq

from cunet_edge.errors import ConfigError
from cunet_edge.export.onnx import _quiet_exporter
from cunet_edge.models import CUNetConfig, SolverConfig, build_model
from cunet_edge.models.explicit import NODES, TABLEAUS, UNROLLABLE, nfe_per_step
from cunet_edge.models.odeint_unroll import (
    UnrolledOdeint,
    count_odeint_calls,
    fixed_grid_odeint,
    patch_odeint,
    reference_odeint,
    unrolled_odeint,
)
from cunet_edge.models.solver import UniformGrid

TOL = 1e-10
F64 = torch.float64
BYOM = Path(__file__).resolve().parent / "byom"
ODEINT_MODULE = sys.modules["torchdiffeq._impl.odeint"]  # the attribute torchdiffeq._impl.odeint is the function
ADJOINT_MODULE = sys.modules["torchdiffeq._impl.adjoint"]
REAL = {"odeint": ODEINT_MODULE.odeint, "odeint_adjoint": ADJOINT_MODULE.odeint_adjoint,
        "check": ODEINT_MODULE._check_inputs, "check_adjoint": ADJOINT_MODULE._check_inputs}


@pytest.fixture(scope="module")
def odeunet():
    """The "bring your own model" test module, imported by name from tests/byom as the import command does."""
    sys.path.insert(0, str(BYOM))
    try:
        return importlib.import_module("odeunet")
    finally:
        sys.path.remove(str(BYOM))


def _reference(func, y0, t, method, steps):
    return torchdiffeq.odeint(func, y0, t, method=method, options={"grid_constructor": UniformGrid(steps)})


def _err(a, b) -> float:
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        return max(_err(x, y) for x, y in zip(a, b))
    assert a.shape == b.shape and a.dtype == b.dtype
    return (a - b).abs().max().item()


class Field(torch.nn.Module):
    """Time-dependent dynamics f(s, y) as an nn.Module (what odeint_adjoint wants)."""

    def __init__(self, dim=5):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=F64) / 2)

    def forward(self, s, y):
        return torch.tanh(y @ self.w) * torch.cos(3 * s) + 0.3 * s * y


def _problem(case: str):
    """(func, y0, t) of each case; func is a closure over local tensors, its dynamics depend on s."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 5, generator=g, dtype=F64) / 2
    y0 = torch.randn(3, 5, generator=g, dtype=F64)

    def closure(s, y):
        return torch.tanh(y @ w) * torch.cos(3 * s) + 0.3 * s * y

    def second_order(s, state):
        x, v = state
        return v, torch.tanh(x @ w) * torch.sin(2 * s) - 0.5 * v

    times = {"closure": [0.0, 1.0], "span": [0.5, 2.0], "several": [0.0, 0.3, 1.1, 2.0],
             "decreasing": [2.0, 1.2, 0.5, -0.25], "tuple": [0.5, 2.0]}[case]
    t = torch.tensor(times, dtype=F64)
    if case == "tuple":
        return second_order, (y0, torch.randn(3, 5, generator=g, dtype=F64)), t
    return closure, y0, t


CASES = ["closure", "span", "several", "decreasing", "tuple"]


def test_nodes_are_the_row_sums_of_the_tableaus():
    for method, (a, b) in TABLEAUS.items():
        assert len(NODES[method]) == len(a) == len(b)
        for c, row in zip(NODES[method], a):
            assert abs(c - sum(row)) <= 1e-15


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("method", UNROLLABLE)
@pytest.mark.parametrize("case", CASES)
def test_equals_torchdiffeq_on_its_grid(case, method, steps):
    func, y0, t = _problem(case)
    ref = _reference(func, y0, t, method, steps)
    ours = fixed_grid_odeint(func, y0, t, method=method, steps=steps)
    assert _err(ours, ref) <= TOL
    # The same through the patch, the user's own solver choice ignored (an adaptive dopri5 here).
    with unrolled_odeint(method, steps) as stats:
        patched = torchdiffeq.odeint(func, y0, t, method="dopri5", rtol=1e-3, atol=1e-3, options={"first_step": 0.1})
    assert _err(patched, ref) <= TOL
    assert stats.calls == 1 and stats.nfe == nfe_per_step(method) * steps * (len(t) - 1)
    # The user's dopri5 (tight tolerances) really is another solve: the patch is what changed the result.
    tight = torchdiffeq.odeint(func, y0, t, method="dopri5", rtol=1e-12, atol=1e-12)
    assert _err(patched, tight) > 1e-9


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("method", UNROLLABLE)
def test_func_sees_torchdiffeqs_stage_times(method, steps):
    """Time-dependent dynamics must be evaluated at the same s as torchdiffeq's step functions (rk4's k4 at t1...)."""
    seen: dict[str, list[float]] = {"ref": [], "ours": []}

    def recorder(key):
        def f(s, y):
            assert isinstance(s, torch.Tensor) and s.dtype == y.dtype
            seen[key].append(s.item())
            return -y * s
        return f

    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([2.0, 1.2, 0.5, -0.25], dtype=F64)
    _reference(recorder("ref"), y0, t, method, steps)
    fixed_grid_odeint(recorder("ours"), y0, t, method=method, steps=steps)
    assert len(seen["ours"]) == len(seen["ref"]) == nfe_per_step(method) * steps * 3
    assert np.abs(np.array(seen["ours"]) - np.array(seen["ref"])).max() <= 1e-15


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("method", UNROLLABLE)
def test_odeint_adjoint_is_unrolled(method, steps):
    field = Field()
    _, y0, _ = _problem("closure")
    t = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    ref = _reference(field, y0, t, method, steps)
    with unrolled_odeint(method, steps) as stats:
        out = torchdiffeq.odeint_adjoint(field, y0, t, method="dopri5", rtol=1e-4, atol=1e-4,
                                         adjoint_params=tuple(field.parameters()))
    assert _err(out, ref) <= TOL
    assert [c.api for c in stats.log] == ["odeint_adjoint"]
    # Plain backprop through the steps reaches the dynamics' parameters.
    out[-1].sum().backward()
    assert field.w.grad is not None and field.w.grad.abs().sum() > 0


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("method", UNROLLABLE)
def test_byom_model_through_its_module_level_alias(odeunet, method, steps):
    """The byom model calls `odeint`/`odeint_adjoint` bound at its module's top: the whole output under the patch
    equals the same model with each of its calls solved by torchdiffeq on the same grid."""
    torch.manual_seed(0)
    model = odeunet.build().to(F64).eval()
    x = torch.randn(2, 1, 16, 16, dtype=F64)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        model.reset_nfe()
        with patch_odeint(lambda f, y0, s: reference_odeint(f, y0, s, method=method, steps=steps)) as ref_stats:
            ref = model(x, t)
        ref_nfe = model.nfe
        model.reset_nfe()
        with unrolled_odeint(method, steps, model=model) as stats:
            out = model(x, t)
    assert _err(out, ref) <= TOL
    assert [c.api for c in stats.log] == ["odeint", "odeint_adjoint", "odeint"]
    assert [c.times for c in stats.log] == [2, 2, 3]
    assert stats.nfe == ref_stats.nfe == nfe_per_step(method) * steps * 4
    assert model.nfe == ref_nfe == stats.nfe  # the model's own counter saw every evaluation


def test_patches_are_put_back_even_on_error(odeunet):
    def check_real():
        assert torchdiffeq.odeint is REAL["odeint"] and torchdiffeq.odeint_adjoint is REAL["odeint_adjoint"]
        assert odeunet.odeint is REAL["odeint"] and odeunet.odeint_adjoint is REAL["odeint_adjoint"]
        assert ODEINT_MODULE.odeint is REAL["odeint"] and ADJOINT_MODULE.odeint is REAL["odeint"]
        assert ODEINT_MODULE._check_inputs is REAL["check"] and ADJOINT_MODULE._check_inputs is REAL["check_adjoint"]
        assert torchdiffeq._impl.odeint is REAL["odeint"]

    check_real()
    with unrolled_odeint("rk4", 1):
        for fn in (torchdiffeq.odeint, odeunet.odeint, ODEINT_MODULE.odeint, torchdiffeq._impl.odeint):
            assert fn is not REAL["odeint"]
        assert odeunet.odeint_adjoint is not REAL["odeint_adjoint"]
        with unrolled_odeint("euler", 2) as inner:  # nested: the inner patch wins, the outer comes back
            func, y0, t = _problem("closure")
            odeunet.odeint(func, y0, t)
        assert inner.nfe == 2
        assert torchdiffeq.odeint is not REAL["odeint"]
    check_real()
    with pytest.raises(RuntimeError, match="boom"), unrolled_odeint("midpoint", 1):
        raise RuntimeError("boom")
    check_real()
    func, y0, t = _problem("span")  # torchdiffeq works as before
    assert _err(torchdiffeq.odeint(func, y0, t, method="rk4", options={"grid_constructor": UniformGrid(2)}),
                fixed_grid_odeint(func, y0, t, method="rk4", steps=2)) <= TOL


class StoredSolver(torch.nn.Module):
    """Keeps torchdiffeq's function on an attribute, as users do (`self.solver = odeint_adjoint`)."""

    def __init__(self):
        super().__init__()
        self.field = Field()
        self.solver = torchdiffeq.odeint_adjoint

    def forward(self, y):
        return self.solver(self.field, y, torch.tensor([0.0, 1.5], dtype=y.dtype), method="dopri5")[-1]


def test_solver_on_an_attribute_is_patched_given_the_model_or_refused():
    model = StoredSolver()
    _, y0, _ = _problem("closure")
    ref = _reference(model.field, y0, torch.tensor([0.0, 1.5], dtype=F64), "heun3", 2)[-1]
    with torch.no_grad():
        with unrolled_odeint("heun3", 2, model=model) as stats:
            out = model(y0)
        assert _err(out, ref) <= TOL and stats.calls == 1
        assert model.solver is REAL["odeint_adjoint"]
        # Without the model the attribute is not rebound: the real solver would run, and is refused instead.
        with pytest.raises(ConfigError, match="escaped the unroll patch"), unrolled_odeint("heun3", 2):
            model(y0)


def test_explicit_modules(odeunet):
    torch.manual_seed(0)
    model = odeunet.build().to(F64).eval()
    x, t = torch.randn(1, 1, 16, 16, dtype=F64), torch.tensor([5])
    with torch.no_grad():
        with unrolled_odeint("midpoint", 1, modules=[odeunet]) as a:
            out_a = model(x, t)
        with unrolled_odeint("midpoint", 1, modules=["odeunet"]) as b:
            out_b = model(x, t)
    assert a.calls == b.calls == 3 and _err(out_a, out_b) == 0.0
    with pytest.raises(ConfigError, match="'no_such_module' is not a loaded module"), \
            unrolled_odeint("midpoint", 1, modules=["no_such_module"]):
        pass
    assert odeunet.odeint is REAL["odeint"]


def test_event_fn_and_bad_arguments_are_refused():
    func, y0, t = _problem("span")
    with pytest.raises(ConfigError, match="torchdiffeq.odeint with event_fn cannot be unrolled"), \
            unrolled_odeint("rk4", 1):
        torchdiffeq.odeint(func, y0, t, event_fn=lambda s, y: y.sum())
    assert torchdiffeq.odeint is REAL["odeint"]
    with pytest.raises(ConfigError, match="'dopri5' cannot be unrolled; unrollable methods: euler, midpoint"):
        unrolled_odeint("dopri5", 1)
    with pytest.raises(ConfigError, match="steps must be an integer >= 1, got 0"):
        fixed_grid_odeint(func, y0, t, method="rk4", steps=0)
    with pytest.raises(ConfigError, match="strictly increasing or strictly decreasing"):
        fixed_grid_odeint(func, y0, torch.tensor([0.0, 1.0, 0.5], dtype=F64), method="rk4", steps=1)
    with pytest.raises(ConfigError, match="1-d floating tensor of 2 or more times"):
        fixed_grid_odeint(func, y0, torch.tensor([0.0], dtype=F64), method="rk4", steps=1)
    with pytest.raises(ConfigError, match="y0 must be a tensor or a tuple of tensors, got list"):
        fixed_grid_odeint(func, [y0], t, method="rk4", steps=1)


def test_count_odeint_calls_and_a_model_without_odeint(odeunet):
    model = odeunet.build().eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([0, 999])
    stats = count_odeint_calls(model, x, t, method="rk4", steps=1)
    assert (stats.calls, stats.nfe) == (3, 16)
    assert stats.as_dict()["per_call"][2] == {"api": "odeint", "times": 3, "nfe": 8}
    with pytest.raises(ConfigError, match="^Conv2d's forward calls no torchdiffeq odeint/odeint_adjoint: nothing to "
                                          "unroll$"):
        count_odeint_calls(torch.nn.Conv2d(1, 1, 3), x, method="rk4", steps=1)


@pytest.mark.parametrize(("method", "steps", "adjoint"), [("midpoint", 2, False), ("rk4", 1, True)])
def test_our_cunet_through_the_patch_equals_its_unrolled_twin(method, steps, adjoint):
    """cunet's torchdiffeq path (`import torchdiffeq` in a function, tuple state, odeint_adjoint with adjoint_params)
    under the generic patch gives the model that `unroll` builds with the explicit loop."""
    small = {"in_channels": 1, "image_size": 8, "base_channels": 8, "channel_mults": (1, 2),
             "attn_resolutions": (4,), "attn_heads": 2, "norm_groups": 4, "time_emb_dim": 16}
    cfg = CUNetConfig(**small, solver=SolverConfig(method="dopri5", adjoint=adjoint))
    torch.manual_seed(0)
    model = build_model(cfg).to(F64).eval()
    twin = build_model(dataclasses.replace(cfg, solver=SolverConfig(method=method, steps=steps, unrolled=True)))
    twin.load_state_dict(model.state_dict())
    twin = twin.to(F64).eval()
    x, t = torch.randn(2, 1, 8, 8, dtype=F64), torch.tensor([0, 999])
    with torch.no_grad():
        with unrolled_odeint(method, steps, model=model) as stats:
            out = model(x, t)
        assert _err(out, twin(x, t)) <= TOL
    assert {c.api for c in stats.log} == {"odeint_adjoint" if adjoint else "odeint"}
    assert stats.nfe == stats.calls * nfe_per_step(method) * steps


def test_byom_model_exports_to_a_static_onnx_graph(odeunet, tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = odeunet.build().eval()
    wrapped = UnrolledOdeint(model, "rk4", 1).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 700])
    path = tmp_path / "odeunet.onnx"
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(wrapped, (x, t), dynamo=True, input_names=["x", "t"], output_names=["eps"],
                                    verbose=False)
        program.save(str(path))
    assert torchdiffeq.odeint is REAL["odeint"] and odeunet.odeint is REAL["odeint"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert not {"Loop", "If", "Scan", "ScatterND"} & set(ops)
    # 4 stages x (1 + 1 + 2 intervals) evaluations of 2 convs each, and 6 convs outside the blocks.
    assert ops["Conv"] == 2 * 16 + 6 and ops["InstanceNormalization"] == 2 * 16 + 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2, t2 = torch.randn(2, 1, 16, 16), torch.tensor([0, 999])
    with torch.no_grad():
        eager = wrapped(x2, t2)
    assert wrapped.last_stats.calls == 3 and wrapped.last_stats.nfe == 16
    got = torch.from_numpy(session.run(None, {"x": x2.numpy(), "t": t2.numpy()})[0])
    assert ((got - eager).norm() / eager.norm()).item() <= 1e-4
