"""Device profiles: one TOML file per target GPU in `profiles/`, and the checks that refuse a bad request early.

A profile holds only figures that NVIDIA documents (sources per device and per field in
`devices/README.md`); a value nobody documents is absent from the TOML and `None` here.
Throughput figures are peak and dense (no 2:4 structured sparsity). `check_request` turns a
deployment wish (precision, DLA, model size, TensorRT features) into one-line ConfigErrors
before any export or engine build starts.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "KINDS",
    "PRECISIONS",
    "PROFILE_DIR",
    "RUNTIME_OVERHEAD_BYTES",
    "TENSORRT_FEATURES",
    "DeviceProfile",
    "TensorRTFeature",
    "check_request",
    "list_profiles",
    "load_profile",
    "load_profile_file",
    "profile_table",
]

PROFILE_DIR = Path(__file__).parent / "profiles"
KINDS = ("jetson", "desktop", "datacenter")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
# Precisions TensorRT can place on a DLA core (TensorRT developer guide, "Working with DLA").
DLA_PRECISIONS = ("fp16", "int8")
# Head-room on top of the model's own bytes: CUDA context, cuDNN/cuBLAS handles, the TensorRT
# runtime and activation workspace. A floor, not a promise: on Jetson the OS shares the same memory.
RUNTIME_OVERHEAD_BYTES = 1 << 30


@dataclass(frozen=True)
class DeviceProfile:
    """One target GPU. Throughput is peak dense; `None` means no cited source gives the value.

    fp32_tflops / fp16_tflops / int8_tops are the GPU's own (for Jetson: without the DLAs;
    fp16 on tensor cores with FP32 accumulate where the sheet lists both rates).
    total_int8_tops is a Jetson module's whole "AI performance" (GPU + DLAs), dense.
    """

    name: str
    display_name: str
    kind: str
    gpu_arch: str
    compute_capability: str
    memory_gb: float
    precisions: tuple[str, ...]
    tensor_core_precisions: tuple[str, ...] = ()
    dla_count: int = 0
    memory_bandwidth_gbs: float | None = None
    fp32_tflops: float | None = None
    fp16_tflops: float | None = None
    int8_tops: float | None = None
    total_int8_tops: float | None = None
    dla_int8_tops: float | None = None
    dla_fp16_tflops: float | None = None
    jetpack: str | None = None
    l4t: str | None = None
    tensorrt: str | None = None
    python: str | None = None
    power_modes_w: tuple[float, ...] = ()
    notes: str | None = None

    @property
    def sm(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def tensorrt_tuple(self) -> tuple[int, ...] | None:
        return _version(self.tensorrt) if self.tensorrt else None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_FIELDS = {f.name: f for f in dataclasses.fields(DeviceProfile)}
_REQUIRED = {n for n, f in _FIELDS.items() if f.default is dataclasses.MISSING}
_STR = {"name", "display_name", "kind", "gpu_arch", "compute_capability", "jetpack", "l4t", "tensorrt", "python",
        "notes"}
_FLOAT = {"memory_gb", "memory_bandwidth_gbs", "fp32_tflops", "fp16_tflops", "int8_tops", "total_int8_tops",
          "dla_int8_tops", "dla_fp16_tflops"}
_STR_LISTS = {"precisions", "tensor_core_precisions"}


def _version(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        raise ConfigError(f"version {text!r} is not dotted numbers (e.g. '10.3' or '8.5.2')")
    return tuple(int(p) for p in text.split("."))


def _coerce(path: Path, key: str, value: Any) -> Any:
    """One TOML value to the field's type; a wrong type is an error naming the file and key."""
    where = f"{path.name}: key {key!r}"
    if key in _STR:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
        return value
    if key in _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where} must be a positive number, got {value!r}")
        return float(value)
    if key == "dla_count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where} must be a non-negative integer, got {value!r}")
        return value
    if key == "power_modes_w":
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0
                                              for v in value):
            raise ConfigError(f"{where} must be a list of positive numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if not isinstance(value, list) or any(v not in PRECISIONS for v in value):
        raise ConfigError(f"{where} must be a list drawn from {', '.join(PRECISIONS)}; got {value!r}")
    return tuple(value)


def _validate(path: Path, p: DeviceProfile) -> None:
    """Cross-field rules: the name is the file's stem, kinds and versions are well formed."""
    where = path.name
    if p.name != path.stem:
        raise ConfigError(f"{where}: name {p.name!r} must equal the file name stem {path.stem!r}")
    if p.kind not in KINDS:
        raise ConfigError(f"{where}: kind {p.kind!r} is not one of {', '.join(KINDS)}")
    if not re.fullmatch(r"\d+\.\d+", p.compute_capability):
        raise ConfigError(f"{where}: compute_capability {p.compute_capability!r} must look like '8.7'")
    if not set(p.tensor_core_precisions) <= set(p.precisions):
        raise ConfigError(f"{where}: tensor_core_precisions must be a subset of precisions")
    if p.dla_count == 0 and (p.dla_int8_tops or p.dla_fp16_tflops):
        raise ConfigError(f"{where}: DLA throughput given but dla_count is 0")
    if p.kind != "jetson" and (p.jetpack or p.l4t or p.power_modes_w):
        raise ConfigError(f"{where}: jetpack, l4t and power_modes_w are for kind 'jetson' only")
    if p.tensorrt:
        _version(p.tensorrt)


def load_profile_file(path: str | Path) -> DeviceProfile:
    """Parse one profile TOML strictly: unknown or missing keys and wrong types are errors."""
    import tomllib  # Python >= 3.11; imported here so the module itself still imports on 3.10

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read device profile {path}: {exc}") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{path.name}: unknown key {unknown[0]!r} (allowed: {', '.join(_FIELDS)})")
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise ConfigError(f"{path.name}: missing key {missing[0]!r}")
    profile = DeviceProfile(**{k: _coerce(path, k, v) for k, v in data.items()})
    _validate(path, profile)
    return profile


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILE_DIR.glob("*.toml"))}


