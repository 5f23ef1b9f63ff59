"""`import`: a diffusion model trained elsewhere → an ordinary `checkpoint` artifact every later stage accepts.

Three sources of networks (docs/import.md):

- `factory`: the user's own code, `package.module:callable` called with `kwargs`, looked up under
  `code_dir` (or on PYTHONPATH); the sha256 of its module file is recorded and checked on every load;
- `lucidrains`: `denoising_diffusion_pytorch.Unet(**kwargs)`, e.g. its `Trainer`'s `results/model-N.pt`;
- `diffusers`: a `UNet2DModel` folder written by `save_pretrained` (DDPMPipeline's `unet/`).

An import spec is a TOML file of tables `[network]`, `[weights]`, `[diffusion]`, `[image]` and `[data]`;
every key is checked, and relative paths resolve against the spec file's folder. Weights are read from
safetensors, or from a torch file with `torch.load(weights_only=True)` only: a pickle holding Python
objects is refused without running it. They must fit the network exactly (after the key path and the
prefix). The diffusion settings come from the spec, a diffusers `scheduler_config.json`, or the
diffusion buffers saved beside the network (lucidrains' `GaussianDiffusion`: `betas`, `loss_weight`);
where two of them say something, they must agree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import models
from .artifact import Artifact, check_output_path
from .checkpoint import TrainConfig, save_checkpoint
from .config import check_choice, from_dict, load_config_file, to_dict
from .data import DataConfig, image_channels
from .diffusion import PREDICTIONS, SCHEDULES, DiffusionConfig, make_betas
from .errors import ConfigError
from .kinds import STAGE_IO
from .models import build_model
from .limits import check_fits_memory

__all__ = [
    "SPEC_TABLES",
    "DiffusionSpec",
    "ImageSpec",
    "ImportSpec",
    "NetworkSpec",
    "WeightsSpec",
    "describe_import",
    "import_model",
    "load_import_spec",
    "parse_import_spec",
    "spec_fingerprint",
    "spec_inputs",
]

SPEC_TABLES = ("network", "weights", "diffusion", "image", "data")
SOURCES = ("factory", "diffusers", "lucidrains")  # the keys of [network]: the sources of models.ImportedConfig
STAGE = "import"
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_LUCIDRAINS_OBJECTIVES = {"pred_noise": "epsilon", "pred_v": "v", "pred_x0": "sample"}
_DIFFUSERS_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "sample"}
_SCHEDULE_KEYS = ("schedule", "timesteps", "beta_start", "beta_end", "betas")


@dataclass(frozen=True)
class NetworkSpec:
    """[network]: exactly one of `factory` (with `code_dir`, `kwargs`), `diffusers` (a folder), `lucidrains` (Unet kwargs)."""

    factory: str | None = None
    code_dir: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    diffusers: str | None = None
    lucidrains: dict[str, Any] | None = None

    def __post_init__(self):
        given = [name for name in SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError(f"[network] needs exactly one of factory, diffusers, lucidrains; got "
                              f"{', '.join(given) or 'none'}")
        if self.source != "factory" and (self.kwargs or self.code_dir is not None):
            raise ConfigError(f"network.kwargs and network.code_dir are for factory networks, not {self.source}"
                              + (" (give the Unet's arguments as the lucidrains table)" if self.kwargs else ""))
        if self.factory is not None:
            module, _, attr = self.factory.partition(":")
            if not module or not attr or not all(p.isidentifier() for p in module.split(".")) or not attr.isidentifier():
                raise ConfigError(f"network.factory must be \"package.module:callable\", got {self.factory!r}")

    @property
    def source(self) -> str:
        return next(name for name in SOURCES if getattr(self, name) is not None)


@dataclass(frozen=True)
class WeightsSpec:
    """[weights]: the file (.safetensors, or a torch state-dict file), the key path into it, a key prefix to keep."""

    file: str | None = None
    key: str = ""
    prefix: str = ""


@dataclass(frozen=True)
class DiffusionSpec:
    """[diffusion]: the forward process the network was trained with (what is left out comes from the source)."""

    prediction: str | None = None
    schedule: str | None = None
    timesteps: int | None = None
    beta_start: float | None = None
    beta_end: float | None = None
    betas_file: str | None = None
    data_range: tuple[float, float] | None = None
    clip_denoised: bool | None = None
    scheduler_config: str | None = None

    def __post_init__(self):
        if self.prediction is not None:
            check_choice("diffusion.prediction", self.prediction, PREDICTIONS)
        if self.schedule is not None:
            check_choice("diffusion.schedule", self.schedule, SCHEDULES)
        if self.betas_file is not None and self.schedule not in (None, "explicit"):
            raise ConfigError(f"diffusion.betas_file gives explicit betas; drop diffusion.schedule "
                              f"{self.schedule!r} (or set it to \"explicit\")")
        if self.schedule == "explicit" and self.betas_file is None:
            raise ConfigError("diffusion.schedule \"explicit\" needs diffusion.betas_file (.npy or .txt)")
        if self.betas_file is not None and any(v is not None for v in (self.timesteps, self.beta_start, self.beta_end)):
            raise ConfigError("diffusion.betas_file sets the betas: drop timesteps/beta_start/beta_end")


@dataclass(frozen=True)
class ImageSpec:
    """[image]: the square image size and channels the network takes."""

    size: int | None = None
    channels: int | None = None

    def __post_init__(self):
        for name in ("size", "channels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"image.{name} must be a positive integer, got {value}")


@dataclass(frozen=True)
class _Tables:
    network: NetworkSpec | None = None
    weights: WeightsSpec = field(default_factory=WeightsSpec)
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    image: ImageSpec = field(default_factory=ImageSpec)
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class ImportSpec:
    """A parsed import spec: its tables, every path absolute, and where it came from (`origin`: the spec file)."""

    network: NetworkSpec
    weights: WeightsSpec
    diffusion: DiffusionSpec
    image: ImageSpec
    data: dict[str, Any] | None
    origin: str | None = None  # the spec file, if there is one
    where: str = "import spec"  # how errors name the spec

    @property
    def source(self) -> str:
        return self.network.source

    def with_code_dir(self, code_dir: str | Path) -> ImportSpec:
        """The spec with another folder for the factory's module (`--code-dir`, relative to the working folder)."""
        if self.source != "factory":
            raise ConfigError(f"--code-dir is for factory networks; {self.where} imports a {self.source} network")
        folder = Path(code_dir).expanduser().absolute()
        if not folder.is_dir():
            raise ConfigError(f"code dir {folder} is not a folder")
        return dataclasses.replace(self, network=dataclasses.replace(self.network, code_dir=str(folder)))


