"""The unrolled solvers equal torchdiffeq's methods of the same name, and call no torchdiffeq."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torchdiffeq

from cunet_edge.errors import ConfigError
from cunet_edge.models import CUNetConfig, SolverConfig, build_model, profile_model
from cunet_edge.models.explicit import UNROLLABLE, integrate_unrolled, nfe_per_step

SMALL = dict(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2), attn_resolutions=(4,),
             attn_heads=2, norm_groups=4, time_emb_dim=16)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("method", UNROLLABLE)
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_equals_torchdiffeq_on_a_nonlinear_system(method, steps):
    torch.manual_seed(0)
    w = torch.randn(6, 6, dtype=torch.float64) / 3

    def field(state):
        x, v = state
        return v, torch.tanh(x @ w) - 0.5 * v

    y0 = (torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64))
    ours = integrate_unrolled(field, y0, method, steps)
    ref = torchdiffeq.odeint(lambda s, st: field(st), y0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                             method=method, options={"step_size": 1.0 / steps})
    for a, b in zip(ours, ref):
        assert _rel(a, b[-1]) <= 1e-10


@pytest.mark.parametrize("method", UNROLLABLE)
@pytest.mark.parametrize("steps", [1, 2])
def test_unrolled_model_equals_trained_model(method, steps, monkeypatch):
    cfg = CUNetConfig(**SMALL, solver=SolverConfig(method=method, steps=steps))
    torch.manual_seed(0)
    ref_model = build_model(cfg).double().eval()
    unrolled = build_model(dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver, unrolled=True)))
    unrolled.load_state_dict(ref_model.state_dict())
    unrolled = unrolled.double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    with torch.no_grad():
        ref = ref_model(x, t)

        def forbidden(*args, **kwargs):
            raise AssertionError("torchdiffeq called by an unrolled model")

        monkeypatch.setattr(torchdiffeq, "odeint", forbidden)
        monkeypatch.setattr(torchdiffeq, "odeint_adjoint", forbidden)
        out = unrolled(x, t)
    assert _rel(out, ref) <= 1e-10
    prof = profile_model(unrolled.float(), cfg)
    assert prof["nfe_per_call"] == nfe_per_step(method) * steps * prof["ode_blocks"]


def test_unroll_defaults_to_the_trained_solver():
    from cunet_edge.unrolling import UnrollConfig

    assert UnrollConfig().resolve(SolverConfig(method="midpoint", steps=2)) == UnrollConfig("midpoint", 2)
    assert UnrollConfig(method="rk4").resolve(SolverConfig(method="midpoint", steps=2)) == UnrollConfig("rk4", 1)
    assert UnrollConfig(steps=3).resolve(SolverConfig(method="euler")) == UnrollConfig("euler", 3)
    with pytest.raises(ConfigError, match="trained with 'dopri5', which cannot be unrolled; pass --method"):
        UnrollConfig().resolve(SolverConfig(method="dopri5"))


def test_unroll_config_errors():
    with pytest.raises(ConfigError, match="cannot be unrolled; unrollable methods: euler, midpoint"):
        SolverConfig(method="dopri5", unrolled=True)
    with pytest.raises(ConfigError, match="adjoint"):
        SolverConfig(method="rk4", unrolled=True, adjoint=True)


def test_unrolled_model_exports_to_a_static_onnx_graph(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import collections

    import numpy as np
    import onnx

    from cunet_edge.export.onnx import OnnxExportConfig, _torch_export

    cfg = CUNetConfig(**SMALL, solver=SolverConfig(method="rk4", steps=2, unrolled=True))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    path = tmp_path / "m.onnx"
    _torch_export(model, cfg, OnnxExportConfig(batch=2, dynamic_batch=False), path)  # export's own graph step
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert not {"Loop", "If", "Scan", "ScatterND"} & set(ops)
    # Changed only by tests/golden/regenerate.py.
    golden = json.loads((Path(__file__).parent / "golden" / "unrolled_ops.json").read_text())
    assert dict(sorted(ops.items())) == golden
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out = sess.run(None, dict(zip(names, (x.numpy(), t.numpy()))))[0]
    with torch.no_grad():
        ref = model(x, t).numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) <= 1e-4


def test_solver_sweep_on_a_trained_checkpoint(tiny_checkpoint):
    from cunet_edge.sweep import SweepConfig, format_table, solver_sweep

    cfg = SweepConfig(methods=("euler", "rk4"), max_steps=2, n_inputs=8, drift_samples=4, sampler_steps=3, fid_n=20)
    result = solver_sweep(tiny_checkpoint, cfg, progress=False)
    rows = {(r["method"], r["steps"]): r for r in result["rows"]}
    assert set(rows) == {("euler", 1), ("euler", 2), ("rk4", 1), ("rk4", 2)}
    for r in rows.values():
        for key in ("nfe_per_call", "eps_rel_err_vs_adaptive", "eps_rel_err_vs_trained", "latency_ms_b1",
                    "latency_ms_b16", "sample_psnr_vs_trained"):
            assert key in r
    # The tiny model was trained with euler x1: that row is the trained model itself.
    assert rows[("euler", 1)]["eps_rel_err_vs_trained"] < 1e-6
    assert rows[("rk4", 2)]["eps_rel_err_vs_adaptive"] < rows[("euler", 1)]["eps_rel_err_vs_adaptive"]
    assert result["recommended"]["method"] == "euler" and result["recommended"]["steps"] == 1
    assert result["adaptive"]["nfe_per_call"] > rows[("rk4", 2)]["nfe_per_call"]
    sb = result["latency_unrolled_vs_torchdiffeq"]
    assert sb["ratio_b1"] == sb["unrolled_ms_b1"] / sb["torchdiffeq_ms_b1"] > 0
    table = format_table(result)
    assert "recommended: euler x1" in table and "side by side" in table
