"""The one table of artifact kinds, and of what each stage accepts and produces.

Every command, stage, runner and the pipeline's recipe check read these tables; nothing else
lists kinds. A kind names what the artifact holds and which runtime runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ArtifactError, ConfigError

__all__ = ["Kind", "KINDS", "MODEL_KINDS", "ONNX_KINDS", "RUNNABLE_KINDS", "StageIO", "STAGE_IO", "runtime_for",
           "kind_runtime", "check_kind_files", "kinds_run_by"]


@dataclass(frozen=True)
class Kind:
    """An artifact kind: what it holds, and the runtime that runs it (None: nothing runs it)."""

    holds: str
    runtime: str | None
    files: tuple[str, ...] = ()  # payload files every artifact of the kind holds (its manifest must list them)


_TORCH_FILES = ("config.json", "model.safetensors")
KINDS: dict[str, Kind] = {
    "checkpoint": Kind("a torch model as config.json + model.safetensors, its ODE blocks on torchdiffeq", "torch",
                       _TORCH_FILES),
    "unrolled": Kind("a torch model whose ODE solvers are baked in as explicit fixed steps", "torch", _TORCH_FILES),
    "pruned": Kind("an unrolled torch model with channels removed", "torch", _TORCH_FILES),
    "onnx": Kind("an ONNX model (fp32 or fp16) of an unrolled or pruned model", "onnxruntime", ("model.onnx",)),
    "onnx-int8": Kind("an ONNX model with INT8 Q/DQ nodes", "onnxruntime", ("model.onnx",)),
    "tensorrt-engine": Kind("a serialized TensorRT engine, tied to the GPU and TensorRT that built it", "tensorrt",
                            ("engine.plan",)),
    "torch-tensorrt": Kind("a torch-tensorrt compiled program (torch.export)", "torch-tensorrt", ("model.ep",)),
}
# Kinds that hold a torch model as config.json + model.safetensors.
MODEL_KINDS = tuple(k for k, v in KINDS.items() if v.runtime == "torch")
ONNX_KINDS = tuple(k for k, v in KINDS.items() if v.runtime == "onnxruntime")
# What runs on this machine's CPU runtimes (torch, ONNX Runtime): what bench/evaluate can take anywhere.
RUNNABLE_KINDS = MODEL_KINDS + ONNX_KINDS


@dataclass(frozen=True)
class StageIO:
    """What a stage accepts (input kinds; () for none) and produces (output kind for each input kind;
    `makes` when it is the same for all; None: no artifact), and what it writes when it makes no artifact."""

    accepts: tuple[str, ...] = ()
    makes: str | None = None
    by_input: dict[str, str] = field(default_factory=dict)
    writes: str | None = None  # e.g. "metrics" (into its inputs' metrics.json) or "report" (report files)

    def produces(self, input_kind: str | None = None) -> str | None:
        return self.by_input.get(input_kind, self.makes) if input_kind is not None else self.makes


STAGE_IO: dict[str, StageIO] = {
    "train": StageIO(makes="checkpoint"),
    "load": StageIO(),  # takes no input stage: the model it names is one of MODEL_KINDS, and it makes that kind
    # (or, importing a model trained elsewhere, what `import` makes)
    "import": StageIO(makes="checkpoint"),
    "unroll": StageIO(("checkpoint",), "unrolled"),
    # Pruning keeps the model's form: a checkpoint stays a checkpoint, an unrolled model becomes `pruned`.
    "prune": StageIO(MODEL_KINDS, by_input={"checkpoint": "checkpoint", "unrolled": "pruned", "pruned": "pruned"}),
    "sweep": StageIO(("checkpoint",), writes="a table"),
    # Progressive distillation keeps the teacher's architecture and solver: a checkpoint for fewer DDIM steps.
    "distill": StageIO(("checkpoint",), "checkpoint"),
    # A checkpoint exports only when its network is already static (no torchdiffeq solve): a U-Net, or an
    # imported network without ODE blocks; export_onnx checks.
    "export": StageIO(MODEL_KINDS, "onnx"),
    "export-tensorrt": StageIO(ONNX_KINDS, "tensorrt-engine"),
    # The pipeline's `tensorrt` stage: the engine, benched and evaluated on this machine's GPU.
    "tensorrt": StageIO(ONNX_KINDS, "tensorrt-engine"),
    "export-torch-tensorrt": StageIO(("unrolled", "pruned"), "torch-tensorrt"),
    "quantize": StageIO(("onnx",), "onnx-int8"),
    "sample": StageIO(tuple(KINDS), writes="images"),  # every kind runs on some runtime
    "evaluate": StageIO(tuple(KINDS), writes="metrics"),
    "bench": StageIO(tuple(KINDS), writes="metrics"),
    "inspect": StageIO(MODEL_KINDS),
    "estimate": StageIO(ONNX_KINDS),
    "deploy": StageIO(ONNX_KINDS),
    "pareto": StageIO(RUNNABLE_KINDS, writes="metrics"),
    "report": StageIO(writes="report"),  # reads the whole run folder
}


def runtime_for(kind: str, where: object = "the artifact") -> str:
    """The runtime that runs artifacts of `kind`, or a ConfigError saying none does."""
    spec = KINDS.get(kind)
    if spec is None or spec.runtime is None:
        raise ConfigError(f"{where} is an artifact of kind {kind!r}, which no runtime runs")
    return spec.runtime


def check_kind_files(manifest: dict, where: object) -> None:
    """Refuse an artifact whose manifest does not list the files its kind holds (a kind that does not match the
    files present), in one line, before a runner or loader opens a file that is not there."""
    spec = KINDS.get(manifest.get("kind"))
    missing = [f for f in (spec.files if spec else ()) if f not in manifest.get("files", {})]
    if missing:
        raise ArtifactError(f"{where} is an artifact of kind {manifest['kind']!r}, which holds "
                            f"{', '.join(spec.files)}; its manifest lists no {', '.join(missing)}")


def kind_runtime(kind: str) -> str | None:
    """The runtime of `kind`, or None when nothing runs it (or the kind is unknown)."""
    spec = KINDS.get(kind)
    return spec.runtime if spec else None


def kinds_run_by(runtime: str) -> tuple[str, ...]:
    """The kinds a runtime runs."""
    return tuple(k for k, v in KINDS.items() if v.runtime == runtime)

