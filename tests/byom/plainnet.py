"""A plain denoiser as a user's own code would define it (tests/test_import.py imports it as a factory network).

Nothing here knows cunet-edge: `build(**kwargs)` returns a torch module called as net(x, t).
"""

import math

import torch
from torch import nn


class PlainNet(nn.Module):
    """Two 3x3 convolutions with a sinusoidal timestep embedding added between them."""

    def __init__(self, channels: int = 1, width: int = 16):
        super().__init__()
        self.width = width
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Linear(width, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t):
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
        emb = t.float()[:, None] * freqs[None]
        emb = torch.cat([emb.sin(), emb.cos()], dim=1)
        h = torch.nn.functional.silu(self.inp(x) + self.time(emb)[:, :, None, None])
        return self.out(h)


def build(width: int = 16, channels: int = 1) -> nn.Module:
    return PlainNet(channels=channels, width=width)
