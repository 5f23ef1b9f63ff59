"""Checkpoint artifacts: EMA weights (safetensors) + config.json, and the state to resume training.

Only safetensors and JSON are ever read back: nothing a user hands in is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import Artifact, ArtifactWriter
from .config import to_dict
from .errors import ArtifactError, ConfigError

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint", "load_train_state", "model_signature", "MODEL_KINDS",
           "with_solver", "read_train_config"]

KIND = "checkpoint"
# Artifacts that hold a torch model as config.json + model.safetensors.
MODEL_KINDS = ("checkpoint", "unrolled", "pruned")
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE_DIR = "train_state"


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


def read_train_config(art: Artifact):
    from .training import train_config_from_dict

    try:
        data = json.loads(art.file(CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{art.path}/{CONFIG} is unreadable: {exc}") from None
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


def load_checkpoint(path: str | Path, device: str = "cpu", kinds=MODEL_KINDS) -> Checkpoint:
    """Open a model artifact, rebuild its model from config.json and load its (EMA) weights."""
    from .models import build_model

    art = Artifact.load(path, kinds=kinds)
    cfg = read_train_config(art)
    model = build_model(cfg.model)
    load_weights(model, art.file(WEIGHTS), "checkpoint weights")
    return Checkpoint(model.to(device).eval(), cfg, art)


def with_solver(ckpt: Checkpoint, method: str | None = None, steps: int | None = None) -> Checkpoint:
    """The same weights run with another ODE solver (torchdiffeq); unrolled artifacts refuse any but their own."""
    import dataclasses

    from .models import build_model
    from .unrolling import check_solver_request

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
                    parent: Artifact | None = None, extra: dict | None = None) -> Artifact:
    """Write (or atomically replace) a model artifact at `out` (a checkpoint unless `kind` says else)."""
    from safetensors.torch import save_file

    from .data import save_image_grid

    with ArtifactWriter(out, kind=kind, stage=stage, config=to_dict(cfg), parent=parent, replace=replace) as w:
        save_file(_state_to_cpu(ema_state), str(w.dir / WEIGHTS))
        (w.dir / CONFIG).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        if samples is not None:
            save_image_grid(samples, w.dir / "samples.png")
        if train_state is not None:
            _save_train_state(w.dir / STATE_DIR, train_state)
        w.manifest.update(
            signature=model_signature(cfg.model),
            arch=cfg.model.arch,
            train_step=step,
            complete=step >= cfg.steps,
            **(extra or {}),
        )
    return w.artifact


def _save_train_state(folder: Path, state: dict) -> None:
    """Raw weights and AdamW moments as safetensors; scalars and hyper-parameters as JSON."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(_state_to_cpu(state["model"]), str(folder / "model.safetensors"))
    opt = state["optimizer"]
    tensors = {f"{idx}.{name}": t for idx, st in opt["state"].items() for name, t in st.items()}
    save_file(_state_to_cpu(tensors), str(folder / "optimizer.safetensors"))
    meta = {"step": state["step"], "param_groups": opt["param_groups"]}
    (folder / "state.json").write_text(json.dumps(meta) + "\n")


def load_train_state(art: Artifact) -> dict:
    """Read back what _save_train_state wrote: model, optimizer state dict and step."""
    from safetensors.torch import load_file

    folder = art.file(STATE_DIR)
    if not (folder / "state.json").is_file():
        raise ArtifactError(f"{art.path} holds no training state to resume from")
    meta = json.loads((folder / "state.json").read_text())
    flat = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict[int, dict] = {}
    for key, t in flat.items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = t
    return {
        "model": load_file(str(folder / "model.safetensors")),
        "ema": load_file(str(art.file(WEIGHTS))),
        "optimizer": {"state": opt_state, "param_groups": meta["param_groups"]},
        "step": meta["step"],
    }
