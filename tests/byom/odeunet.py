"""A small diffusion U-Net with first-order neural-ODE blocks, written the way a user outside cunet-edge would.

Test material for importing ("bring your own model") and unrolling models trained elsewhere: it
shares no code with cunet_edge and is imported by name (``odeunet``) from this directory. Unlike
cunet-edge's continuous U-Net, its blocks are FIRST-order ODEs dx/ds = f(s, x) whose dynamics see
the ODE time s (an extra input channel), normalised with affine InstanceNorm, and it calls
torchdiffeq in three different ways:

- ``down``: ``odeint`` with a closure as the ODE function, rk4 with a ``step_size`` option;
- ``mid``: ``odeint_adjoint`` (its dynamics are an nn.Module) with dopri5 over s in [0, 2];
- ``up``: ``odeint`` asking for several output times s = 0.5, 1.0, 1.5 and reading out all of them.

Each ODE function counts its evaluations in ``self.nfe`` (a Python side effect, as users write it).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchdiffeq import odeint, odeint_adjoint


def timestep_embedding(t, dim):
    """Sinusoidal embedding of integer diffusion timesteps t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ODEFunc(nn.Module):
    """dx/ds = f(s, x; cond): norm -> conv([x, s]) -> +cond -> act -> conv([h, s])."""

    def __init__(self, channels, emb_dim):
        super().__init__()
        self.norm1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv1 = nn.Conv2d(channels + 1, channels, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = nn.Conv2d(channels + 1, channels, 3, padding=1)
        self.cond_proj = nn.Linear(emb_dim, channels)
        self.nfe = 0

    def field(self, s, x, cond):
        self.nfe += 1
        tt = torch.ones_like(x[:, :1]) * s
        h = self.conv1(torch.cat([F.silu(self.norm1(x)), tt], dim=1))
        h = self.norm2(h) + self.cond_proj(cond)[:, :, None, None]
        return 0.5 * self.conv2(torch.cat([F.silu(h), tt], dim=1))


class DownBlock(nn.Module):
    def __init__(self, channels, emb_dim):
        super().__init__()
        self.func = ODEFunc(channels, emb_dim)

    def forward(self, x, emb):
        s = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        return odeint(lambda si, h: self.func.field(si, h, emb), x, s, method="rk4", options={"step_size": 0.5})[-1]


class Conditioned(nn.Module):
    """f(s, x) with the timestep embedding bound, as a Module: odeint_adjoint needs one, and calls it again in the
    backward pass, after the block's forward has returned."""

    def __init__(self, func, cond):
        super().__init__()
        self.func, self.cond = func, cond

    def forward(self, s, x):
        return self.func.field(s, x, self.cond)


class MidBlock(nn.Module):
    def __init__(self, channels, emb_dim):
        super().__init__()
        self.func = ODEFunc(channels, emb_dim)
        self.register_buffer("span", torch.tensor([0.0, 2.0]), persistent=False)

    def forward(self, x, emb):
        params = tuple(self.func.parameters()) + (emb,)
        out = odeint_adjoint(Conditioned(self.func, emb), x, self.span.to(x.dtype), method="dopri5", rtol=1e-4,
                             atol=1e-4, adjoint_params=params)
        return out[-1]


class UpBlock(nn.Module):
    def __init__(self, channels, emb_dim):
        super().__init__()
        self.func = ODEFunc(channels, emb_dim)
        self.readout = nn.Conv2d(3 * channels, channels, 1)

    def forward(self, x, emb):
        s = torch.tensor([0.5, 1.0, 1.5], dtype=x.dtype, device=x.device)
        traj = odeint(lambda si, h: self.func.field(si, h, emb), x, s, method="rk4", options={"step_size": 0.25})
        return self.readout(torch.cat([traj[0], traj[1], traj[2]], dim=1))


class ODEUNet(nn.Module):
    """eps_theta(x (B, C, H, W), t (B,) int64) -> (B, C, H, W); one downsampling level."""

    def __init__(self, in_channels=1, image_size=16, width=16, emb_dim=32):
        super().__init__()
        self.image_size = image_size
        self.emb_dim = emb_dim
        self.emb = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.down = DownBlock(width, emb_dim)
        self.downsample = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = MidBlock(2 * width, emb_dim)
        self.upsample = nn.Conv2d(2 * width, width, 3, padding=1)
        self.merge = nn.Conv2d(2 * width, width, 1)
        self.up = UpBlock(width, emb_dim)
        self.out_norm = nn.InstanceNorm2d(width, affine=True)
        self.head = nn.Conv2d(width, in_channels, 3, padding=1)

    @property
    def nfe(self):
        return sum(m.nfe for m in self.modules() if isinstance(m, ODEFunc))

    def reset_nfe(self):
        for m in self.modules():
            if isinstance(m, ODEFunc):
                m.nfe = 0

    def forward(self, x, t):
        emb = self.emb(timestep_embedding(t, self.emb_dim).to(x.dtype))
        h = self.stem(x)
        skip = self.down(h, emb)
        h = self.mid(self.downsample(skip), emb)
        h = self.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up(self.merge(torch.cat([h, skip], dim=1)), emb)
        return self.head(F.silu(self.out_norm(h)))


def build(in_channels=1, image_size=16, width=16, emb_dim=32):
    """The model as its author trained it (rk4 and dopri5 blocks); image_size must be even."""
    return ODEUNet(in_channels=in_channels, image_size=image_size, width=width, emb_dim=emb_dim)
