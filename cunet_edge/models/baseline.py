"""The standard DDPM U-Net baseline, built with diffusers' UNet2DModel (optional extra)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..compat import ensure_torchvision_imports
from ..config import check_choice, check_positive
from ..errors import BackendMissingError, ConfigError
from .cunet import check_unet_shape

__all__ = ["UNetConfig", "BaselineUNet"]

# diffusers' default head size; its attention layers use width // 8 heads.
ATTN_HEAD_DIM = 8


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the baseline DDPM U-Net: levels, ResNet layers per level, attention levels."""

    arch: Literal["unet"] = "unet"
    in_channels: int = 1
    image_size: int = 16
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    layers_per_block: int = 2
    attn_resolutions: tuple[int, ...] | None = None  # None: the coarsest level (see cunet.default_attention)
    norm_groups: int = 8
    dropout: float = 0.0  # in the ResNet blocks (Ho et al.: 0.1 on CIFAR-10)

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, ["unet"])
        widths, resolutions = check_unet_shape(self)
        check_positive("layers_per_block", self.layers_per_block)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        # The mid block always attends, at the coarsest level.
        for w, r in zip(widths, resolutions):
            if (r in self.attn_resolutions or r == resolutions[-1]) and w % ATTN_HEAD_DIM:
                raise ConfigError(
                    f"width {w} at attention resolution {r} is not a multiple of the "
                    f"attention head size {ATTN_HEAD_DIM}"
                )

    @property
    def widths(self) -> list[int]:
        """Channel width of each level, finest first."""
        return [self.base_channels * m for m in self.channel_mults]

    @property
    def resolutions(self) -> list[int]:
        """Spatial size of each level, finest first."""
        return [self.image_size // 2**i for i in range(len(self.channel_mults))]


def _import_unet2d() -> type:
    """diffusers' UNet2DModel, or BackendMissingError with the install hint."""
    ensure_torchvision_imports()  # diffusers imports torchvision when it is installed
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise BackendMissingError("diffusers", "pip install 'cunet-edge[baseline]'") from None
    return UNet2DModel


class BaselineUNet(nn.Module):
    """Standard DDPM U-Net ε-predictor: forward(x (B,C,H,W), t (B,)) → ε (B,C,H,W)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        attn = [r in cfg.attn_resolutions for r in cfg.resolutions]
        self.unet = _import_unet2d()(
            sample_size=cfg.image_size,
            in_channels=cfg.in_channels,
            out_channels=cfg.in_channels,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            block_out_channels=tuple(cfg.widths),
            layers_per_block=cfg.layers_per_block,
            attention_head_dim=ATTN_HEAD_DIM,
            norm_num_groups=cfg.norm_groups,
            dropout=cfg.dropout,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample
