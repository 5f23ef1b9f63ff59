"""Model artifacts: the TrainConfig schema of their config.json, EMA weights (safetensors), the state to resume training.

A `checkpoint`, `unrolled` or `pruned` artifact holds a torch model as config.json (the whole
TrainConfig of the run that made it) + model.safetensors. Only safetensors and JSON are ever
read back: nothing a user hands in is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import models
from .artifact import Artifact, ArtifactWriter
from .config import check_choice, check_positive, from_dict, load_config_file, to_dict
from .data import DataConfig, image_channels, save_image_grid
from .diffusion import DiffusionConfig
from .errors import ArtifactError, ConfigError
from .kinds import MODEL_KINDS, check_kind_files
from .models import build_model, model_config_from_dict
from .records import check_solver_request
from .limits import check_fits_memory, check_int, check_number, check_seed, read_json_record

__all__ = ["TrainConfig", "train_config_from_dict", "train_config_from_options", "Checkpoint", "load_checkpoint",
           "save_checkpoint", "load_train_state", "save_train_state", "model_signature", "with_solver",
           "read_train_config"]

KIND = "checkpoint"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE_DIR = "train_state"


LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; the whole of it is stored as the checkpoint's config.json."""

    # The model config classes import torch: resolved on use, so importing this module stays light.
    model: models.ModelConfig = field(default_factory=lambda: models.CUNetConfig())
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    steps: int = 3600
    batch_size: int = 64
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    seed: int = 0
    save_every: int = 500
    sample_n: int = 64
    sample_steps: int = 50
    # Train a fixed-step solver through the explicit loop of `cunet_edge.models.explicit` (the same
    # Butcher coefficients as torchdiffeq's fixed grid, so the same function; 1.4x the steps per
    # second on the 2-core CPU). The checkpoint keeps the solver config as given (torchdiffeq).
    # Adaptive solvers and the adjoint method always train through torchdiffeq.
    explicit_solver: bool = True

    def __post_init__(self):
        check_seed(self.seed)
        for name in ("steps", "batch_size", "lr", "save_every", "sample_n", "sample_steps"):
            check_positive(name, getattr(self, name))
        check_positive("warmup_steps", self.warmup_steps, allow_zero=True)
        check_positive("grad_clip", self.grad_clip, allow_zero=True)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.model.image_size != self.data.image_size:
            raise ConfigError(
                f"model.image_size {self.model.image_size} differs from data.image_size {self.data.image_size}"
            )


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Parse a TrainConfig; the model table is dispatched on its `arch` key."""
    data = dict(data)
    if "model" in data:
        data["model"] = model_config_from_dict(data["model"])
    return from_dict(TrainConfig, data)


def train_config_from_options(config_file: str | None = None, *, base: dict[str, Any] | None = None,
                              dataset: str | None = None,
                              data_root: str | None = None, download: bool | None = None,
                              image_size: int | None = None, arch: str | None = None,
                              solver: dict[str, Any] | None = None, preset: str | None = None,
                              **top: Any) -> TrainConfig:
    """A TrainConfig from an optional TOML/JSON file (or a `base` table) with command-line values laid over it.

    Options left as None keep the file's (or the default) value. The model's input channels
    follow the dataset unless the file sets them. A preset (`preset`, or the file's top-level
    `preset = "..."`) is the model table the file's [model] keys are laid over; its image size is the
    data's unless the file or `image_size` sets one (the preset's attention follows that size).
    """
    d = load_config_file(config_file) if config_file else dict(base or {})
    preset = preset if preset is not None else d.pop("preset", None)
    d.pop("preset", None)
    for table in ("data", "model"):
        if not isinstance(d.get(table, {}), dict):
            raise ConfigError(f"{table}: expected a table of settings, got {d[table]!r}")
    data = dict(d.get("data", {}))
    model = dict(d.get("model", {}))
    if not isinstance(model.get("solver", {}), dict):
        raise ConfigError(f"model.solver: expected a table of settings, got {model['solver']!r}")
    if preset is not None:
        size = image_size or data.get("image_size") or model.get("image_size")
        table = models.preset_model_table(preset, size)
        if arch is not None and arch != table["arch"]:
            raise ConfigError(f"preset {preset} is a {table['arch']} model; it cannot be trained with arch {arch}")
        model = table | model
        data.setdefault("image_size", table["image_size"])
    for key, value in (("name", dataset), ("root", data_root), ("download", download), ("image_size", image_size)):
        if value is not None:
            data[key] = value
    if image_size is not None:
        model["image_size"] = image_size
    elif "image_size" in data:
        model.setdefault("image_size", data["image_size"])
    if arch is not None and arch != model.get("arch", "cunet"):
        model = {k: v for k, v in model.items() if k in ("image_size", "in_channels")} | {"arch": arch}
    solver = {k: v for k, v in (solver or {}).items() if v is not None}
    if solver:
        model["solver"] = dict(model.get("solver", {})) | solver
    d = dict(d) | {"data": data, "model": model} | {k: v for k, v in top.items() if v is not None}
    data_cfg = from_dict(DataConfig, data, "data")
    if "in_channels" not in model:
        model["in_channels"] = image_channels(data_cfg)
    return train_config_from_dict(d)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the EMA model in eval mode, its TrainConfig, and the artifact."""

    model: Any
    config: Any
    artifact: Artifact