def _resolve(base: Path, value: str | None, what: str, *, folder: bool = False) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else base / path).absolute()
    if folder and not path.is_dir():
        raise ConfigError(f"{what} {path} is not a folder")
    if not folder and not path.is_file():
        raise ConfigError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    return str(path)


def parse_import_spec(data: dict[str, Any], base: str | Path, *, where: str = "import spec",
                      origin: str | Path | None = None) -> ImportSpec:
    """An ImportSpec from its tables; relative paths resolve against `base`; every key and type is checked."""
    base = Path(base).expanduser().absolute()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of [network], [weights], ... tables")
    unknown = sorted(set(data) - set(SPEC_TABLES))
    if unknown:
        raise ConfigError(f"{where}: unknown table [{unknown[0]}]; an import spec has {', '.join(SPEC_TABLES)}")
    try:
        tables = from_dict(_Tables, data)
        if tables.network is None:
            raise ConfigError("needs a [network] table (factory, diffusers or lucidrains)")
        net = tables.network
        net = dataclasses.replace(net, code_dir=_resolve(base, net.code_dir, "network.code_dir", folder=True),
                                  diffusers=_resolve(base, net.diffusers, "network.diffusers", folder=True))
        w = dataclasses.replace(tables.weights, file=_resolve(base, tables.weights.file, "weights.file"))
        d = tables.diffusion
        d = dataclasses.replace(d, betas_file=_resolve(base, d.betas_file, "diffusion.betas_file"),
                                scheduler_config=_resolve(base, d.scheduler_config, "diffusion.scheduler_config"))
        if net.source == "diffusers":
            if not (Path(net.diffusers) / "config.json").is_file():
                raise ConfigError(f"network.diffusers {net.diffusers} has no config.json (a UNet2DModel folder "
                                  "written by save_pretrained)")
            if w.file is None:
                found = [Path(net.diffusers) / n for n in _DIFFUSERS_WEIGHTS if (Path(net.diffusers) / n).is_file()]
                if not found:
                    raise ConfigError(f"network.diffusers {net.diffusers} holds no {' or '.join(_DIFFUSERS_WEIGHTS)}; "
                                      "name the file in [weights]")
                w = dataclasses.replace(w, file=str(found[0]))
            if d.scheduler_config is None:
                auto = Path(net.diffusers).parent / "scheduler" / "scheduler_config.json"
                d = dataclasses.replace(d, scheduler_config=str(auto) if auto.is_file() else None)
        elif d.scheduler_config is not None:
            raise ConfigError("diffusion.scheduler_config is for diffusers networks")
        if w.file is None:
            raise ConfigError("needs [weights] file = \"...\" (.safetensors, or a torch state-dict file)")
        img = tables.image
        if net.source == "factory" and (img.size is None or img.channels is None):
            raise ConfigError("a factory network needs [image] size and channels")
        if net.source == "lucidrains" and img.size is None:
            raise ConfigError("a lucidrains network needs [image] size (GaussianDiffusion's image_size)")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return ImportSpec(net, w, d, img, tables.data, str(origin) if origin is not None else None, where)


