"""Model presets (paper64, cunet32, ddpm32) and defaults that follow the image size."""

from __future__ import annotations

import json

import pytest

from cli_helpers import run


def _params(name, **kw):
    """The preset's parameter count, built on the meta device (shapes only: no weight initialisation)."""
    import torch

    from cunet_edge.models import build_model, model_config_from_dict, preset_model_table
    from cunet_edge.models.profile import count_params

    cfg = model_config_from_dict(preset_model_table(name, **kw) | {"in_channels": 3})
    with torch.device("meta"):
        return count_params(build_model(cfg))


def test_preset_params_match_the_published_counts():
    """paper64 within 10% of the paper code's 8,811,875; ddpm32 within 1% of Ho et al.'s 35.7 M; cunet32 under a
    quarter of ddpm32 (the paper's ratio to its DDPM U-Net is 0.25)."""
    paper64, ddpm32, cunet32 = _params("paper64"), _params("ddpm32"), _params("cunet32")
    assert abs(paper64 / 8_811_875 - 1) <= 0.10, paper64
    assert abs(ddpm32 / 35.7e6 - 1) <= 0.01, ddpm32
    assert cunet32 < 0.25 * ddpm32, (cunet32, ddpm32)


def test_default_model_is_unchanged_at_16_px():
    """The derived attention default gives the old fixed (4,) at 16 px: same config dict, same layout."""
    from cunet_edge.config import to_dict
    from cunet_edge.models import CUNetConfig, UNetConfig

    assert CUNetConfig().attn_resolutions == (4,) and UNetConfig().attn_resolutions == (4,)
    assert to_dict(CUNetConfig())["attn_resolutions"] == [4]
    assert CUNetConfig(attn_resolutions=()).attn_resolutions == ()  # explicit values are kept, none included


@pytest.mark.parametrize("size", [32, 64])
def test_defaults_work_at_other_sizes(size):
    """`train --image-size 32/64` with the default config: attention moves to the coarsest level, one forward runs."""
    import torch

    from cunet_edge.checkpoint import train_config_from_options
    from cunet_edge.models import build_model

    cfg = train_config_from_options(dataset="digits", image_size=size)
    assert cfg.model.attn_resolutions == (size // 4,) and cfg.data.image_size == size
    x = torch.randn(1, 1, size, size)
    assert build_model(cfg.model)(x, torch.tensor([10])).shape == x.shape


def test_preset_in_toml_under_file_keys_and_options(tmp_path):
    """`preset = ...` in a TOML: the file's [model] keys are laid over the preset, --image-size over both; the
    attention follows the size; an unknown preset is a ConfigError naming the valid ones."""
    from cunet_edge.checkpoint import train_config_from_options
    from cunet_edge.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text('preset = "paper64"\n[data]\nname = "digits"\n[model]\nbase_channels = 16\n')
    cfg = train_config_from_options(str(path))
    m = cfg.model
    assert (m.base_channels, m.channel_mults, m.image_size, m.attn_resolutions, m.solver.method) == (
        16, (1, 2, 4, 8), 64, (8,), "rk4")
    assert cfg.data.image_size == 64 and m.in_channels == 1  # channels follow the dataset
    small = train_config_from_options(str(path), image_size=32).model
    assert (small.image_size, small.attn_resolutions) == (32, (4,))
    assert train_config_from_options(dataset="digits", preset="ddpm32").model.arch == "unet"
    with pytest.raises(ConfigError, match="preset ddpm32 is a unet model; it cannot be trained with arch cunet"):
        train_config_from_options(dataset="digits", preset="ddpm32", arch="cunet")
    with pytest.raises(ConfigError, match="unknown preset 'nope'; valid presets: paper64"):
        train_config_from_options(dataset="digits", preset="nope")


def test_inspect_preset_counts_thop_style_macs(tmp_path):
    """`inspect --preset`: params and MACs per call without a checkpoint; the thop-style count leaves out
    exactly the attention products (2·N²·width MACs per attention layer)."""
    res = run("inspect", "--preset", "cunet32", "--image-size", "16", "--json", tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "p.json").read_text())
    assert info["params"] == _params("cunet32") and "cunet32" in res.output and "thop-style" in res.output
    # at 16 px: attention at 8x8 (N = 64 pixels) on levels 1 (encoder and decoder) of width 128, rk4 x1
    assert info["macs"] - info["macs_conv_linear"] == 2 * (2 * 64**2 * 128)
    assert info["nfe_per_call"] == 4 * 10
    bad = run("inspect", "--preset", "nope")
    assert bad.exit_code == 1 and "unknown preset" in bad.output
