"""Tests for cunet_edge.models: configs, the continuous U-Net, the baseline and the profiler."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

import cunet_edge.models
from cunet_edge.config import from_dict, to_dict
from cunet_edge.errors import BackendMissingError, ConfigError
from cunet_edge.models import (
    CUNetConfig,
    SolverConfig,
    UNetConfig,
    build_model,
    count_nfe,
    model_config_from_dict,
    profile_model,
)
from cunet_edge.models.cunet import ContinuousUNet
from cunet_edge.models.solver import solver_methods

FIXED = [
    "euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams", "fixed_adams",
]
ADAPTIVE = ["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: extra intra-op threads only spin and contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(method: str = "rk4", **kw) -> CUNetConfig:
    """A seconds-fast continuous U-Net config: widths 8/16, 8×8 images, attention at 4×4."""
    solver = SolverConfig(method=method, **kw)
    return CUNetConfig(
        image_size=8, base_channels=8, channel_mults=(1, 2), attn_resolutions=(4,),
        attn_heads=2, norm_groups=4, time_emb_dim=16, solver=solver,
    )


def make(cfg: CUNetConfig, seed: int = 0, dtype=torch.float32) -> ContinuousUNet:
    torch.manual_seed(seed)
    return build_model(cfg).to(dtype)


def inputs(cfg, batch: int = 2, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    return x, torch.tensor([10, 700][:batch])


# ---- solver config ------------------------------------------------------------------------


def test_solver_methods_follow_torchdiffeq_table():
    assert set(FIXED + ADAPTIVE) <= set(solver_methods())
    assert "scipy_solver" not in solver_methods()
    assert all(not SolverConfig(method=m).adaptive for m in FIXED)
    assert all(SolverConfig(method=m).adaptive for m in ADAPTIVE)


def test_odeint_kwargs():
    fixed = SolverConfig(method="euler", steps=4).odeint_kwargs()
    assert fixed["method"] == "euler" and fixed["options"]["grid_constructor"].steps == 4
    assert SolverConfig(steps=4).step_size == 0.25
    adaptive = SolverConfig(method="dopri5", rtol=1e-4, atol=1e-5)
    assert adaptive.odeint_kwargs() == {"method": "dopri5", "rtol": 1e-4, "atol": 1e-5}
    assert adaptive.step_size is None


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ConfigError, match="rk5.*dopri5.*rk4"):
        SolverConfig(method="rk5")
    with pytest.raises(ConfigError, match="detaches"):
        SolverConfig(method="scipy_solver")


@pytest.mark.parametrize("kw", [{"steps": 0}, {"rtol": 0.0}, {"atol": -1.0}])
def test_bad_solver_numbers(kw):
    with pytest.raises(ConfigError):
        SolverConfig(**kw)


# ---- model config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"norm_groups": 5}, "norm_groups"),
        ({"base_channels": 12}, "not divisible by norm_groups 8"),
        ({"attn_heads": 3}, "attn_heads"),
        ({"attn_resolutions": (3,)}, "16, 8, 4"),
        ({"image_size": 18}, "image_size"),
        ({"activation": "relu"}, "silu, softplus"),
        ({"channel_mults": ()}, "channel_mults"),
        ({"base_channels": 0}, "base_channels"),
    ],
)
def test_bad_cunet_config(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        CUNetConfig(**kw)


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key chanels"):
        from_dict(CUNetConfig, {"chanels": 8})
    with pytest.raises(ConfigError, match="solver.stepz"):
        from_dict(CUNetConfig, {"solver": {"stepz": 2}})


@pytest.mark.parametrize("cfg", [tiny("dopri5", rtol=1e-4), UNetConfig(base_channels=16)])
def test_model_config_round_trip(cfg):
    data = to_dict(cfg)
    assert model_config_from_dict(data) == cfg
    assert model_config_from_dict(dict(data)) is not cfg


def test_model_config_dispatch():
    assert isinstance(model_config_from_dict({}), CUNetConfig)
    assert isinstance(model_config_from_dict({}), cunet_edge.models.ModelConfig)
    assert isinstance(model_config_from_dict({"arch": "unet"}), UNetConfig)
    with pytest.raises(ConfigError, match="valid: cunet, unet"):
        model_config_from_dict({"arch": "transformer"})
    with pytest.raises(ConfigError, match="unknown config key"):
        model_config_from_dict({"arch": "unet", "attn_heads": 4})


def test_build_model_rejects_other_configs():
    with pytest.raises(ConfigError, match="expected a model config"):
        build_model(SolverConfig())


def test_import_is_light():
    # torch is only blamed on cunet_edge.models if the package root did not import it already.
    code = (
        "import sys, cunet_edge\n"
        "root_torch = 'torch' in sys.modules\n"
        "import cunet_edge.models\n"
        "assert 'diffusers' not in sys.modules\n"
        "assert root_torch or 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- continuous U-Net ---------------------------------------------------------------------


def test_output_shape_and_block_count():
    cfg = tiny()
    model = make(cfg)
    x, t = inputs(cfg)
    assert model(x, t).shape == x.shape
    assert model.num_ode_blocks == 2 * len(cfg.channel_mults) + 2


def test_output_depends_on_timestep():
    """The paper's public code ignored t inside the ODE blocks; ours must not."""
    cfg = tiny()
    model = make(cfg)
    x, _ = inputs(cfg, batch=1)
    with torch.no_grad():
        a, b = model(x, torch.tensor([0])), model(x, torch.tensor([999]))
    assert (a - b).abs().max() > 1e-3


