"""The pipeline's stage runners: each calls the library function its CLI command calls.

A runner takes the stage's parsed config and a `StageContext` (output path, input artifacts,
run-wide settings) and returns the artifact it wrote, or None for stages that measure their
inputs in place (bench and evaluate write each input's metrics.json and a result.json of their own).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .artifact import Artifact, write_json_atomic
from .benchmark import BenchConfig, BenchTarget, bench, format_bench
from .distillation import distill
from .errors import BackendMissingError, ConfigError
from .evaluation import evaluate_checkpoint, format_evaluation
from .export.onnx import export_onnx
from .export.tensorrt import EngineConfig, build_engine
from .importing import SPEC_TABLES, ImportSpec, import_model, load_import_spec, parse_import_spec, spec_fingerprint
from .kinds import runtime_for
from .pruning import prune
from .quantize.int8 import format_side_by_side, quantize_int8
from .records import RESULT, bench_section, write_metrics
from .report.stage import report
from .runtimes.engines import current_platform
from .sampling import EvaluateConfig
from .training import train
from .unrolling import unroll

__all__ = ["LoadConfig", "run_train", "run_load", "run_unroll", "run_prune", "run_distill", "run_export",
           "run_quantize", "run_bench", "run_evaluate", "run_report", "TensorRTStageConfig", "run_tensorrt",
           "NotRunHere"]


class NotRunHere(Exception):
    """A stage this machine cannot run (no TensorRT, no GPU): the pipeline records why and goes on."""


@dataclass(frozen=True)
class LoadConfig:
    """A model to start from instead of training: an artifact of ours (`path`), or a model trained elsewhere,
    imported (`spec`: an import spec file, or its tables inline: `[stage.network]`, `[stage.weights]`, ...).

    `path`, `spec` and `code_dir` are relative to the working folder; paths inside a spec file to its folder,
    and paths in inline tables to the working folder. An import is checked whole when the recipe is planned,
    and `fingerprint` (the hash of the spec and of every file it reads) makes the stage run again when one changes.
    """

    path: str = ""
    spec: str = ""
    code_dir: str = ""
    network: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None
    diffusion: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    fingerprint: str = field(default="", init=False)

    def __post_init__(self):
        inline = any(getattr(self, k) is not None for k in SPEC_TABLES)
        if (bool(self.path), bool(self.spec), inline).count(True) != 1:
            raise ConfigError("load needs one of: path = \"CHECKPOINT_DIR\" (a model artifact), spec = \"IMPORT.toml\" "
                              "(a model to import), or the import spec's tables ([stage.network], [stage.weights], ...)")
        if self.code_dir and self.path:
            raise ConfigError("load: code_dir is for imports (spec or [stage.network]), not for path")
        if not self.path:
            object.__setattr__(self, "fingerprint", spec_fingerprint(self.import_spec()))

    @property
    def imports(self) -> bool:
        return not self.path

    def resolve(self) -> Path:
        return Path(self.path).expanduser()

    def import_spec(self) -> ImportSpec:
        """The import spec this stage names (a file) or holds (inline tables), checked."""
        if self.spec:
            spec = load_import_spec(self.spec)
        else:
            tables = {k: getattr(self, k) for k in SPEC_TABLES if getattr(self, k) is not None}
            spec = parse_import_spec(tables, Path.cwd(), where="load stage's import tables")
        return spec.with_code_dir(self.code_dir) if self.code_dir else spec


def _threads(ctx) -> None:
    if ctx.settings.threads:
        import torch

        torch.set_num_threads(ctx.settings.threads)


def run_train(cfg, ctx):
    return train(cfg, ctx.out, progress=ctx.progress, threads=ctx.settings.threads)


def run_load(cfg: LoadConfig, ctx):
    """The model, verified; a link to it in the run folder makes it part of the run (and of its report).

    An import writes the imported checkpoint into the run folder itself."""
    if cfg.imports:
        art = import_model(cfg.import_spec(), ctx.out)
        print(f"  imported {art.manifest['import']['network']} ({art.manifest['import']['source']})")
        return art
    art = Artifact.load(cfg.resolve())
    if ctx.out.is_symlink():
        ctx.out.unlink()
    ctx.out.symlink_to(art.path.resolve(), target_is_directory=True)
    return art


def run_unroll(cfg, ctx):
    _threads(ctx)
    return unroll(ctx.inputs[0].path, cfg, ctx.out)


def run_prune(cfg, ctx):
    _threads(ctx)
    return prune(ctx.inputs[0].path, cfg, ctx.out, progress=ctx.progress, threads=ctx.settings.threads)


def run_distill(cfg, ctx):
    _threads(ctx)
    return distill(ctx.inputs[0].path, cfg, ctx.out, progress=ctx.progress, threads=ctx.settings.threads)


def run_export(cfg, ctx):
    _threads(ctx)
    return export_onnx(ctx.inputs[0].path, cfg, ctx.out)


def run_quantize(cfg, ctx):
    _threads(ctx)
    art = quantize_int8(ctx.inputs[0].path, cfg, ctx.out, progress=ctx.progress)
    print(format_side_by_side(art.manifest["precisions"]))
    return art


@dataclass(frozen=True)
class TensorRTStageConfig:
    """Build a TensorRT engine from the input ONNX (fp32, fp16, or the Q/DQ INT8 of `quantize target =
    "tensorrt"`), then bench it and evaluate it on TensorRT, into the engine's metrics.json.

    Engine: `max_batch` (its profile is 1..max_batch), `workspace_mb`. Bench: batch 1, `sampler_steps` per image.
    Evaluate: FID/KID of `n` images (0: no evaluation) at `steps` sampler steps. Where TensorRT or a GPU is
    missing the stage is not run; the pipeline records why, and the report says so.
    """

    max_batch: int = 16
    workspace_mb: int = 1024
    sampler_steps: int = 16
    n: int = 1000
    steps: int = 16

    def __post_init__(self):
        # The configs it hands on check their own fields: a bad value is refused when the recipe is planned.
        self.engine(), self.bench(), self.evaluate()

    def engine(self) -> EngineConfig:
        return EngineConfig(max_batch=self.max_batch, workspace_mb=self.workspace_mb)

    def bench(self) -> BenchConfig:
        return BenchConfig(sampler_steps=self.sampler_steps)

    def evaluate(self) -> EvaluateConfig | None:
        return EvaluateConfig(n=self.n, steps=self.steps) if self.n else None


def run_tensorrt(cfg: TensorRTStageConfig, ctx):
    """The engine of the input ONNX on this machine's GPU, benched and evaluated there; NotRunHere (with the
    reason) where TensorRT does not import or no CUDA GPU is visible."""
    try:
        current_platform()
    except (BackendMissingError, ConfigError) as exc:
        raise NotRunHere(str(exc)) from None
    engine = build_engine(ctx.inputs[0].path, cfg.engine(), ctx.out)
    target = BenchTarget(str(engine.path), "tensorrt")
    result = bench([target], cfg.bench(), progress=ctx.progress, record=False)
    write_metrics(engine.path, bench_section(result["results"][0]), result["results"][0])
    print(format_bench(result))
    if cfg.evaluate() is not None:
        m = evaluate_checkpoint(engine, cfg.evaluate(), progress=ctx.progress, runtime="tensorrt", record=True)
        print(f"  {engine.path.name}: {format_evaluation(m)}  [tensorrt]")
    return engine


def _in_run(art: Artifact, ctx) -> bool:
    """Whether an input artifact lies in the run folder (links resolved): only those get metrics.json sections; a
    model a `load` stage linked in from elsewhere is never written to (its results are in the stage's result.json)."""
    return ctx.run_dir.resolve() in art.path.resolve().parents


def run_bench(cfg, ctx):
    """All inputs timed side by side in one bench run, each on its kind's runtime."""
    if cfg.threads is None and ctx.settings.threads:
        cfg = replace(cfg, threads=ctx.settings.threads)
    targets = [BenchTarget(str(a.path), runtime_for(a.kind, a.path)) for a in ctx.inputs]
    result = bench(targets, cfg, progress=ctx.progress, record=False)
    for row, a in zip(result["results"], ctx.inputs):
        if _in_run(a, ctx):
            write_metrics(a.path, bench_section(row), row)
    print(format_bench(result))
    write_json_atomic(ctx.out / RESULT, result)
    return None


def run_evaluate(cfg, ctx):
    """FID/KID of each input's samples (stored in its metrics.json), on its kind's runtime."""
    _threads(ctx)
    rows = []
    for a in ctx.inputs:
        runtime = runtime_for(a.kind, a.path)
        options = {"threads": ctx.settings.threads} if runtime == "onnxruntime" and ctx.settings.threads else {}
        m = evaluate_checkpoint(a, cfg, progress=ctx.progress, runtime=runtime, record=_in_run(a, ctx), **options)
        print(f"  {a.path.name}: {format_evaluation(m)}  [{runtime}]")
        rows.append(m)
    write_json_atomic(ctx.out / RESULT, {"results": rows})
    return None


def run_report(cfg, ctx):
    """The report over every artifact in the run folder, into the stage's own folder."""
    report(ctx.run_dir, cfg, ctx.out)
    print(f"  report: {ctx.out / 'report.html'}")
    return None