def load_import_spec(path: str | Path) -> ImportSpec:
    """Read and check an import spec file (TOML, or JSON by its suffix)."""
    path = Path(path).expanduser()
    if not os.path.lexists(path):  # False, too, for a name the file system cannot hold
        raise ConfigError(f"import spec {str(path)[:200]} does not exist")
    if not path.is_file():
        raise ConfigError(f"import spec {path} is not a file")
    return parse_import_spec(load_config_file(path), path.absolute().parent, where=f"import spec {path}",
                             origin=path.absolute())


# -- provenance -------------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_record(role: str, path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return {"role": role, "path": str(p), "sha256": file_sha256(p), "bytes": p.stat().st_size}


def _code_file(spec: ImportSpec) -> Path:
    return models.resolve_module_file(spec.network.factory.split(":")[0], spec.network.code_dir or "")


def spec_inputs(spec: ImportSpec) -> list[dict[str, Any]]:
    """Every file the import reads, with its sha256 and size: spec, weights, code, unet/scheduler config, betas."""
    files = [("spec", spec.origin), ("weights", spec.weights.file)]
    if spec.source == "factory":
        try:
            files.append(("code", _code_file(spec)))
        except ConfigError as exc:
            raise ConfigError(f"{spec.where}: {exc}") from None
    if spec.source == "diffusers":
        files.append(("unet_config", Path(spec.network.diffusers) / "config.json"))
    files += [("scheduler_config", spec.diffusion.scheduler_config), ("betas", spec.diffusion.betas_file)]
    return [_file_record(role, p) for role, p in files if p is not None]


