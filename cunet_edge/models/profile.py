"""Static cost of a denoiser: parameters, MACs/FLOPs per network call, ODE function evaluations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..constants import PROFILE_TIMESTEP

if TYPE_CHECKING:
    from torch import nn

__all__ = ["profile_model", "count_params"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (every element of every parameter tensor, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def profile_model(model: nn.Module, cfg: Any, batch: int = 1) -> dict[str, int]:
    """Parameters, MACs, FLOPs and NFE of one network call, counted with FlopCounterMode.

    Runs one seeded forward at t = PROFILE_TIMESTEP on a (batch, in_channels, image_size, image_size) input.
    Every ODE-function evaluation the solver makes is counted, so for the continuous U-Net
    the MACs grow with the solver's NFE. MACs = FLOPs // 2 (FlopCounterMode counts a
    multiply-add as 2 FLOPs; convs, linears and matmuls only). Resets the model's NFE counter.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    x = x.to(device=p.device, dtype=p.dtype)
    t = torch.full((batch,), PROFILE_TIMESTEP, dtype=torch.long, device=p.device)
    ode_blocks = getattr(model, "num_ode_blocks", 0)
    if ode_blocks:
        model.reset_nfe()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, t)
    flops = int(counter.get_total_flops())
    return {
        "params": count_params(model),
        "macs": flops // 2,
        "flops": flops,
        "nfe_per_call": model.nfe if ode_blocks else 1,
        "ode_blocks": int(ode_blocks),
    }