def list_profiles() -> list[str]:
    """Names of the packaged profiles, sorted."""
    return sorted(_registry())


@functools.cache
def load_profile(name: str) -> DeviceProfile:
    """The packaged profile called `name`; an unknown name is an error listing the valid ones."""
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"unknown device {name!r}; valid devices: {', '.join(sorted(registry))}")
    return load_profile_file(registry[name])


@dataclass(frozen=True)
class TensorRTFeature:
    """A TensorRT capability gated by TensorRT version and/or GPU compute capability."""

    min_tensorrt: tuple[int, ...]
    min_sm: tuple[int, int] | None = None
    source: str = ""


# Sources are spelled out in devices/README.md ("TensorRT feature table").
TENSORRT_FEATURES: dict[str, TensorRTFeature] = {
    "explicit_quantization": TensorRTFeature((8, 0), source="TensorRT 8.0 release notes (Q/DQ)"),
    "version_compatible": TensorRTFeature((8, 6), source="TensorRT 8.6 release notes"),
    "hardware_compatible": TensorRTFeature((8, 6), (8, 0), source="TensorRT 8.6 release notes (Ampere+)"),
    "strongly_typed": TensorRTFeature((10, 0), source="TensorRT 10.0 API: NetworkDefinitionCreationFlag"),
    "fp8": TensorRTFeature((10, 0), (8, 9), source="TensorRT 10.x support matrix, FP8 column"),
    "fp4": TensorRTFeature((10, 8), (10, 0), source="TensorRT 10.8.0 release notes (E2M1 FP4, Blackwell)"),
}