def spec_fingerprint(spec: ImportSpec) -> str:
    """A hash of the spec and of every file it reads: an import with the same fingerprint makes the same model."""
    blob = json.dumps({"spec": to_dict(spec) | {"where": None}, "inputs": [(r["role"], r["sha256"])
                                                                          for r in spec_inputs(spec)]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _versions(source: str) -> dict[str, str]:
    from importlib import metadata

    names = ["torch", "torchdiffeq"] + {"diffusers": ["diffusers"],
                                        "lucidrains": ["denoising-diffusion-pytorch"]}.get(source, [])
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- the network ------------------------------------------------------------------------------------------------


def _model_config(spec: ImportSpec) -> tuple[models.ImportedConfig, str]:
    """The ImportedConfig of the spec's network, and how to name it."""
    net, img = spec.network, spec.image
    versions = _versions(spec.source)
    if spec.source == "factory":
        code = _code_file(spec)
        cfg = {"source": "factory", "factory": net.factory, "kwargs": dict(net.kwargs), "code_dir": net.code_dir or "",
               "code_file": str(code), "code_sha256": file_sha256(code), "in_channels": img.channels,
               "image_size": img.size}
        name = net.factory
    elif spec.source == "lucidrains":
        channels = net.lucidrains.get("channels", 3)
        if img.channels is not None and img.channels != channels:
            raise ConfigError(f"image.channels {img.channels} but the lucidrains Unet has channels = {channels} "
                              "(its default is 3)")
        cfg = {"source": "lucidrains", "kwargs": dict(net.lucidrains), "in_channels": channels, "image_size": img.size}
        name = "denoising_diffusion_pytorch.Unet"
    else:
        path = Path(net.diffusers) / "config.json"
        try:
            unet = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path} is not readable JSON: {exc}") from None
        if not isinstance(unet, dict):
            raise ConfigError(f"{path} is not a table of UNet2DModel settings")
        size = unet.get("sample_size")
        if isinstance(size, list):
            if len(set(size)) != 1:
                raise ConfigError(f"{path}: sample_size {size} is not square; only square images are supported")
            size = size[0]
        size = img.size if img.size is not None else size
        if not isinstance(size, int):
            raise ConfigError(f"{path} has no integer sample_size: give [image] size")
        channels = unet.get("in_channels", 3)
        if img.channels is not None and img.channels != channels:
            raise ConfigError(f"image.channels {img.channels} but the UNet2DModel has in_channels = {channels}")
        cfg = {"source": "diffusers", "kwargs": unet, "in_channels": channels, "image_size": size}
        name = "diffusers.UNet2DModel"
    try:
        return models.ImportedConfig(**cfg, versions=versions), name
    except ConfigError as exc:
        raise ConfigError(f"{spec.where}: {exc}") from None


# -- weights ----------------------------------------------------------------------------------------------------


def check_weights_fit(path: Path) -> None:
    """Refuse a weights file too big for this machine's memory before it is read: an imported network's size is known
    only once its factory has run (the kwargs mean nothing to us), but the file is read whole and the network built
    holds the same parameters again, so memory for twice its size is a lower bound."""
    if path.is_file():
        size = path.stat().st_size
        check_fits_memory(f"importing weights file {path}", 2.0 * size,
                          f"its {size} bytes read whole, and the network built holds them again")


def _read_weights(path: Path) -> Any:
    """A weights file's contents: safetensors, or torch.load(weights_only=True), which never runs pickled code."""
    import pickle

    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"weights file {path} is not readable safetensors: {exc}") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        glob = next((line for line in lines if "GLOBAL" in line), None)
        if glob is not None:
            raise ConfigError(f"weights file {path} holds Python objects, not only tensors; it was refused without "
                              f"being run (torch.load weights_only: {glob[:160]}); save a state dict or "
                              ".safetensors") from None
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
        raise ConfigError(f"weights file {path} is not a torch state-dict file that loads without running code "
                          f"(torch.load weights_only: {detail[:160]})") from None
    except Exception as exc:  # noqa: BLE001 -- not a torch file at all: zip/pickle errors of many kinds
        text = str(exc).strip().splitlines()
        raise ConfigError(f"weights file {path} is neither .safetensors nor a torch state-dict file: "
                          f"{type(exc).__name__}: {text[0] if text else ''}") from None


