"""Models: the continuous U-Net (neural-ODE blocks), the DDPM U-Net baseline, imported networks, the FID
feature networks (the dataset classifier, Inception-v3).

Importing this package is cheap: the submodules (and torch with them) load on first use of
a name, and diffusers only when a baseline U-Net is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..config import from_dict
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

    from .baseline import UNetConfig
    from .classifier import Classifier, FeatureExtractor
    from .cunet import CUNetConfig
    from .imported import ImportedConfig, build_network, pruned_structure, resolve_module_file
    from .inception import InceptionFeatures, load_inception_v3
    from .odeint_unroll import unrolled_odeint
    from .presets import PRESETS, get_preset, preset_model_table
    from .profile import count_nfe, profile_model
    from .solver import SolverConfig

    ModelConfig = CUNetConfig | UNetConfig | ImportedConfig

__all__ = [
    "CUNetConfig",
    "Classifier",
    "FeatureExtractor",
    "ImportedConfig",
    "InceptionFeatures",
    "ModelConfig",
    "PRESETS",
    "SolverConfig",
    "UNetConfig",
    "build_model",
    "build_network",
    "get_preset",
    "preset_model_table",
    "load_inception_v3",
    "count_nfe",
    "count_odeint_calls",
    "model_config_from_dict",
    "patch_odeint",
    "profile_model",
    "pruned_structure",
    "reference_odeint",
    "require_odeint",
    "resolve_module_file",
    "unrolled_odeint",
]

# Registry: name → "module:attr", imported on use (see DESIGN §3).
_LAZY = {
    "SolverConfig": "solver:SolverConfig",
    "CUNetConfig": "cunet:CUNetConfig",
    "UNetConfig": "baseline:UNetConfig",
    "ImportedConfig": "imported:ImportedConfig",
    "resolve_module_file": "imported:resolve_module_file",
    "build_network": "imported:build_network",
    "pruned_structure": "imported:pruned_structure",
    "profile_model": "profile:profile_model",
    "SelfAttention": "cunet:SelfAttention",
    "LAYER_WIDTHS": "cunet:LAYER_WIDTHS",
    "PRESETS": "presets:PRESETS",
    "get_preset": "presets:get_preset",
    "preset_model_table": "presets:preset_model_table",
    "Classifier": "classifier:Classifier",
    "FeatureExtractor": "classifier:FeatureExtractor",
    "InceptionFeatures": "inception:InceptionFeatures",
    "load_inception_v3": "inception:load_inception_v3",
    "count_nfe": "profile:count_nfe",
    "count_odeint_calls": "odeint_unroll:count_odeint_calls",
    "require_odeint": "odeint_unroll:require_odeint",
    "reference_odeint": "odeint_unroll:reference_odeint",
    "patch_odeint": "odeint_unroll:patch_odeint",
    "unrolled_odeint": "odeint_unroll:unrolled_odeint",
}
# arch → (config class, model class)
ARCHS = {
    "cunet": ("cunet:CUNetConfig", "cunet:ContinuousUNet"),
    "unet": ("baseline:UNetConfig", "baseline:BaselineUNet"),
    "imported": ("imported:ImportedConfig", "imported:ImportedDenoiser"),
}


def _load(spec: str) -> Any:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(f".{module}", __name__), attr)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return _load(_LAZY[name])
    if name == "ModelConfig":
        return _load(_LAZY["CUNetConfig"]) | _load(_LAZY["UNetConfig"]) | _load(_LAZY["ImportedConfig"])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Parse a model config table, dispatching on its `arch` key (default "cunet")."""
    if not isinstance(data, dict):
        raise ConfigError(f"model config: expected a table, got {data!r}")
    arch = data.get("arch", "cunet")
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ConfigError(f"unknown model arch {arch!r}; valid: {', '.join(ARCHS)}")
    return from_dict(_load(ARCHS[arch][0]), data)


def build_model(cfg: ModelConfig) -> torch.nn.Module:
    """A freshly initialised denoiser for a model config (uses torch's global RNG)."""
    for cfg_spec, model_spec in ARCHS.values():
        if isinstance(cfg, _load(cfg_spec)):
            return _load(model_spec)(cfg)
    raise ConfigError(
        f"build_model: expected a model config ({', '.join(ARCHS)}), got {type(cfg).__name__}"
    )
