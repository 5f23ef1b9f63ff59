"""Static cost of a denoiser: parameters, MACs/FLOPs per network call, ODE function evaluations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..constants import PROFILE_TIMESTEP

if TYPE_CHECKING:
    from torch import nn


__all__ = ["profile_model", "count_params", "count_nfe", "NFECounter"]

# The aten ops behind nn.Conv2d, nn.ConvTranspose2d and nn.Linear (what thop counts).
_THOP_OPS = {"convolution", "_convolution", "conv2d", "addmm", "mm", "linear"}


def count_params(model: nn.Module) -> int:
    """Number of parameters (every element of every parameter tensor, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def profile_model(model: nn.Module, cfg: Any, batch: int = 1, *, meta: bool = False) -> dict[str, int]:
    """Parameters, MACs, FLOPs and NFE of one network call, counted with FlopCounterMode.

    Runs one seeded forward at t = PROFILE_TIMESTEP on a (batch, in_channels, image_size, image_size) input.
    Every ODE-function evaluation the solver makes is counted, so for the continuous U-Net
    the MACs grow with the solver's NFE. MACs = FLOPs // 2 (FlopCounterMode counts a
    multiply-add as 2 FLOPs; convs, linears and matmuls only). A network without ODE blocks of
    ours (an imported one) counts the ODE-function evaluations of the torchdiffeq solves it makes, if
    any; `ode_blocks` is then the number of torchdiffeq solves per call. Without any, NFE is 1.
    `macs_conv_linear` counts the convolutions and linear layers only, as thop does (the figure the
    continuous U-Net paper reports): no attention products, no resampling, no norms.

    `meta=True` runs the call on the meta device (shapes only, no arithmetic): the same counts, at a
    fraction of the cost of a real forward at large sizes (0.95 against 1.9 CPU s at 64 px); the pruning
    scan counts every candidate so. A forward that reads a value (torchdiffeq's solvers check their
    tensors) cannot run there: the call is then made for real.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    if meta:
        from torch.func import functional_call

        state = {n: torch.empty_like(v, device="meta") for n, v in [*model.named_parameters(), *model.named_buffers()]}
        x = torch.empty(shape, dtype=p.dtype, device="meta")
        t = torch.full((batch,), PROFILE_TIMESTEP, dtype=torch.long, device="meta")

        def call():
            return functional_call(model, state, (x, t))
    else:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(*shape, generator=gen).to(device=p.device, dtype=p.dtype)
        t = torch.full((batch,), PROFILE_TIMESTEP, dtype=torch.long, device=p.device)

        def call():
            return model(x, t)
    ode_blocks = getattr(model, "num_ode_blocks", 0)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter, count_nfe(model) as nfe, _count_torchdiffeq() as solves:
            call()
    except (RuntimeError, NotImplementedError):
        if not meta:
            raise
        return profile_model(model, cfg, batch)  # a value was read (Tensor.item on meta): count a real call
    flops = int(counter.get_total_flops())
    # thop's count, as the paper's figures were made: it hooks nn.Conv2d / nn.Linear modules, so convolutions and
    # linear layers count; attention's q·k and attn·v products (matmul, einsum) and the bilinear resampling
    # (F.interpolate, which FlopCounterMode never counts) do not. Norms and activations are left out too.
    by_op = counter.get_flop_counts().get("Global", {})
    conv_linear = sum(int(n) for op, n in by_op.items() if str(op).split(".")[-1] in _THOP_OPS)
    unrolled = getattr(model, "last_odeint_stats", None)  # an imported network whose torchdiffeq solves are unrolled
    if not ode_blocks and unrolled is not None and unrolled.calls:
        ode_blocks, nfe = unrolled.calls, NFECounter(unrolled.nfe)
    elif not ode_blocks and solves.count:  # an imported network that solves ODEs with torchdiffeq itself
        ode_blocks, nfe = len(solves.solves), solves
    return {
        "params": count_params(model),
        "macs": flops // 2,
        "flops": flops,
        "macs_conv_linear": conv_linear // 2,
        "nfe_per_call": nfe.count if ode_blocks else 1,
        "ode_blocks": int(ode_blocks),
    }


@dataclass
class NFECounter:
    """ODE-function evaluations counted by `count_nfe` (still readable after its block ends)."""

    count: int = 0
    solves: dict = field(default_factory=dict)  # the torchdiffeq solves seen, by id (_count_torchdiffeq); held, so
    # that an id is not reused by a later solve while the block is open


@contextmanager
def _count_torchdiffeq() -> Iterator[NFECounter]:
    """Count every ODE-function evaluation that torchdiffeq makes while the block is open, in any module.

    torchdiffeq's `odeint` wraps the user's function in its `_PerturbFunc` module, one per solve, and
    calls it once per evaluation: a process-wide forward hook on modules of that class counts them (and
    the solves, by instance). It is a private class of torchdiffeq: if it is not there, nothing is counted.
    Under `odeint_unroll.unrolled_odeint` no torchdiffeq solver runs, so nothing is counted either.
    """
    import torch

    counter = NFECounter()

    def perturb(module) -> bool:
        cls = type(module)
        return cls.__name__ == "_PerturbFunc" and cls.__module__.startswith("torchdiffeq")

    def hook(module, _args, _output) -> None:
        # odeint_adjoint wraps the function twice (its own check, then odeint's): count the innermost wrapper only
        if perturb(module) and not perturb(getattr(module, "base_func", None)):
            counter.count += 1
            counter.solves[id(module)] = module

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


@contextmanager
def count_nfe(model: nn.Module) -> Iterator[NFECounter]:
    """Count the ODE-function evaluations of every ODE block in `model` while the block is open.

    Forward and adjoint passes alike: the adjoint method evaluates the ODE function again when
    `.backward()` runs inside the block. A forward hook on each `ODEFunc` does the counting and
    is removed on exit, so the model itself never carries a counter (torch.compile would guard
    on it and recompile on every call). A model without ODE blocks counts 0. (Here, not beside the
    model, so that importing it does not import torch.)

        with count_nfe(model) as nfe:
            model(x, t)
        nfe.count
    """
    counter = NFECounter()

    def hook(_module: nn.Module, _args: object, _output: object) -> None:
        counter.count += 1

    funcs = [block.func for block in model.ode_blocks()] if hasattr(model, "ode_blocks") else []
    handles = [f.register_forward_hook(hook) for f in funcs]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()
