"""Named model presets: the paper's 64×64 continuous U-Net, a 32×32 one, and Ho et al.'s DDPM U-Net.

A preset is a model table (what `[model]` in a training config holds) at a nominal image size.
Its attention is given relative to the image size (a divisor of it), so a preset built at another
power-of-two size keeps attention at the same relative depth. The input channels follow the dataset
when training (the preset does not fix them); `inspect --preset` counts at 3 channels (RGB, as the
papers did).

Reference figures (what the presets are checked against, tests/test_presets.py):
- paper64: "The Missing U for Efficient Diffusion Models" (Calvo-Ordoñez et al.), the author's
  code (Sergio20f/cDDPM, `ConvSODEUNet`, num_filters 16): 8,811,875 parameters at 64×64 RGB,
  2.83 G MACs per call counted with thop (rk4, one 3/8-rule step per block). See
  /work/shared/research/paper-notes.md and docs/presets.md for where our layout differs.
- ddpm32: Ho et al. 2020, CIFAR-10 model: 35.7 M parameters (ch 128, multipliers 1-2-2-2, two
  ResNet blocks per level, attention at 16×16, dropout 0.1) — diffusers' UNet2DModel with the
  layout of google/ddpm-cifar10-32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["Preset", "PRESETS", "get_preset", "preset_model_table"]


@dataclass(frozen=True)
class Preset:
    """A named model layout at a nominal image size, with the published figures it is compared with."""

    name: str
    description: str
    image_size: int
    model: dict[str, Any]  # the model table without image_size, in_channels and attn_resolutions
    attn_divisors: tuple[int, ...]  # attention at image_size // d for each d
    reference: dict[str, Any] = field(default_factory=dict)  # published params / MACs, and where from
    in_channels: int = 3  # what `inspect --preset` counts with (training follows the dataset)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="paper64",
            description="the paper's continuous U-Net for 64x64 (widths 24-48-96-192, attention at 8x8, rk4 x1)",
            image_size=64,
            # 4 levels 64-32-16-8 and our two-block bottleneck at 8x8 (the paper: a 5th level, one block at
            # 4x4). Base width 24 puts the parameters within 2% of the paper's 8.81 M with our ODE block
            # (2C->C->C ODE function plus a C->C->C initial velocity per block); docs/presets.md.
            model={"arch": "cunet", "base_channels": 24, "channel_mults": [1, 2, 4, 8], "attn_heads": 4,
                   "norm_groups": 8, "solver": {"method": "rk4", "steps": 1}},
            attn_divisors=(8,),
            reference={"params": 8_811_875, "macs_thop": 2.83e9, "solver": "rk4 x1",
                       "source": "Calvo-Ordonez et al., The Missing U for Efficient Diffusion Models; author code "
                                 "Sergio20f/cDDPM ConvSODEUNet, counted with thop (no attention products, no "
                                 "resampling)"},
        ),
        Preset(
            name="cunet32",
            description="a continuous U-Net for 32x32: the levels and attention of ddpm32 at half its base width",
            image_size=32,
            model={"arch": "cunet", "base_channels": 64, "channel_mults": [1, 2, 2, 2], "attn_heads": 4,
                   "norm_groups": 8, "solver": {"method": "rk4", "steps": 1}},
            attn_divisors=(2,),
        ),
        Preset(
            name="ddpm32",
            description="Ho et al.'s DDPM U-Net for 32x32 (CIFAR-10): ch 128, 1-2-2-2, 2 res blocks, attention at 16",
            image_size=32,
            model={"arch": "unet", "base_channels": 128, "channel_mults": [1, 2, 2, 2], "layers_per_block": 2,
                   "norm_groups": 32, "dropout": 0.1},
            attn_divisors=(2,),
            reference={"params": 35.7e6, "source": "Ho et al. 2020, Denoising Diffusion Probabilistic Models "
                                                   "(CIFAR-10 model, 35.7 M parameters)"},
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a ConfigError listing the valid names."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_model_table(name: str, image_size: int | None = None) -> dict[str, Any]:
    """The preset's model table at `image_size` (default: its own), attention placed relative to the size."""
    p = get_preset(name)
    size = p.image_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {size!r}")
    attn = [size // d for d in p.attn_divisors]  # the model config refuses one that is not a level's resolution
    table = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in p.model.items()}
    return table | {"image_size": size, "attn_resolutions": attn}