def _heads(keys, n: int = 6) -> str:
    heads = []
    for k in keys:
        head = str(k).split(".")[0] + ("." if "." in str(k) else "")
        if head not in heads:
            heads.append(head)
    return ", ".join(heads[:n]) + (", ..." if len(heads) > n else "")


def _at_key(obj: Any, key: str, where: str) -> Any:
    """The value at a dotted key path in nested tables (a literal dotted key wins over a path)."""
    if not key:
        return obj
    parts, node, i = key.split("."), obj, 0
    while i < len(parts):
        if not isinstance(node, Mapping):
            raise ConfigError(f"{where}: weights.key {key!r}: {'.'.join(parts[:i])!r} holds a {type(node).__name__}, "
                              "not a table")
        for j in range(len(parts), i, -1):
            if ".".join(parts[i:j]) in node:
                node, i = node[".".join(parts[i:j])], j
                break
        else:
            raise ConfigError(f"{where}: weights.key {key!r}: no key {'.'.join(parts[:i + 1])!r} (there: "
                              f"{_heads(node, 10)})")
    return node


def _select(node: Any, prefix: str, where: str) -> dict[str, Any]:
    import torch

    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: the weights hold a {type(node).__name__} there, not a table of tensors; "
                          "set weights.key to the state dict's key")
    out = {k[len(prefix):]: v for k, v in node.items()
           if isinstance(k, str) and k.startswith(prefix) and isinstance(v, torch.Tensor)}
    if not out:
        raise ConfigError(f"{where}: no tensor key starts with weights.prefix {prefix!r} (keys there start with: "
                          f"{_heads(node)})")
    return out


