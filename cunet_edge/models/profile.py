"""Static cost of a denoiser: parameters, MACs/FLOPs per network call, ODE function evaluations."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .cunet import count_nfe

__all__ = ["profile_model", "count_params"]

# Mid-range diffusion timestep: adaptive solvers' NFE varies with t, fixed ones do not.
PROFILE_TIMESTEP = 500


def count_params(model: nn.Module) -> int:
    """Number of parameters (every element of every parameter tensor, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def profile_model(model: nn.Module, cfg: Any, batch: int = 1) -> dict[str, int]:
    """Parameters, MACs, FLOPs and NFE of one network call, counted with FlopCounterMode.

    Runs one seeded forward at t = 500 on a (batch, in_channels, image_size, image_size) input.
    Every ODE-function evaluation the solver makes is counted, so for the continuous U-Net
    the MACs grow with the solver's NFE. MACs = FLOPs // 2 (FlopCounterMode counts a
    multiply-add as 2 FLOPs; convs, linears and matmuls only).
    """
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    x = x.to(device=p.device, dtype=p.dtype)
    t = torch.full((batch,), PROFILE_TIMESTEP, dtype=torch.long, device=p.device)
    ode_blocks = getattr(model, "num_ode_blocks", 0)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, count_nfe(model) as nfe:
        model(x, t)
    flops = int(counter.get_total_flops())
    return {
        "params": count_params(model),
        "macs": flops // 2,
        "flops": flops,
        "nfe_per_call": nfe.count if ode_blocks else 1,
        "ode_blocks": int(ode_blocks),
    }