def test_deterministic_given_seed():
    cfg = tiny()
    x, t = inputs(cfg)
    with torch.no_grad():
        a, b = make(cfg)(x, t), make(cfg)(x, t)
        c = make(cfg, seed=1)(x, t)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("method", FIXED + ["dopri5"])
def test_every_solver_runs(method):
    cfg = tiny(method)
    model = make(cfg)
    x, t = inputs(cfg)
    with torch.no_grad(), count_nfe(model) as nfe:
        y = model(x, t)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert nfe.count >= model.num_ode_blocks


@pytest.mark.parametrize("unrolled", [False, True])
def test_fixed_steps_set_nfe(unrolled):
    model = make(tiny("midpoint", steps=3, unrolled=unrolled))
    x, t = inputs(model.cfg)
    with torch.no_grad(), count_nfe(model) as nfe:
        model(x, t)
    assert nfe.count == 2 * 3 * model.num_ode_blocks
    # The hooks leave with the block: later calls count nowhere, and the model keeps no state.
    with torch.no_grad():
        model(x, t)
    assert nfe.count == 2 * 3 * model.num_ode_blocks
    assert not any(m._forward_hooks for m in model.modules())
    with torch.no_grad(), count_nfe(model) as again:
        model(x, t)
    assert again.count == nfe.count


def test_nfe_counts_adjoint_pass():
    """The adjoint method evaluates the ODE function again in backward: midpoint x1, 2 more per block."""
    model = make(tiny("midpoint", adjoint=True))
    x, t = inputs(model.cfg)
    blocks = model.num_ode_blocks
    with count_nfe(model) as nfe:
        y = model(x, t)
        assert nfe.count == 2 * blocks
        y.square().sum().backward()
    assert nfe.count == 4 * blocks


def _grads(adjoint: bool) -> dict[str, torch.Tensor]:
    """Parameter gradients of a one-level float64 model, integrated by dopri5 at tol 1e-10."""
    solver = SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10, adjoint=adjoint)
    cfg = CUNetConfig(
        image_size=4, base_channels=4, channel_mults=(1,), attn_resolutions=(), attn_heads=1,
        norm_groups=2, time_emb_dim=8, solver=solver,
    )
    model = make(cfg, dtype=torch.float64)
    x, t = inputs(cfg, batch=1, dtype=torch.float64)
    model(x, t).square().sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_adjoint_gradients_match_backprop():
    """The adjoint pass must reach the timestep MLP (through emb) as well as func's weights."""
    exact, adjoint = _grads(adjoint=False), _grads(adjoint=True)
    assert any(n.startswith("time_mlp") for n in exact) and any(".func." in n for n in exact)
    for name, grad in exact.items():
        assert adjoint[name] is not None, name
        atol = 1e-7 * grad.abs().max().item()
        torch.testing.assert_close(adjoint[name], grad, rtol=1e-5, atol=atol, msg=name)