def _fit(net, tensors: dict[str, Any], where: str) -> None:
    """Load `tensors` into `net`, refusing any missing, unexpected or wrongly shaped key."""
    want = net.state_dict()
    missing = [k for k in want if k not in tensors]
    unexpected = [k for k in tensors if k not in want]
    wrong = [k for k in want if k in tensors and tuple(tensors[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape ({k}: {tuple(tensors[k].shape)} in the file, "
                         f"{tuple(want[k].shape)} in the network{', ...' if len(wrong) > 1 else ''})")
        raise ConfigError(f"{where}: the weights do not fit the network ({len(tensors)} tensors for "
                          f"{len(want)}): {'; '.join(parts)}")
    net.load_state_dict(tensors, strict=True)


def _probe(model, cfg: models.ImportedConfig, where: str) -> None:
    """One call on zeros: the network must return a finite tensor shaped like its input."""
    import torch

    x = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    try:
        with torch.no_grad():
            y = model(x, torch.zeros(1, dtype=torch.long))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 -- the user's forward: any failure is a bad import
        text = str(exc).strip().splitlines()
        raise ConfigError(f"{where}: the network fails on a {tuple(x.shape)} input: {type(exc).__name__}: "
                          f"{text[0] if text else ''}") from None
    if tuple(y.shape) != tuple(x.shape):
        raise ConfigError(f"{where}: the network returns shape {tuple(y.shape)} for input {tuple(x.shape)}; "
                          "a denoiser returns a tensor like its input")
    if not torch.isfinite(y).all():
        raise ConfigError(f"{where}: the network returns non-finite values on a zero input")


# -- the diffusion process ----------------------------------------------------------------------------------------


def _from_scheduler_config(path: str) -> dict[str, Any]:
    """DiffusionConfig settings from a diffusers scheduler_config.json (DDPMScheduler's defaults where left out)."""
    try:
        sc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"scheduler config {path} is not readable JSON: {exc}") from None
    if not isinstance(sc, dict):
        raise ConfigError(f"scheduler config {path} is not a table")
    where = f"scheduler config {path}"
    if sc.get("thresholding"):
        raise ConfigError(f"{where}: thresholding (dynamic thresholding of x̂0) is not supported")
    if sc.get("rescale_betas_zero_snr"):
        raise ConfigError(f"{where}: rescale_betas_zero_snr (ᾱ_T = 0) is not supported")
    if sc.get("variance_type") in ("learned", "learned_range"):
        raise ConfigError(f"{where}: variance_type {sc['variance_type']!r} (a learned variance) is not supported")
    T = sc.get("num_train_timesteps", 1000)
    start, end = sc.get("beta_start", 0.0001), sc.get("beta_end", 0.02)
    out: dict[str, Any] = {}
    if sc.get("trained_betas") is not None:
        out = {"schedule": "explicit", "betas": [float(b) for b in sc["trained_betas"]]}
    else:
        schedule = sc.get("beta_schedule", "linear")
        if schedule in ("linear", "scaled_linear"):
            out = {"schedule": schedule, "timesteps": T, "beta_start": start, "beta_end": end}
        elif schedule == "squaredcos_cap_v2":
            out = {"schedule": "cosine", "timesteps": T}
        elif schedule == "sigmoid":  # diffusers' own sigmoid (not lucidrains'): kept as the betas it makes
            s = 1.0 / (1.0 + np.exp(-np.linspace(-6, 6, T)))
            out = {"schedule": "explicit", "betas": (s * (end - start) + start).tolist()}
        else:
            raise ConfigError(f"{where}: beta_schedule {schedule!r} is not supported (linear, scaled_linear, "
                              "squaredcos_cap_v2, sigmoid, or trained_betas)")
    ptype = sc.get("prediction_type", "epsilon")
    if ptype not in _DIFFUSERS_PREDICTIONS:
        raise ConfigError(f"{where}: prediction_type {ptype!r} is not supported "
                          f"({', '.join(_DIFFUSERS_PREDICTIONS)})")
    out["prediction"] = _DIFFUSERS_PREDICTIONS[ptype]
    clip = bool(sc.get("clip_sample", True))
    if clip and float(sc.get("clip_sample_range", 1.0)) != 1.0:
        raise ConfigError(f"{where}: clip_sample_range {sc['clip_sample_range']} is not supported (x̂0 is clipped to "
                          "the data range [-1, 1])")
    out["clip_denoised"] = clip
    out["data_range"] = (-1.0, 1.0)
    return out


def _diffusion_buffers(node: Any, prefix: str) -> dict[str, Any]:
    """Settings from the diffusion buffers saved beside the network (lucidrains' GaussianDiffusion: `betas`, and
    `loss_weight`, which tells the objective when min-SNR weighting was off), or {} when there are none."""
    import torch

    if not isinstance(node, Mapping) or not prefix:
        return {}
    parent = prefix[:-1].rpartition(".")[0] if prefix.endswith(".") else prefix.rpartition(".")[0]
    parent = f"{parent}." if parent else ""
    betas = node.get(f"{parent}betas")
    if not isinstance(betas, torch.Tensor) or betas.ndim != 1:
        return {}
    b = betas.detach().double().cpu().numpy()
    out: dict[str, Any] = {"schedule": "explicit", "betas": b.tolist()}
    weight = node.get(f"{parent}loss_weight")
    if isinstance(weight, torch.Tensor) and weight.shape == betas.shape:
        abar = np.cumprod(1.0 - b)
        snr = abar / (1.0 - abar)
        lw = weight.detach().double().cpu().numpy()
        for objective, expect in (("pred_noise", np.ones_like(snr)), ("pred_v", snr / (snr + 1)),
                                  ("pred_x0", snr)):
            if np.allclose(lw, expect, rtol=1e-4, atol=1e-7):
                out["prediction"] = _LUCIDRAINS_OBJECTIVES[objective]
                break
        else:
            out["prediction_unknown"] = f"{parent}loss_weight matches no objective without min-SNR weighting"
    return out


def _load_betas(path: str) -> list[float]:
    try:
        arr = np.load(path, allow_pickle=False) if path.endswith(".npy") else np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"diffusion.betas_file {path} is not a .npy array or a text file of numbers: {exc}") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise ConfigError(f"diffusion.betas_file {path} must hold one row of betas, got shape {arr.shape}")
    return arr.tolist()


def _betas_of(settings: dict[str, Any]) -> np.ndarray:
    keys = {k: settings[k] for k in _SCHEDULE_KEYS if k in settings}
    if keys.get("schedule") == "explicit":
        keys["timesteps"] = len(keys["betas"])
    return make_betas(from_dict(DiffusionConfig, keys, "diffusion"))


def _resolve_diffusion(spec: ImportSpec, node: Any) -> tuple[DiffusionConfig, dict[str, str]]:
    """The DiffusionConfig, merged from the source (scheduler config or saved buffers) and the spec, and where each
    setting came from. A spec setting that contradicts the source is refused (clip_denoised may differ)."""
    d = spec.diffusion
    if d.scheduler_config is not None:
        source, label = _from_scheduler_config(d.scheduler_config), "scheduler_config"
    else:
        source, label = _diffusion_buffers(node, spec.weights.prefix), "checkpoint buffers"
    unknown_prediction = source.pop("prediction_unknown", None)
    mine: dict[str, Any] = {}
    if d.betas_file is not None:
        mine.update(schedule="explicit", betas=_load_betas(d.betas_file))
    else:
        mine.update({k: getattr(d, k) for k in ("schedule", "timesteps", "beta_start", "beta_end")
                     if getattr(d, k) is not None})
    for k in ("prediction", "data_range", "clip_denoised"):
        if getattr(d, k) is not None:
            mine[k] = tuple(getattr(d, k)) if k == "data_range" else getattr(d, k)
    origin = {k: label for k in source}
    merged = dict(source)
    if any(k in mine for k in _SCHEDULE_KEYS) and "schedule" in source:
        try:
            theirs, ours = _betas_of(source), _betas_of(mine)
        except ConfigError as exc:
            raise ConfigError(f"{spec.where}: {exc}") from None
        if theirs.shape != ours.shape:
            raise ConfigError(f"{spec.where}: [diffusion] gives {ours.size} timesteps, against {theirs.size} in the {label}")
        rel = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-12)
        if rel.max() > 1e-4:
            t = int(rel.argmax())
            raise ConfigError(f"{spec.where}: the [diffusion] schedule's betas differ from those of the {label} (at "
                              f"t={t}: {ours[t]:.6g} vs {theirs[t]:.6g}); leave the schedule out to use theirs")
        for k in _SCHEDULE_KEYS:
            merged.pop(k, None)
            origin.pop(k, None)
    if "prediction" in mine and "prediction" in source and mine["prediction"] != source["prediction"]:
        raise ConfigError(f"{spec.where}: diffusion.prediction {mine['prediction']!r} contradicts the {label} "
                          f"({source['prediction']!r})")
    if "prediction" not in mine and "prediction" not in source and unknown_prediction:
        raise ConfigError(f"{spec.where}: cannot tell the prediction type ({unknown_prediction}): set "
                          "[diffusion] prediction")
    merged.update(mine)
    origin.update({k: "spec" for k in mine})
    if merged.get("schedule") == "explicit":
        merged["timesteps"] = len(merged["betas"])
    try:
        cfg = from_dict(DiffusionConfig, merged, "diffusion")
    except ConfigError as exc:
        raise ConfigError(f"{spec.where}: {exc}") from None
    unset = {f.name for f in dataclasses.fields(DiffusionConfig)} - set(merged)
    origin.update({k: "default" for k in unset if k != "betas"})  # betas only mean something when explicit
    return cfg, dict(sorted(origin.items()))