def model_signature(model_cfg) -> dict[str, Any]:
    """Input/output signature of the denoiser: x (B, C, H, W) float32, t (B,) int64 → eps like x."""
    shape = [None, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size]
    return {
        "inputs": {"x": {"shape": shape, "dtype": "float32"}, "t": {"shape": [None], "dtype": "int64"}},
        "outputs": {"eps": {"shape": shape, "dtype": "float32"}},
    }


def read_train_config(art: Artifact) -> TrainConfig:
    """The TrainConfig in a model artifact's config.json; an unreadable or invalid one is an ArtifactError."""
    data = read_json_record(art.file(CONFIG), "model config")  # a regular UTF-8 file, bounded size and depth
    try:
        return train_config_from_dict(data)
    except ConfigError as exc:
        raise ArtifactError(f"{art.path}/{CONFIG} is not a valid training config: {exc}") from None


def load_weights(model, path: Path, what: str) -> None:
    """Load a safetensors state dict strictly; a shape or key mismatch is an ArtifactError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{what} {path} is corrupted or not safetensors: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ArtifactError(f"{what} {path} does not match its architecture config: {detail}") from None


def load_checkpoint(src: str | Path | Artifact, device: str = "cpu", kinds=MODEL_KINDS) -> Checkpoint:
    """Rebuild a model artifact's model from config.json and load its (EMA) weights.

    `src` is a path (opened and its hashes checked here) or an Artifact a caller already opened.
    """
    art = src.require(kinds) if isinstance(src, Artifact) else Artifact.load(src, kinds=kinds)
    check_kind_files(art.manifest, art.path)
    cfg = read_train_config(art)
    # any model (an imported one's size is unknown until it is built): its weights are a lower bound
    size = art.manifest["files"].get(WEIGHTS, {}).get("bytes", 0)
    check_fits_memory(f"loading {art.path}", 2.0 * size, f"its weights file's {size} bytes read whole, and the "
                      "model built holds them again")
    model = build_model(cfg.model)
    load_weights(model, art.file(WEIGHTS), "checkpoint weights")
    return Checkpoint(model.to(device).eval(), cfg, art)


def with_solver(ckpt: Checkpoint, method: str | None = None, steps: int | None = None) -> Checkpoint:
    """The same weights run with another ODE solver (torchdiffeq); unrolled artifacts refuse any but their own."""
    if method is None and steps is None:
        return ckpt
    check_solver_request(ckpt.artifact.manifest, ckpt.artifact.path, method, steps)
    if ckpt.artifact.kind != KIND:
        return ckpt
    m = ckpt.config.model
    if m.arch != "cunet":
        raise ConfigError(f"{ckpt.artifact.path} is a {m.arch!r} model: it has no ODE solver to set")
    solver = dataclasses.replace(m.solver, method=method or m.solver.method, steps=steps or m.solver.steps,
                                 unrolled=False)
    cfg = dataclasses.replace(ckpt.config, model=dataclasses.replace(m, solver=solver))
    model = build_model(cfg.model)
    model.load_state_dict(ckpt.model.state_dict())
    return Checkpoint(model.to(next(ckpt.model.parameters()).device).eval(), cfg, ckpt.artifact)


def _state_to_cpu(state: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(out: Path, cfg, ema_state: dict, *, step: int, train_state: dict | None,
                    samples=None, replace: bool = False, kind: str = KIND, stage: str = "train",
                    parent: Artifact | None = None, extra: dict | None = None, complete: bool | None = None,
                    state_files: dict[str, dict] | None = None) -> Artifact:
    """Write (or atomically replace) a model artifact at `out` (a checkpoint unless `kind` says else).

    `complete` defaults to step >= cfg.steps; `state_files` are more state dicts (name: tensors) saved beside
    the training state (distillation keeps its round's teacher there)."""
    from safetensors.torch import save_file

    with ArtifactWriter(out, kind=kind, stage=stage, config=to_dict(cfg), parent=parent, replace=replace) as w:
        save_file(_state_to_cpu(ema_state), str(w.dir / WEIGHTS))
        (w.dir / CONFIG).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        if samples is not None:
            save_image_grid(samples, w.dir / "samples.png")
        if train_state is not None:
            save_train_state(w.dir / STATE_DIR, train_state)
            for name, tensors in (state_files or {}).items():
                save_file(_state_to_cpu(tensors), str(w.dir / STATE_DIR / name))
        w.manifest.update(
            signature=model_signature(cfg.model),
            arch=cfg.model.arch,
            train_step=step,
            complete=step >= cfg.steps if complete is None else complete,
            **(extra or {}),
        )
    return w.artifact


def save_train_state(folder: Path, state: dict) -> None:
    """Raw weights and AdamW moments as safetensors; scalars and hyper-parameters as JSON."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(_state_to_cpu(state["model"]), str(folder / "model.safetensors"))
    opt = state["optimizer"]
    tensors = {f"{idx}.{name}": t for idx, st in opt["state"].items() for name, t in st.items()}
    save_file(_state_to_cpu(tensors), str(folder / "optimizer.safetensors"))
    meta = {"step": state["step"], "param_groups": opt["param_groups"]}
    (folder / "state.json").write_text(json.dumps(meta) + "\n")


def _check_train_state(meta: Any, where: str) -> dict:
    """state.json's schema, as save_train_state writes it: the step and AdamW's parameter groups."""
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list):
        raise ArtifactError(f"{where}: not a training state (a table of step and param_groups)")
    check_int(f"{where}: step", meta.get("step"), low=0, high=1 << 62, error=ArtifactError)
    groups = meta["param_groups"]
    if not 1 <= len(groups) <= 10_000:
        raise ArtifactError(f"{where}: param_groups must hold 1 to 10000 groups, got {len(groups)}")
    for i, g in enumerate(groups):
        key = f"{where}: param_groups[{i}]"
        if not isinstance(g, dict) or not isinstance(g.get("params"), list):
            raise ArtifactError(f"{key} must be a table with a list of params")
        for p in g["params"]:
            check_int(f"{key}.params", p, low=0, high=1 << 31, error=ArtifactError)
        for name in ("lr", "eps", "weight_decay"):
            if name in g:
                check_number(f"{key}.{name}", g[name], low=0, error=ArtifactError)
        betas = g.get("betas", [0.9, 0.999])
        if not isinstance(betas, list) or len(betas) != 2:
            raise ArtifactError(f"{key}.betas must be two numbers, got {str(betas)[:60]}")
        for b in betas:
            check_number(f"{key}.betas", b, low=0, high=1, error=ArtifactError)
    return meta


def load_train_state(art: Artifact) -> dict:
    """Read back what save_train_state wrote: model, optimizer state dict and step."""
    from safetensors.torch import load_file

    folder = art.file(STATE_DIR)
    if not (folder / "state.json").is_file():
        raise ArtifactError(f"{art.path} holds no training state to resume from")
    meta = _check_train_state(read_json_record(folder / "state.json", "training state", finite=True),
                              f"{art.path}/{STATE_DIR}/state.json")
    flat = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict[int, dict] = {}
    for key, t in flat.items():
        idx, _, name = key.partition(".")
        if not idx.isdigit() or not name:
            raise ArtifactError(f"{art.path}/{STATE_DIR}/optimizer.safetensors: tensor {key[:60]!r} is not "
                                "<parameter index>.<state name>")
        opt_state.setdefault(int(idx), {})[name] = t
    return {
        "model": load_file(str(folder / "model.safetensors")),
        "ema": load_file(str(art.file(WEIGHTS))),
        "optimizer": {"state": opt_state, "param_groups": meta["param_groups"]},
        "step": meta["step"],
    }