# ---- profile ------------------------------------------------------------------------------


def test_profile_counts_solver_evaluations():
    rk4 = make(tiny("rk4"))
    euler = make(tiny("euler"))
    p_rk4, p_euler = profile_model(rk4, rk4.cfg), profile_model(euler, euler.cfg)
    blocks = rk4.num_ode_blocks
    assert p_rk4["ode_blocks"] == p_euler["ode_blocks"] == blocks
    assert p_rk4["nfe_per_call"] == 4 * blocks and p_euler["nfe_per_call"] == blocks
    assert p_rk4["params"] == p_euler["params"] > 0
    assert p_rk4["macs"] > p_euler["macs"] > 0
    assert p_rk4["flops"] == 2 * p_rk4["macs"]
    # Each extra evaluation costs the same ODE-function MACs: rk4 adds 3 per block.
    per_eval = (p_rk4["macs"] - p_euler["macs"]) / (3 * blocks)
    assert per_eval > 0


def test_profile_on_the_meta_device_counts_what_a_real_call_counts():
    """The pruning scan counts candidates on the meta device (shapes only): every figure must be the real call's,
    for each solver, unrolled (on meta) or through torchdiffeq (which reads values: counted for real), and for a
    model at pruned (uneven) widths."""
    pruned = dataclasses.replace(tiny("rk4", steps=2, unrolled=True), enc_widths=(4, 12), dec_widths=(8, 12),
                                 up_widths=(4,), ode_hidden=(4, 8, 12, 8, 4, 8), v0_hidden=(8, 4, 4, 12, 4, 8))
    for cfg in (tiny("rk4"), tiny("euler"), tiny("midpoint", steps=2, unrolled=True), pruned):
        model = make(cfg)
        real = profile_model(model, cfg, batch=2)
        devices = []
        hook = model.register_forward_pre_hook(lambda _m, args: devices.append(args[0].device.type))
        meta = profile_model(model, cfg, batch=2, meta=True)
        hook.remove()
        assert meta == real and real["macs"] > 0
        assert devices == (["meta"] if cfg.solver.unrolled else ["meta", "cpu"])  # torchdiffeq: counted for real
        assert next(model.parameters()).device.type == "cpu"  # the model itself is left where it was


def test_profile_scales_with_batch():
    model = make(tiny())
    one, four = profile_model(model, model.cfg), profile_model(model, model.cfg, batch=4)
    assert four["macs"] == 4 * one["macs"]


# ---- baseline -----------------------------------------------------------------------------


def test_baseline_builds_and_runs():
    pytest.importorskip("diffusers")
    cfg = UNetConfig(
        image_size=8, base_channels=8, channel_mults=(1, 2), norm_groups=4, layers_per_block=1
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    x, t = inputs(cfg)
    assert model(x, t).shape == x.shape
    prof = profile_model(model, cfg)
    assert prof["nfe_per_call"] == 1 and prof["ode_blocks"] == 0 and prof["macs"] > 0


def test_baseline_without_diffusers(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(BackendMissingError, match=r"pip install 'cunet-edge\[baseline\]'"):
        build_model(UNetConfig())


def test_bad_baseline_config():
    with pytest.raises(ConfigError, match="layers_per_block"):
        UNetConfig(layers_per_block=0)
    with pytest.raises(ConfigError, match="norm_groups"):
        UNetConfig(base_channels=12)
    assert dataclasses.replace(UNetConfig(), base_channels=16).widths == [16, 32, 32]