def _data_config(spec: ImportSpec, model: models.ImportedConfig) -> DataConfig:
    table = {"name": "digits", "image_size": model.image_size} | dict(spec.data or {})
    try:
        data = from_dict(DataConfig, table, "data")
    except ConfigError as exc:
        raise ConfigError(f"{spec.where}: {exc}") from None
    if data.image_size != model.image_size:
        raise ConfigError(f"{spec.where}: data.image_size {data.image_size} differs from the model's image size "
                          f"{model.image_size}")
    if data.name != "folder" and image_channels(data) != model.in_channels:
        raise ConfigError(f"{spec.where}: dataset {data.name} has {image_channels(data)} channel(s), the model "
                          f"{model.in_channels}: name the dataset it was trained on in [data]")
    return data


# -- the stage --------------------------------------------------------------------------------------------------


def import_model(spec: ImportSpec | str | Path, out: str | Path, *, code_dir: str | Path | None = None) -> Artifact:
    """Stage: a model trained elsewhere (an import spec, or its file) → a `checkpoint` artifact at `out`.

    Everything is checked before anything is written: the network builds, the weights fit it exactly,
    one call returns a tensor like its input, and the diffusion settings are consistent. The manifest's
    `import` record holds the provenance of every input file (path, sha256, bytes), the key path and
    prefix, and the package versions.
    """
    import torch

    t0 = time.perf_counter()
    if not isinstance(spec, ImportSpec):
        spec = load_import_spec(spec)
    if code_dir is not None:
        spec = spec.with_code_dir(code_dir)
    out = check_output_path(out)
    check_weights_fit(Path(spec.weights.file))  # before the file is hashed or read
    inputs = spec_inputs(spec)
    model_cfg, name = _model_config(spec)
    where = f"{spec.where} ({name})"
    try:
        model = build_model(model_cfg)
    except ConfigError as exc:
        raise ConfigError(f"{spec.where}: {exc}") from None
    raw = _read_weights(Path(spec.weights.file))
    node = _at_key(raw, spec.weights.key, where)
    tensors = _select(node, spec.weights.prefix, where)
    _fit(model.net, tensors, where)
    model.eval()
    _probe(model, model_cfg, where)
    diffusion, diffusion_from = _resolve_diffusion(spec, node)
    data = _data_config(spec, model_cfg)
    cfg = TrainConfig(model=model_cfg, data=data, diffusion=diffusion)
    step = raw.get("step") if isinstance(raw, Mapping) else None
    step = int(step) if isinstance(step, (int, np.integer)) or (isinstance(step, torch.Tensor) and step.numel() == 1) else 0
    record = {
        "source": spec.source,
        "network": name,
        "inputs": inputs,
        "weights": {"file": spec.weights.file, "key": spec.weights.key, "prefix": spec.weights.prefix,
                    "tensors": len(tensors), "missing": [], "unexpected": [], "wrong_shape": []},
        "diffusion_from": diffusion_from,
        "source_step": step,
        "versions": model_cfg.versions,
        "params": sum(p.numel() for p in model.parameters()),
    }
    record["seconds"] = round(time.perf_counter() - t0, 3)  # up to writing: reading, building, checking
    return save_checkpoint(Path(out), cfg, model.state_dict(), step=step, train_state=None, stage=STAGE,
                           kind=STAGE_IO[STAGE].produces(), extra={"import": record})


def describe_import(art: Artifact) -> str:
    """One line on what an imported checkpoint holds: source network, parameters, diffusion settings."""
    rec = art.manifest.get("import", {})
    d = art.config.get("diffusion", {})
    schedule = d.get("schedule")
    return (f"imported {rec.get('source')} {rec.get('network')}: {rec.get('params', 0):,} params, "
            f"{d.get('prediction', 'epsilon')}-prediction, {schedule} schedule, T={d.get('timesteps')}")

