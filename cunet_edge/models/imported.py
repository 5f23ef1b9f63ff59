"""A denoiser trained elsewhere: the user's own network code, a diffusers UNet2DModel, or lucidrains' Unet.

`ImportedConfig` records how to rebuild the network (`source` and its arguments); `ImportedDenoiser`
builds it as `self.net` and calls it as every denoiser of this package is called:
forward(x (B, C, H, W), t (B,) int64) → a tensor like x (ε, v or x̂0: the checkpoint's
`diffusion.prediction` says which). `cunet_edge.importing` writes such configs; nothing here reads a
user's weights.

A `factory` network is the user's module, imported (with `code_dir` put on sys.path) only after the
sha256 of its file matched the one recorded at import, so a checkpoint never runs other code than
the code it was imported with.

A pruned imported network (the prune stage) is the same network with fewer channels: its factory
arguments cannot say so, so `ImportedConfig.pruned` records what pruning changed (the shape of every
resized tensor, and the width attributes of the resized torch.nn layers) and `ImportedDenoiser`
re-applies it to the freshly built network before the weights are loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import sys
from dataclasses import dataclass, field
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..compat import ensure_torchvision_imports
from ..config import check_choice
from ..errors import BackendMissingError, ConfigError
from .explicit import UNROLLABLE
from .odeint_unroll import unrolled_odeint

__all__ = ["SOURCES", "ImportedConfig", "ImportedDenoiser", "apply_pruned", "build_network", "pruned_structure",
           "resolve_module_file"]

SOURCES = ("factory", "diffusers", "lucidrains")
_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


@dataclass(frozen=True)
class ImportedConfig:
    """How to rebuild an imported network: its source and arguments, image shape, and what it was imported with.

    - `factory`: `factory = "package.module:callable"` called with `kwargs`; the module is looked up under
      `code_dir` first (then on sys.path), and its file must still have `code_sha256` (recorded at import).
    - `lucidrains`: `denoising_diffusion_pytorch.Unet(**kwargs)`.
    - `diffusers`: `diffusers.UNet2DModel.from_config(kwargs)` (kwargs: the model's whole config.json).
    """

    arch: Literal["imported"] = "imported"
    source: str = "factory"
    factory: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    code_dir: str = ""
    code_file: str = ""
    code_sha256: str = ""
    in_channels: int = 1
    image_size: int = 16
    versions: dict[str, str] = field(default_factory=dict)  # package versions at import (provenance only)
    # Set by the unroll stage: every torchdiffeq odeint/odeint_adjoint call of the network runs as this
    # fixed-step explicit method, `unroll_steps` steps per output interval (cunet_edge.models.odeint_unroll).
    unroll_method: str = ""
    unroll_steps: int = 0
    # Set by the prune stage: {"shapes": {state-dict name: shape}, "attributes": {module path: {name: value}}},
    # names relative to the network (see `pruned_structure`); {} for the network as its arguments build it.
    pruned: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_choice("arch", self.arch, ["imported"])
        check_choice("model.source", self.source, SOURCES)
        if self.source == "factory":
            if not _FACTORY.match(self.factory):
                raise ConfigError(f"model.factory must be \"package.module:callable\", got {self.factory!r}")
            if not re.fullmatch(r"[0-9a-f]{64}", self.code_sha256):
                raise ConfigError("model.code_sha256 must be the sha256 (64 hex digits) of the factory's module file")
        elif self.factory or self.code_dir or self.code_file or self.code_sha256:
            raise ConfigError(f"model.factory/code_dir/code_file/code_sha256 are for source 'factory', not "
                              f"{self.source!r}")
        if bool(self.unroll_method) != bool(self.unroll_steps):
            raise ConfigError("model.unroll_method and model.unroll_steps go together (both set by the unroll stage)")
        if self.unroll_method:
            check_choice("model.unroll_method", self.unroll_method, UNROLLABLE)
            if isinstance(self.unroll_steps, bool) or not isinstance(self.unroll_steps, int) or self.unroll_steps < 1:
                raise ConfigError(f"model.unroll_steps must be an integer >= 1, got {self.unroll_steps!r}")
        for name in ("in_channels", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        _check_pruned(self.pruned)


def _check_pruned(pruned: dict[str, Any]) -> None:
    """The shape of a `pruned` record (what it names is checked when it is applied to the network)."""
    extra = sorted(set(pruned) - {"shapes", "attributes"})
    if extra:
        raise ConfigError(f"model.pruned has an unknown key {extra[0]!r} (it holds shapes and attributes)")
    shapes, attributes = pruned.get("shapes", {}), pruned.get("attributes", {})
    if not isinstance(shapes, dict) or not all(
            isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v)
            for v in shapes.values()):
        raise ConfigError("model.pruned.shapes must map tensor names to shapes (lists of sizes >= 0)")
    if not isinstance(attributes, dict) or not all(isinstance(v, dict) for v in attributes.values()):
        raise ConfigError("model.pruned.attributes must map module paths to tables of attribute values")


def resolve_module_file(module: str, code_dir: str = "") -> Path:
    """The file of `module` (a package's __init__.py), found under code_dir first, then on sys.path, without
    running any of it (a dotted name's parent packages are found the same way, not imported)."""
    parts = module.split(".")
    where = f"under {code_dir} or on sys.path" if code_dir else "on sys.path (PYTHONPATH)"
    roots = [[code_dir]] if code_dir and Path(code_dir).is_dir() else []
    for path in roots + [None]:
        spec, search = None, path
        for i in range(len(parts)):
            spec = PathFinder.find_spec(".".join(parts[: i + 1]), search)
            if spec is None:
                break
            search = spec.submodule_search_locations
            if search is None and i + 1 < len(parts):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is a module, not a package: cannot find {module}")
        if spec is not None:
            break
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ConfigError(f"cannot find module {module!r} of the factory {where}")
    return Path(spec.origin).resolve()


def _factory_callable(cfg: ImportedConfig):
    """The factory callable, after checking that its module file is the one recorded at import."""
    module, attr = cfg.factory.split(":")
    path = resolve_module_file(module, cfg.code_dir)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != cfg.code_sha256:
        raise ConfigError(f"code file {path} changed since import (sha256 {digest[:12]}…, imported with "
                          f"{cfg.code_sha256[:12]}…); import the model again to run the new code")
    loaded = sys.modules.get(module)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path:
        raise ConfigError(f"module {module!r} is already imported in this process from {loaded.__file__}, "
                          f"not from {path}")
    if cfg.code_dir and Path(cfg.code_dir).is_dir() and cfg.code_dir not in sys.path:
        sys.path.insert(0, cfg.code_dir)
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 -- the user's module: any error while importing it is a bad import spec
        raise ConfigError(f"importing {module} ({path}) failed: {type(exc).__name__}: {_first_line(exc)}") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ConfigError(f"module {module} ({path}) has no callable {attr!r}")
    return fn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lucidrains_unet():
    ensure_torchvision_imports()  # the package imports torchvision, which may be a CUDA build beside a CPU torch
    try:
        from denoising_diffusion_pytorch import Unet
    except ImportError:
        raise BackendMissingError("denoising-diffusion-pytorch", "pip install denoising-diffusion-pytorch") from None
    return Unet


def _diffusers_unet():
    ensure_torchvision_imports()  # diffusers imports torchvision when it is installed
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise BackendMissingError("diffusers", "pip install 'cunet-edge[baseline]'") from None
    return UNet2DModel


def build_network(cfg: ImportedConfig) -> nn.Module:
    """The user's network as `cfg` describes it, freshly initialised (torch's global RNG); ConfigError if it
    cannot be built or is not a denoiser of cfg's channels."""
    kwargs = dict(cfg.kwargs)
    if cfg.source == "lucidrains":
        if kwargs.get("self_condition"):
            raise ConfigError("lucidrains Unet with self_condition=True needs its own previous x̂0 as a second input; "
                              "self-conditioned models are not supported (train with self_condition=False)")
        if kwargs.get("learned_variance"):
            raise ConfigError("lucidrains Unet with learned_variance=True predicts a variance too; "
                              "only models that predict one tensor like x are supported")
        what, make = "denoising_diffusion_pytorch.Unet", _lucidrains_unet()
    elif cfg.source == "diffusers":
        name = kwargs.get("_class_name", "UNet2DModel")
        if name != "UNet2DModel":
            raise ConfigError(f"diffusers model class {name!r} is not supported; import a UNet2DModel "
                              "(unconditional, as DDPMPipeline saves it)")
        if kwargs.get("num_class_embeds") is not None or kwargs.get("class_embed_type") is not None:
            raise ConfigError("class-conditional UNet2DModel (num_class_embeds/class_embed_type) is not supported: "
                              "the denoiser takes only x and t")
        what, cls = "diffusers.UNet2DModel", _diffusers_unet()

        def make(**kw):
            return cls.from_config(kw)
    else:
        what, make = cfg.factory, _factory_callable(cfg)
    try:
        net = make(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{what} rejected its arguments {kwargs}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 -- the user's (or the package's) constructor: a bad spec, one line
        raise ConfigError(f"building {what}({kwargs}) failed: {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{what} returned a {type(net).__name__}, not a torch.nn.Module")
    channels = {"lucidrains": lambda: (net.channels, net.out_dim),
                "diffusers": lambda: (net.config.in_channels, net.config.out_channels)}.get(cfg.source)
    if channels is not None:
        c_in, c_out = channels()
        if c_in != cfg.in_channels or c_out != cfg.in_channels:
            raise ConfigError(f"{what} takes {c_in} and returns {c_out} channel(s); the model has {cfg.in_channels}")
    return net


_MISSING = object()


def _is_torch_layer(module: nn.Module) -> bool:
    """A torch.nn layer (or a subclass of one): the layers whose width attributes Torch-Pruning rewrites."""
    return any(c.__module__.startswith("torch.nn.") for c in type(module).__mro__ if c not in (nn.Module, object))


def _plain(value: Any) -> Any:
    """`value` as JSON (tuples become lists), or _MISSING if it is not made of numbers, strings and lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else items
    return _MISSING


def pruned_structure(pruned: nn.Module, nominal: nn.Module) -> dict[str, Any]:
    """What `pruned` (a network whose channels were removed) differs in from `nominal` (the same network as its
    arguments build it): the shape of every tensor that changed, and the changed public attributes of the torch.nn
    layers holding them (in_channels, num_features, ...). ConfigError if a change cannot be recorded that way."""
    before = {k: tuple(v.shape) for k, v in nominal.state_dict().items()}
    after = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    if before.keys() != after.keys():
        odd = min(before.keys() ^ after.keys())
        raise ConfigError(f"pruning changed which tensors the network holds ({odd}); it cannot be rebuilt")
    shapes = {k: list(after[k]) for k in after if after[k] != before[k]}
    persistent = set(after)
    for name, buf in pruned.named_buffers():
        old = nominal.get_buffer(name)
        if name not in persistent and tuple(buf.shape) != tuple(old.shape):
            raise ConfigError(f"pruning resized the non-persistent buffer {name}, which the weights do not hold: "
                              "the network cannot be rebuilt")
    changed = {k.rpartition(".")[0] for k in shapes}
    nominal_modules = dict(nominal.named_modules())
    attributes: dict[str, dict[str, Any]] = {}
    for path, module in pruned.named_modules():
        if path not in changed or not _is_torch_layer(module):
            continue
        fresh = vars(nominal_modules[path])
        for key, value in vars(module).items():
            if key.startswith("_") or key == "training" or isinstance(value, (torch.Tensor, nn.Module)):
                continue
            old = fresh.get(key, _MISSING)
            if old is not _MISSING and _plain(old) == _plain(value):
                continue
            plain = _plain(value)
            if plain is _MISSING:
                raise ConfigError(f"pruning changed attribute {key} of layer {path} ({type(module).__name__}) to a "
                                  f"{type(value).__name__}, which a config cannot record")
            attributes.setdefault(path, {})[key] = plain
    return {"shapes": shapes, "attributes": attributes}


def apply_pruned(net: nn.Module, pruned: dict[str, Any]) -> None:
    """Resize `net` (freshly built from its arguments) as `pruned` (from `pruned_structure`) records, in place.

    Every recorded tensor is replaced by a zero tensor of its recorded shape (the weights are loaded next;
    a tensor shared by several modules stays shared) and every recorded attribute is set.
    """
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(old) → (old, new): old held, so ids stay unique
    for name, shape in pruned.get("shapes", {}).items():
        path, _, attr = name.rpartition(".")
        try:
            owner = net.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"model.pruned names tensor {name}, but the network has no module {path!r}") from None
        table = owner._parameters if attr in owner._parameters else owner._buffers if attr in owner._buffers else None
        if table is None or table[attr] is None:
            raise ConfigError(f"model.pruned names tensor {name}, which the network does not have")
        old = table[attr]
        if id(old) not in made:
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            new = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
            made[id(old)] = (old, new)
        setattr(owner, attr, made[id(old)][1])  # (through the module: an RNN re-reads its flat weights)
    for path, values in pruned.get("attributes", {}).items():
        try:
            module = net.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"model.pruned names module {path!r}, which the network does not have") from None
        for key, value in values.items():
            old = getattr(module, key, _MISSING)
            if old is _MISSING:
                raise ConfigError(f"model.pruned sets {path}.{key}, which {type(module).__name__} does not have")
            setattr(module, key, tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value)


class ImportedDenoiser(nn.Module):
    """An imported network as a denoiser: forward(x (B,C,H,W), t (B,) int64) → a tensor like x.

    `self.net` is the user's network; its state dict is this module's under the prefix `net.`.
    """

    def __init__(self, cfg: ImportedConfig):
        super().__init__()
        self.cfg = cfg
        self.net = build_network(cfg)
        if cfg.pruned:
            apply_pruned(self.net, cfg.pruned)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The one place the network runs. An unrolled model runs it with every torchdiffeq solve replaced by
        # the explicit fixed-step loop: plain tensor ops, which trace and export to a static graph.
        if self.cfg.unroll_method:
            with unrolled_odeint(self.cfg.unroll_method, self.cfg.unroll_steps, model=self.net) as stats:
                out = self._call_net(x, t)
            self.last_odeint_stats = stats  # the solves and NFE of this call, for profile_model
            return out
        return self._call_net(x, t)

    def _call_net(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            # A half-precision model (the torch runner's fp16): the user's code may build float32 tensors of its
            # own (timestep embeddings, as lucidrains' Unet does) that a half-precision layer then refuses;
            # autocast runs each op in x's dtype whatever its inputs are.
            with torch.autocast(device_type=x.device.type, dtype=x.dtype):
                return self._output(x, t).to(x.dtype)
        return self._output(x, t)

    def _output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.cfg.source == "diffusers":
            return self.net(x, t, return_dict=False)[0]
        out = self.net(x, t)  # lucidrains Unet: forward(x, time, x_self_cond=None)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = getattr(out, "sample", out)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"the imported network returned a {type(out).__name__}, not a tensor")
        return out
