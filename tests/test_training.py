"""Real (tiny) training: determinism, exact resume, EMA, and DDP with two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from cunet_edge.errors import ConfigError
from cunet_edge.checkpoint import TrainConfig, train_config_from_dict, train_config_from_options
from cunet_edge.training import train

from cli_helpers import cli_in_process
from conftest import TINY


def _cfg(**changes):
    return train_config_from_dict({**TINY, "lr_schedule": "constant", **changes})


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_training_is_seeded(tmp_path):
    train(_cfg(), tmp_path / "a", progress=False)
    train(_cfg(), tmp_path / "b", progress=False)
    train(_cfg(seed=1), tmp_path / "c", progress=False)
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_replays_the_same_run(tmp_path):
    train(_cfg(), tmp_path / "full", progress=False)
    train(_cfg(steps=4), tmp_path / "resumed", progress=False)
    train(_cfg(), tmp_path / "resumed", progress=False)
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    for k in full:
        torch.testing.assert_close(full[k], resumed[k], rtol=1e-6, atol=1e-7)
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert manifest["train_step"] == 6 and manifest["complete"]


@pytest.mark.parametrize("method", ["midpoint", "rk4"])
def test_explicit_solver_trains_the_same_model_as_torchdiffeq(tmp_path, method):
    """The default explicit loop is a speed-up only: torchdiffeq's fixed grid gives the same loss and gradients."""
    from cunet_edge.models import build_model
    from cunet_edge.training import training_model_config

    model = {**TINY["model"], "solver": {"method": method, "steps": 2}}
    cfg = _cfg(model=model)
    explicit = build_model(training_model_config(cfg))
    reference = build_model(training_model_config(_cfg(model=model, explicit_solver=False)))
    assert explicit.ode_blocks()[0].solver.unrolled and not reference.ode_blocks()[0].solver.unrolled
    reference.load_state_dict(explicit.state_dict())
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 300, 600, 999])
    for net in (explicit, reference):
        net(x, t).square().mean().backward()
    for (name, p), q in zip(explicit.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)
    # Whole runs agree too (Adam magnifies float-rounding differences in near-zero gradients: 1e-4).
    train(cfg, tmp_path / "explicit", progress=False)
    train(_cfg(model=model, explicit_solver=False), tmp_path / "torchdiffeq", progress=False)
    a, b = _weights(tmp_path / "explicit"), _weights(tmp_path / "torchdiffeq")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    saved = json.loads((tmp_path / "explicit" / "config.json").read_text())
    assert saved["model"]["solver"]["unrolled"] is False and saved["explicit_solver"] is True


def test_explicit_solver_leaves_adaptive_and_adjoint_to_torchdiffeq():
    from cunet_edge.training import training_model_config

    for solver in ({"method": "dopri5"}, {"method": "midpoint", "adjoint": True}):
        cfg = _cfg(model={**TINY["model"], "solver": solver})
        assert training_model_config(cfg).solver.unrolled is False
    model = {**TINY["model"], "solver": {"method": "midpoint"}}
    assert training_model_config(_cfg(model=model)).solver.unrolled is True
    assert training_model_config(_cfg(model=model, explicit_solver=False)).solver.unrolled is False


def test_loss_goes_down_on_digits(tmp_path):
    from cunet_edge.checkpoint import load_checkpoint
    from cunet_edge.data import load_images
    from cunet_edge.diffusion import alphas_cumprod, diffusion_loss

    cfg = _cfg(steps=60, lr=3e-3, lr_schedule="cosine", ema_decay=0.9)
    x0, _ = load_images(cfg.data, "test")
    abar = torch.tensor(alphas_cumprod(cfg.diffusion), dtype=torch.float32)
    from cunet_edge.models import build_model

    torch.manual_seed(0)
    untrained = build_model(cfg.model).eval()
    train(cfg, tmp_path / "run", progress=False)
    trained = load_checkpoint(tmp_path / "run").model

    def loss(m):
        with torch.no_grad():
            return diffusion_loss(m, x0, abar, torch.Generator().manual_seed(0)).item()

    assert loss(trained) < 0.7 * loss(untrained)


def test_config_from_options_layers_cli_over_file(tiny_config_file):
    cfg = train_config_from_options(str(tiny_config_file), steps=9, solver={"method": "rk4", "steps": None})
    assert cfg.steps == 9 and cfg.model.solver.method == "rk4" and cfg.model.solver.steps == 1
    assert cfg.model.base_channels == 8 and cfg.data.image_size == 8
    base = train_config_from_options(None, arch="unet")
    assert base.model.arch == "unet" and base.model.image_size == 16
    with pytest.raises(ConfigError, match="solver"):
        train_config_from_options(None, arch="unet", solver={"method": "rk4"})
    with pytest.raises(ConfigError, match="image_size"):
        TrainConfig(data=train_config_from_options(str(tiny_config_file)).data)


def test_ddp_two_cpu_processes(tiny_config_file, tmp_path):
    """`train --procs 2` launches torchrun itself: two gloo processes, one checkpoint."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cunet_edge", "train", "--procs", "2", "--config", str(tiny_config_file),
         "--steps", "3", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["train_step"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary dirs left
    bad = cli_in_process("train", "--procs", 0, "--out", tmp_path / "x")  # (the entry point is the run above)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == ["error: procs must be > 0, got 0"]


def test_baseline_unet_trains_by_the_same_code(tmp_path):
    pytest.importorskip("diffusers")
    from cunet_edge.checkpoint import load_checkpoint
    from cunet_edge.diffusion import sample

    model = {"arch": "unet", "in_channels": 1, "image_size": 8, "base_channels": 8, "channel_mults": [1, 2],
             "attn_resolutions": [4], "norm_groups": 4}
    train(_cfg(model=model, steps=3), tmp_path / "unet", progress=False)
    ckpt = load_checkpoint(tmp_path / "unet")
    assert ckpt.config.model.arch == "unet"
    imgs = sample(ckpt.model, 2, (1, 8, 8), ckpt.config.diffusion, steps=2)
    assert imgs.shape == (2, 1, 8, 8) and torch.isfinite(imgs).all()
