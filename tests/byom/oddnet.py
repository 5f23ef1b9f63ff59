"""A small denoiser written the way a user might, with a switch for two things channel pruning cannot follow.

Test material for pruning imported networks (tests/test_prune_imported.py); it knows nothing of cunet-edge.

- ``mode="plain"``: convolutions, a timestep projection and a gate, all in standard layers;
- ``mode="loose"``: adds a learned positional map, a raw ``nn.Parameter`` of shape (1, width, size, size)
  added to the features: it owns channels outside any standard layer;
- ``mode="nograd"``: computes the gate under ``torch.no_grad()``, outside the autograd graph;
- ``mode="badgrad"``: plain, but its backward pass raises (a gradient hook): user code that cannot be trained.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class OddNet(nn.Module):
    def __init__(self, channels=1, width=8, size=8, mode="plain"):
        super().__init__()
        if mode not in ("plain", "loose", "nograd", "badgrad"):
            raise ValueError(f"unknown mode {mode!r}")
        self.width, self.mode = width, mode
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Linear(width, width)
        self.norm = nn.GroupNorm(2, width)
        self.gate = nn.Conv2d(width, width, 1)
        self.mid = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.out = nn.Conv2d(2 * width, channels, 3, padding=1)
        self.pos = nn.Parameter(0.1 * torch.randn(1, width, size, size)) if mode == "loose" else None

    def forward(self, x, t):
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
        emb = t.float()[:, None] * freqs[None]
        emb = torch.cat([emb.sin(), emb.cos()], dim=1).to(x.dtype)
        h = F.silu(self.norm(self.inp(x) + self.time(emb)[:, :, None, None]))
        if self.pos is not None:
            h = h + self.pos
        if self.mode == "nograd":
            with torch.no_grad():
                g = self.gate(h)
        else:
            g = self.gate(h)
        h = h * torch.sigmoid(g)
        if self.mode == "badgrad" and h.requires_grad:
            h.register_hook(_refuse_gradient)
        return self.out(F.silu(self.mid(h)))


def _refuse_gradient(grad):
    raise RuntimeError("this network was never meant to be trained")


def build(width=8, channels=1, size=8, mode="plain"):
    return OddNet(channels=channels, width=width, size=size, mode=mode)
