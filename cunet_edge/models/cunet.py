"""The continuous U-Net denoiser: a U-Net whose blocks are second-order neural ODEs.

Follows "The Missing U for Efficient Diffusion Models" with the defects of its public code
fixed: the ODE function is conditioned on the diffusion timestep, attention is residual,
and the state really is (features, velocity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_positive
from ..errors import ConfigError
from ..limits import check_fits_memory, check_int
from .explicit import integrate_unrolled
from .solver import SolverConfig

__all__ = [
    "CUNetConfig",
    "ContinuousUNet",
    "ODEBlock",
    "ODEFunc",
    "SelfAttention",
    "timestep_embedding",
    "ACTIVATIONS",
    "LAYER_WIDTHS",
]

ACTIVATIONS = ("silu", "softplus")


def _check_widths(widths: list[int], resolutions: list[int], cfg: object) -> None:
    """Shared U-Net shape checks: group-norm divisibility, image size, attention levels."""
    groups = cfg.norm_groups
    for i, w in enumerate(widths):
        if w % groups:
            raise ConfigError(
                f"base_channels * channel_mults[{i}] = {w} is not divisible by norm_groups "
                f"{groups}; every level width must be a multiple of norm_groups"
            )
    levels = len(widths)
    if cfg.image_size % 2 ** (levels - 1):
        raise ConfigError(
            f"image_size {cfg.image_size} is not divisible by 2**(levels-1) = {2 ** (levels - 1)} "
            f"for {levels} channel_mults"
        )
    for r in cfg.attn_resolutions:
        if r not in resolutions:
            raise ConfigError(
                f"attn_resolutions entry {r} is not one of the level resolutions: "
                f"{', '.join(map(str, resolutions))}"
            )


def default_attention(cfg: object) -> None:
    """Resolve an unset `attn_resolutions` (None) to the coarsest level's resolution, in place.

    The default follows the image size: attention at the lowest resolution of the U-Net, whatever
    the image size and the number of levels (16 px with 3 levels: 4, as the fixed default was; 32 px: 8).
    Stored resolved, so a checkpoint's config.json lists the resolutions it was built with.
    """
    if cfg.attn_resolutions is None and isinstance(cfg.image_size, int) and cfg.channel_mults:
        coarsest = cfg.image_size // 2 ** (len(cfg.channel_mults) - 1)
        object.__setattr__(cfg, "attn_resolutions", (coarsest,))


def check_unet_shape(cfg: object) -> tuple[list[int], list[int]]:
    """Validate the fields every U-Net config shares; return (level widths, level resolutions)."""
    for name in ("in_channels", "image_size", "base_channels", "norm_groups"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        check_positive(name, value)
        check_int(name, value, high=2**31 - 1)
    if not cfg.channel_mults:
        raise ConfigError("channel_mults must list at least one level multiplier")
    if len(cfg.channel_mults) > 16:
        raise ConfigError(f"channel_mults lists {len(cfg.channel_mults)} levels; at most 16")
    for i, m in enumerate(cfg.channel_mults):
        check_positive(f"channel_mults[{i}]", m)
        check_int(f"channel_mults[{i}]", m, high=2**31 - 1)
    default_attention(cfg)
    widths = [cfg.base_channels * m for m in cfg.channel_mults]
    resolutions = [cfg.image_size // 2**i for i in range(len(widths))]
    # A lower bound of what the model takes (two 3x3 convolutions per level, one image's first feature map, float32),
    # refused before a layer is built: base_channels 10^7 would otherwise try to allocate petabytes.
    weights = sum(2 * 9 * w * w for w in widths)
    activations = widths[0] * cfg.image_size ** 2 + cfg.in_channels * cfg.image_size ** 2
    check_fits_memory("this model config", 4 * (weights + activations),
                      f"{weights:.3g} weights at widths {widths[:4]}, {activations:.3g} activations per image "
                      f"at {cfg.image_size}x{cfg.image_size}")
    _check_widths(widths, resolutions, cfg)
    return widths, resolutions


@dataclass(frozen=True)
class CUNetConfig:
    """Shape of the continuous U-Net: levels, widths, attention, activation and ODE solver."""

    arch: Literal["cunet"] = "cunet"
    in_channels: int = 1
    image_size: int = 16
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 2)
    # None: the coarsest level's resolution (4 at the default 16 px), so any power-of-two size works.
    attn_resolutions: tuple[int, ...] | None = None
    attn_heads: int = 4
    norm_groups: int = 8
    activation: str = "silu"
    time_emb_dim: int = 128
    solver: SolverConfig = field(default_factory=SolverConfig)
    # Per-layer widths, set by pruning; None means the nominal width (base_channels × mult).
    enc_widths: tuple[int, ...] | None = None  # encoder level l (the bottleneck runs at the last)
    dec_widths: tuple[int, ...] | None = None  # decoder level l (after the skip merge)
    up_widths: tuple[int, ...] | None = None  # decoder level l's resample output, l < levels - 1
    ode_hidden: tuple[int, ...] | None = None  # each ODE block's inner width, in forward order
    v0_hidden: tuple[int, ...] | None = None  # each ODE block's initial-velocity inner width

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, ["cunet"])
        widths, resolutions = check_unet_shape(self)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_positive("attn_heads", self.attn_heads)
        check_positive("time_emb_dim", self.time_emb_dim)
        if self.time_emb_dim % 2:
            raise ConfigError(f"time_emb_dim must be even (sin/cos pairs), got {self.time_emb_dim}")
        for w, r in zip(widths, resolutions):
            if r in self.attn_resolutions and w % self.attn_heads:
                raise ConfigError(
                    f"width {w} at attention resolution {r} is not divisible by attn_heads "
                    f"{self.attn_heads}"
                )
        if not isinstance(self.solver, SolverConfig):
            raise ConfigError(f"solver must be a SolverConfig, got {self.solver!r}")
        self._check_layer_widths()

    def _check_layer_widths(self) -> None:
        """Per-layer widths: the right count, positive, and multiples of norm_groups where a GroupNorm reads them."""
        levels = len(self.channel_mults)
        blocks = 2 * levels + 2
        for name, count, grouped in (("enc_widths", levels, True), ("dec_widths", levels, True),
                                     ("up_widths", levels - 1, False), ("ode_hidden", blocks, True),
                                     ("v0_hidden", blocks, False)):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != count:
                per = "ODE block" if count == blocks else "level"
                raise ConfigError(f"{name} needs {count} entries (one per {per}), got {len(values)}")
            for i, w in enumerate(values):
                check_positive(f"{name}[{i}]", w)
                if grouped and w % self.norm_groups:
                    raise ConfigError(f"{name}[{i}] = {w} is not divisible by norm_groups {self.norm_groups}; "
                                      "a GroupNorm reads this width")

    @property
    def widths(self) -> list[int]:
        """Channel width of each level, finest first."""
        return [self.base_channels * m for m in self.channel_mults]

    @property
    def resolutions(self) -> list[int]:
        """Spatial size of each level, finest first."""
        return [self.image_size // 2**i for i in range(len(self.channel_mults))]

    @property
    def pruned(self) -> bool:
        """Whether any per-layer width is set (by the prune stage)."""
        return any(getattr(self, name) is not None for name in LAYER_WIDTHS)

    @property
    def layer_widths(self) -> dict[str, list[int]]:
        """Every per-layer width, nominal where the config leaves it None (see the field comments)."""
        w = self.widths
        block_w = w + [w[-1]] * 2 + w[::-1]  # ODE blocks in forward order: encoder, bottleneck, decoder
        nominal = {"enc_widths": w, "dec_widths": w, "up_widths": w[:-1], "ode_hidden": block_w,
                   "v0_hidden": block_w}
        return {k: list(getattr(self, k)) if getattr(self, k) is not None else v for k, v in nominal.items()}

    @property
    def block_widths(self) -> list[int]:
        """The state width of each ODE block in forward order: encoder, bottleneck (twice), decoder."""
        lw = self.layer_widths
        return lw["enc_widths"] + [lw["enc_widths"][-1]] * 2 + lw["dec_widths"][::-1]


LAYER_WIDTHS = ("enc_widths", "dec_widths", "up_widths", "ode_hidden", "v0_hidden")


def make_activation(name: str) -> nn.Module:
    """The activation module for a config name (silu or softplus)."""
    return nn.SiLU() if name == "silu" else nn.Softplus()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (Transformer / DDPM): [sin(t·f_k), cos(t·f_k)], (B, dim)."""
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=t.dtype)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ODEFunc(nn.Module):
    """Acceleration field of an ODE block: dv/dt = f(x, v, emb) + x.

    GroupNorm → 3×3 conv (2C→C) → act → GroupNorm → FiLM scale/shift from the timestep
    embedding → 3×3 conv → act, plus the features x added back. Autonomous in ODE time;
    conditioned on the diffusion timestep through `emb` (the paper's code dropped it).
    """

    def __init__(self, channels: int, emb_dim: int, groups: int, activation: str, hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels
        self.norm1 = nn.GroupNorm(groups, 2 * channels)
        self.conv1 = nn.Conv2d(2 * channels, hidden, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, hidden)
        self.emb_proj = nn.Linear(emb_dim, 2 * hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor, v: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # No Python side effects here (no evaluation counter): torch.compile would guard on it
        # and recompile on every call. `count_nfe` counts evaluations with temporary hooks.
        h = self.act(self.conv1(self.norm1(torch.cat([x, v], dim=1))))
        # act before the projection, as in DDPM ResBlocks: emb ends in a Linear.
        scale, shift = self.emb_proj(self.act(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.act(self.conv2(h)) + x


class InitialVelocity(nn.Module):
    """v0 = conv3×3(act(conv3×3(x))): the second-order block's starting velocity."""

    def __init__(self, channels: int, activation: str, hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.act = make_activation(activation)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


class ODEBlock(nn.Module):
    """Second-order neural ODE block: integrate (x, v)' = (v, func(x, v, emb)) over s ∈ [0, 1].

    v0 comes from `init_velocity(x)`; the output is x(1). `dynamics` is the whole vector
    field, so an unrolled fixed-step solver can reuse `func` and `init_velocity` as they are.
    """

    def __init__(
        self, channels: int, emb_dim: int, solver: SolverConfig, groups: int, activation: str,
        hidden: int | None = None, v0_hidden: int | None = None,
    ):
        super().__init__()
        self.solver = solver
        self.init_velocity = InitialVelocity(channels, activation, v0_hidden)
        self.func = ODEFunc(channels, emb_dim, groups, activation, hidden)

    def dynamics(
        self, x: torch.Tensor, v: torch.Tensor, emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Time derivative of the state (x, v): (v, func(x, v, emb))."""
        return v, self.func(x, v, emb)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.integrate(x, self.init_velocity(x), emb)

    def integrate(self, x: torch.Tensor, v: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x(1) from (x, v) at s = 0: torchdiffeq (adjoint if asked), or the unrolled explicit loop."""
        if self.solver.unrolled:
            xs = integrate_unrolled(lambda st: self.dynamics(st[0], st[1], emb), (x, v),
                                    self.solver.method, self.solver.steps)
            return xs[0]
        import torchdiffeq

        s = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        kwargs = self.solver.odeint_kwargs()

        def field(_s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
            return self.dynamics(state[0], state[1], emb)

        if self.solver.adjoint:
            # emb is not a parameter of func: list it, or the adjoint pass would never send
            # gradients back to the timestep MLP.
            params = (*self.func.parameters(), emb)
            xs, _ = torchdiffeq.odeint_adjoint(field, (x, v), s, adjoint_params=params, **kwargs)
        else:
            xs, _ = torchdiffeq.odeint(field, (x, v), s, **kwargs)
        return xs[-1]


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over pixels: x + proj(softmax(qᵀk/√d) v).

    `inner` (default: channels) is the width of q, k and v; pruning narrows `channels` only.
    """

    def __init__(self, channels: int, heads: int, groups: int, inner: int | None = None):
        super().__init__()
        inner = inner or channels
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * inner, 1)
        self.proj = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        # The head size comes from qkv, not from x: pruning narrows x but keeps the heads whole.
        d = self.qkv.out_channels // (3 * self.heads)
        # Plain matmul + softmax (no fused SDPA) keeps the ONNX graph simple to quantize.
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, h * w).unbind(1)
        attn = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(d), dim=-1)
        out = (v @ attn.transpose(-1, -2)).reshape(b, self.heads * d, h, w)
        return x + self.proj(out)


def _attention(cfg: CUNetConfig, width: int, level: int) -> nn.Module:
    """Self-attention at the listed resolutions (q, k, v at the level's nominal width), identity elsewhere."""
    if cfg.resolutions[level] in cfg.attn_resolutions:
        return SelfAttention(width, cfg.attn_heads, cfg.norm_groups, inner=cfg.widths[level])
    return nn.Identity()


def _ode_block(cfg: CUNetConfig, index: int) -> ODEBlock:
    """The ODE block at position `index` in forward order, at its (possibly pruned) widths."""
    lw = cfg.layer_widths
    return ODEBlock(cfg.block_widths[index], cfg.time_emb_dim, cfg.solver, cfg.norm_groups, cfg.activation,
                    hidden=lw["ode_hidden"][index], v0_hidden=lw["v0_hidden"][index])


class EncoderLevel(nn.Module):
    """Encoder level: [halve resolution + 1×1 conv] → ODE block → [attention]."""

    def __init__(self, cfg: CUNetConfig, level: int):
        super().__init__()
        enc = cfg.layer_widths["enc_widths"]
        w = enc[level]
        self.resample = nn.Conv2d(enc[level - 1], w, 1) if level > 0 else None
        self.block = _ode_block(cfg, level)
        self.attn = _attention(cfg, w, level)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is not None:
            # A 1×1 conv commutes with bilinear resizing; resizing first is 4× cheaper.
            h = F.interpolate(h, scale_factor=0.5, mode="bilinear", align_corners=False)
            h = self.resample(h)
        return self.attn(self.block(h, emb))


class DecoderLevel(nn.Module):
    """Decoder level: [1×1 conv + 2× upsample] → concat skip → 1×1 conv → ODE block → [attn]."""

    def __init__(self, cfg: CUNetConfig, level: int):
        super().__init__()
        lw = cfg.layer_widths
        enc, dec, levels = lw["enc_widths"], lw["dec_widths"], len(cfg.widths)
        w = dec[level]
        last = level == levels - 1
        self.resample = None if last else nn.Conv2d(dec[level + 1], lw["up_widths"][level], 1)
        up = enc[-1] if last else lw["up_widths"][level]  # the bottleneck's output feeds the last level
        self.merge = nn.Conv2d(up + enc[level], w, 1)
        self.block = _ode_block(cfg, 2 * levels + 1 - level)
        self.attn = _attention(cfg, w, level)

    def forward(self, h: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is not None:
            # 1×1 conv before upsampling: same result, 4× fewer MACs.
            h = self.resample(h)
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        h = self.merge(torch.cat([h, skip], dim=1))
        return self.attn(self.block(h, emb))


class Bottleneck(nn.Module):
    """Bottleneck at the coarsest level: ODE block → [attention] → ODE block."""

    def __init__(self, cfg: CUNetConfig):
        super().__init__()
        levels = len(cfg.widths)
        self.block1 = _ode_block(cfg, levels)
        self.attn = _attention(cfg, cfg.layer_widths["enc_widths"][-1], levels - 1)
        self.block2 = _ode_block(cfg, levels + 1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attn(self.block1(h, emb)), emb)


class ContinuousUNet(nn.Module):
    """Continuous U-Net ε-predictor: forward(x (B,C,H,W), t (B,) in [0, 1000)) → ε (B,C,H,W)."""

    def __init__(self, cfg: CUNetConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.time_emb_dim
        act = make_activation(cfg.activation)
        lw = cfg.layer_widths
        self.time_mlp = nn.Sequential(nn.Linear(d, d), act, nn.Linear(d, d))
        self.conv_in = nn.Conv2d(cfg.in_channels, lw["enc_widths"][0], 3, padding=1)
        levels = range(len(cfg.widths))
        self.encoder = nn.ModuleList(EncoderLevel(cfg, i) for i in levels)
        self.bottleneck = Bottleneck(cfg)
        self.decoder = nn.ModuleList(DecoderLevel(cfg, i) for i in reversed(levels))
        self.head = nn.Sequential(
            nn.GroupNorm(cfg.norm_groups, lw["dec_widths"][0]),
            make_activation(cfg.activation),
            nn.Conv2d(lw["dec_widths"][0], cfg.in_channels, 1),
        )

    def embed_time(self, t: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Timestep embedding (B, time_emb_dim) in `dtype`; a 0-d t is shared by the whole batch.

        The sinusoid and the time MLP run at the MLP's own precision: a half model whose `time_mlp` was kept
        in float32 (as the fp16 ONNX export keeps it) embeds in float32 and casts the result to `dtype`. In
        float16, t·f_k near t = 999 has a 0.5 ulp, so the sinusoid alone would be several percent off.
        """
        inner = self.time_mlp[0].weight.dtype
        t = t.to(inner).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"t must have shape ({batch},) or be a scalar, got {tuple(t.shape)}")
        return self.time_mlp(timestep_embedding(t, self.cfg.time_emb_dim)).to(dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed_time(torch.as_tensor(t, device=x.device), x.shape[0], x.dtype)
        h = self.conv_in(x)
        skips = []
        for level in self.encoder:
            h = level(h, emb)
            skips.append(h)
        h = self.bottleneck(h, emb)
        for level in self.decoder:
            h = level(h, skips.pop(), emb)
        return self.head(h)

    def ode_blocks(self) -> list[ODEBlock]:
        """Every ODE block, in the order forward runs them."""
        mid = [self.bottleneck.block1, self.bottleneck.block2]
        return [lv.block for lv in self.encoder] + mid + [lv.block for lv in self.decoder]

    @property
    def num_ode_blocks(self) -> int:
        return len(self.ode_blocks())