def _check_precision(p: DeviceProfile, precision: str | None, dla: bool) -> str | None:
    if precision is None:
        return None
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision not in p.precisions:
        return (f"{precision.upper()} is not supported by TensorRT on this GPU (sm {p.compute_capability}; "
                f"supported: {', '.join(p.precisions)})")
    if dla and precision not in DLA_PRECISIONS:
        return f"the DLA runs only {' or '.join(DLA_PRECISIONS)}, not {precision}"
    return None


def _check_memory(p: DeviceProfile, model_bytes: int | None) -> str | None:
    if model_bytes is None:
        return None
    if model_bytes < 0:
        raise ConfigError(f"model_bytes must be >= 0, got {model_bytes}")
    need = model_bytes + RUNTIME_OVERHEAD_BYTES
    have = p.memory_gb * 1e9
    if need > have:
        return (f"model needs {model_bytes / 1e9:.2f} GB + {RUNTIME_OVERHEAD_BYTES / 2**30:.0f} GiB runtime overhead "
                f"= {need / 1e9:.2f} GB, more than the {p.memory_gb:g} GB of memory")
    return None


def _check_feature(p: DeviceProfile, feature: str) -> str | None:
    if feature not in TENSORRT_FEATURES:
        raise ConfigError(f"unknown TensorRT feature {feature!r}; valid: {', '.join(TENSORRT_FEATURES)}")
    spec = TENSORRT_FEATURES[feature]
    if spec.min_sm and p.sm < spec.min_sm:
        need = ".".join(map(str, spec.min_sm))
        return f"{feature} needs compute capability >= {need}, this GPU is sm {p.compute_capability}"
    trt = p.tensorrt_tuple
    if trt is not None and trt < spec.min_tensorrt:
        shipped = f"JetPack {p.jetpack} ships" if p.jetpack else "the profile lists"
        return f"{feature} needs TensorRT >= {'.'.join(map(str, spec.min_tensorrt))}, {shipped} TensorRT {p.tensorrt}"
    return None


def check_request(profile: DeviceProfile, *, precision: str | None = None, dla: bool = False,
                  model_bytes: int | None = None, tensorrt_features: Iterable[str] = ()) -> None:
    """Refuse a deployment the device cannot run: raise ConfigError with one line naming device and reason.

    Checks precision support (e.g. no INT8 on Jetson Nano/TX2), DLA presence, model size plus
    RUNTIME_OVERHEAD_BYTES against memory, and TENSORRT_FEATURES against the shipped TensorRT and
    the compute capability. Desktop profiles carry no TensorRT version (user-installed), so only
    the compute-capability half of a feature check applies to them.
    """
    reasons = [_check_precision(profile, precision, dla)]
    if dla and profile.dla_count == 0:
        reasons.append("it has no DLA (deep learning accelerator)")
    reasons.append(_check_memory(profile, model_bytes))
    reasons += [_check_feature(profile, f) for f in tensorrt_features]
    reasons = [r for r in reasons if r]
    if reasons:
        raise ConfigError(f"{profile.display_name} ({profile.name}): {'; '.join(reasons)}")


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def _int8_cell(p: DeviceProfile) -> str:
    # The GPU's own figure when a source separates it, else the module total (GPU + DLAs).
    if p.int8_tops is not None or p.total_int8_tops is None:
        return _num(p.int8_tops)
    return f"{p.total_int8_tops:g} (GPU+DLA)" if p.dla_count else _num(p.total_int8_tops)


def profile_table(profiles: Iterable[DeviceProfile]) -> str:
    """A plain-text table: name, GPU arch, sm, memory, FP16/INT8 peak (dense), DLA count, TensorRT."""
    head = ("name", "gpu", "sm", "memory", "fp16 TFLOPS", "int8 TOPS", "dla", "tensorrt")
    rows = [head] + [
        (p.name, p.gpu_arch, p.compute_capability, _num(p.memory_gb, " GB"), _num(p.fp16_tflops),
         _int8_cell(p), str(p.dla_count), p.tensorrt or "-")
        for p in profiles
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
