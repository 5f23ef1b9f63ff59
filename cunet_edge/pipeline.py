"""`pipeline`: a TOML recipe of stages (train-or-load → unroll → prune → export → quantize → bench →
evaluate → report) run in order into one run directory, checked whole before any work.

A recipe is a list of `[[stage]]` tables. Each names its `stage` (the kind of work), a unique
`name` (its output under the run directory), its `input` (or `inputs`: earlier stages' names;
default: the stage just before), and the keys of that stage's config dataclass, e.g.::

    [pipeline]
    threads = 2

    [[stage]]
    stage = "train"
    name = "checkpoint"
    steps = 3600
    [stage.data]
    name = "digits"

    [[stage]]
    stage = "unroll"
    name = "unrolled"

Resuming: a stage that finished leaves a marker (`.pipeline/NAME.json`) holding the hash of
its config and of its inputs' artifact ids. Run again, a stage whose marker and output still
match is skipped; any other is run again from scratch (training resumes from its last save).
Artifacts are written to a temporary folder and renamed into place, so a run killed at any
point, SIGKILL included, leaves no artifact that looks valid but is not.

The run folder is the pipeline's own: `.pipeline/` marks it, and a stage's output is marked
(`.pipeline/owned/NAME`) before the stage writes it. A run removes only what it marked; an `--out`
that holds anything else (the user's folders) is refused before any work, as is one inside an
artifact. One run at a time writes into a run folder (a lock, `.pipeline/lock`). Stages that measure
their inputs record into the metrics.json of the run's own artifacts only: a model a `load` stage
links in from elsewhere is never written to (its measurements are in the stage's result.json).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tomllib

from . import pipeline_stages as stages
from .artifact import MANIFEST, Artifact, check_output_path, write_json_atomic
from .benchmark import BenchConfig
from .checkpoint import TrainConfig, train_config_from_options
from .config import from_dict, to_dict
from .distillation import DistillConfig
from .errors import ArtifactError, ConfigError, CunetEdgeError, OutputPathError
from .evaluation import check_features
from .export.onnx import OnnxExportConfig
from .kinds import MODEL_KINDS, STAGE_IO, StageIO, kind_runtime
from .limits import check_threads, read_text_file
from .pruning import PruneConfig
from .quantize.int8 import QuantizeConfig
from .records import NOT_MEASURED, RESULT
from .report.stage import ReportConfig
from .sampling import EvaluateConfig
from .search import ParetoConfig, SearchConfig, expand_search, run_pareto
from .unrolling import UnrollConfig

__all__ = ["STAGES", "StageDef", "PlannedStage", "Recipe", "load_recipe", "run_pipeline", "stage_hash"]

MARKERS = ".pipeline"


@dataclass(frozen=True)
class StageDef:
    """A stage of a recipe: its config class, its runner, what it takes and makes (its entry of the kinds
    table, `cunet_edge.kinds.STAGE_IO`), and how the pipeline treats it."""

    config: type
    run: Callable[[Any, StageContext], Any]
    io: StageIO
    parse: Callable[..., Any] | None = None  # builds the config from the stage's table (default: from_dict)
    output_kind: Callable[[Any], str] | None = None  # the kind it makes, read from its config (a loaded model)
    many: bool = False  # takes several inputs
    measures_inputs: bool = False  # runs its inputs on their runtimes: needs those backends
    backends: tuple[str, ...] = ()
    always: bool = False  # summaries of what is on disk: cheap, and rerun every time
    resumable: bool = False  # a changed or killed run continues from its last save instead of starting over
    reads_run: bool = False  # summarises the whole run folder: stages a search adds go before it
    check: Callable[[Any], None] | None = None  # checks what its config needs (files, packages) before any work

    @property
    def takes(self) -> tuple[str, ...]:
        return self.io.accepts


def _load_kind(cfg: stages.LoadConfig) -> str:
    """The kind of the model a `load` stage names (checked when the recipe is planned); an import makes a checkpoint."""
    if cfg.imports:
        return STAGE_IO["import"].produces()
    p = cfg.resolve()
    try:
        art = Artifact.load(p, verify=False)
    except ArtifactError as exc:
        raise ConfigError(f"stage load: {exc}") from None
    if art.kind not in MODEL_KINDS:
        raise ConfigError(f"stage load: {p} is an artifact of kind {art.kind!r}; load takes a model "
                          f"({', '.join(MODEL_KINDS)})")
    return art.kind


_ONNX = ("onnx", "onnxscript", "onnxruntime")
STAGES: dict[str, StageDef] = {
    "train": StageDef(TrainConfig, stages.run_train, STAGE_IO["train"], parse=train_config_from_options,
                      resumable=True),
    "load": StageDef(stages.LoadConfig, stages.run_load, STAGE_IO["load"], output_kind=_load_kind),
    "unroll": StageDef(UnrollConfig, stages.run_unroll, STAGE_IO["unroll"]),
    "prune": StageDef(PruneConfig, stages.run_prune, STAGE_IO["prune"], backends=("torch_pruning",)),
    "distill": StageDef(DistillConfig, stages.run_distill, STAGE_IO["distill"]),
    "export": StageDef(OnnxExportConfig, stages.run_export, STAGE_IO["export"], backends=_ONNX),
    "quantize": StageDef(QuantizeConfig, stages.run_quantize, STAGE_IO["quantize"], backends=("onnx", "onnxruntime")),
    "bench": StageDef(BenchConfig, stages.run_bench, STAGE_IO["bench"], many=True, measures_inputs=True),
    "evaluate": StageDef(EvaluateConfig, stages.run_evaluate, STAGE_IO["evaluate"], many=True, measures_inputs=True,
                         check=check_features),
    # Not run (its reason recorded, the run goes on) where TensorRT or a GPU is missing: see _run_stages.
    "tensorrt": StageDef(stages.TensorRTStageConfig, stages.run_tensorrt, STAGE_IO["tensorrt"]),
    "pareto": StageDef(ParetoConfig, run_pareto, STAGE_IO["pareto"], many=True, always=True),
    "report": StageDef(ReportConfig, stages.run_report, STAGE_IO["report"], backends=("matplotlib",), always=True,
                       reads_run=True),
}
# The Python modules a runtime needs (checked before any work for stages that run their inputs).
RUNTIME_BACKENDS = {"onnxruntime": ("onnxruntime",)}
BACKEND_HINTS = {"onnx": 'pip install "cunet-edge[onnx]"', "onnxscript": 'pip install "cunet-edge[onnx]"',
                 "onnxruntime": 'pip install "cunet-edge[onnx]"', "torch_pruning": 'pip install "cunet-edge[prune]"',
                 "matplotlib": 'pip install "cunet-edge[report]"'}
RESERVED = ("stage", "name", "input", "inputs")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings for the whole run: CPU threads for every stage that takes them."""

    threads: int | None = None

    def __post_init__(self):
        if self.threads is not None:
            check_threads(self.threads)


@dataclass(frozen=True)
class PlannedStage:
    """One validated stage: its kind, name, input stage names, parsed config and output kind."""

    stage: str
    name: str
    inputs: tuple[str, ...]
    config: Any
    makes: str | None

    @property
    def definition(self) -> StageDef:
        return STAGES[self.stage]


@dataclass(frozen=True)
class Recipe:
    path: Path
    settings: PipelineConfig
    stages: tuple[PlannedStage, ...] = field(default=())


def _read_toml(path: Path) -> dict:
    if not os.path.lexists(path):  # False, too, for a name the file system cannot hold
        raise ConfigError(f"recipe {str(path)[:200]} does not exist")
    text = read_text_file(path, "recipe")  # a regular UTF-8 file of bounded size (a FIFO would hang)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {path} is not TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"recipe {path} is not TOML: nested too deep") from None


def _parse_config(spec: dict, definition: StageDef, where: str) -> Any:
    """The stage's config dataclass from its keys (through the stage's own parser where it has one)."""
    raw = {k: v for k, v in spec.items() if k not in RESERVED}
    try:
        if definition.parse is not None:
            return definition.parse(base=raw)
        return from_dict(definition.config, raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _stage_inputs(spec: dict, where: str, previous: str | None) -> tuple[str, ...]:
    if "input" in spec and "inputs" in spec:
        raise ConfigError(f"{where}: give input or inputs, not both")
    value = spec.get("inputs", spec.get("input", previous))
    names = [value] if isinstance(value, str) else value
    if names is None:
        return ()
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: input(s) must be a stage name or a list of them, got {value!r}")
    return tuple(names)


def _plan_stage(spec: Any, i: int, made: dict[str, str | None], previous: str | None) -> PlannedStage:
    where = f"stage {i + 1}"
    if not isinstance(spec, dict) or not isinstance(spec.get("stage"), str):
        raise ConfigError(f"{where}: each [[stage]] needs stage = \"NAME\" (one of: {', '.join(STAGES)})")
    kind = spec["stage"]
    if kind not in STAGES:
        raise ConfigError(f"{where}: unknown stage {kind!r}; valid stages: {', '.join(STAGES)}")
    name = spec.get("name", kind)
    where = f"stage {name!r} ({kind})"
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{where}: name must be a plain folder name, got {name!r}")
    if name in made:
        raise ConfigError(f"{where}: name {name!r} is used by an earlier stage")
    d = STAGES[kind]
    inputs = _stage_inputs(spec, where, previous) if d.takes else ()
    if d.takes and not inputs:
        raise ConfigError(f"{where}: needs an input stage, and none comes before it")
    if len(inputs) > 1 and not d.many:
        raise ConfigError(f"{where}: takes one input, got {len(inputs)}")
    for src in inputs:
        if src not in made:
            raise ConfigError(f"{where}: input {src!r} is not an earlier stage")
        if made[src] not in d.takes:
            raise ConfigError(f"{where}: input {src!r} makes {made[src] or 'no artifact'}; {kind} takes "
                              f"{' or '.join(d.takes)}")
    config = _parse_config(spec, d, where)
    if d.check is not None:
        try:
            d.check(config)
        except CunetEdgeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    makes = d.output_kind(config) if d.output_kind else d.io.produces(made[inputs[0]] if inputs else None)
    return PlannedStage(kind, name, inputs, config, makes)


def _check_backends(stages: tuple[PlannedStage, ...], made: dict[str, str | None]) -> None:
    for s in stages:
        needs = list(s.definition.backends)
        if s.definition.measures_inputs:
            needs += [b for src in s.inputs for b in RUNTIME_BACKENDS.get(kind_runtime(made[src]), ())]
        for module in needs:
            if importlib.util.find_spec(module) is None:
                hint = BACKEND_HINTS.get(module, f"pip install {module}")
                raise ConfigError(f"stage {s.name!r} ({s.stage}) needs {module}, which is not installed: {hint}")


def load_recipe(path: str | Path, *, search: bool = False) -> Recipe:
    """Parse and check a whole recipe: stage names, config keys and types, kinds lining up, backends.

    With `search`, the recipe's [search] table is expanded into stages (before any report stage).
    """
    path = Path(path)
    data = _read_toml(path)
    unknown = sorted(set(data) - {"pipeline", "stage", "search"})
    if unknown:
        raise ConfigError(f"recipe {path}: unknown table {unknown[0]!r}; a recipe has [pipeline], [[stage]] "
                          f"and [search] tables")
    settings = from_dict(PipelineConfig, data.get("pipeline", {}), "pipeline")
    specs = data.get("stage")
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"recipe {path} has no stages: add [[stage]] tables")
    grid = from_dict(SearchConfig, data["search"], "search") if "search" in data else None
    if search:
        if grid is None:
            raise ConfigError(f"recipe {path} has no [search] table to search over")
        at = next((i for i, sp in enumerate(specs) if isinstance(sp, dict) and sp.get("stage") in STAGES
                   and STAGES[sp["stage"]].reads_run), len(specs))
        specs = specs[:at] + expand_search(grid) + specs[at:]
    made: dict[str, str | None] = {}
    stages, previous = [], None
    for i, spec in enumerate(specs):
        s = _plan_stage(spec, i, made, previous)
        made[s.name] = s.makes
        stages.append(s)
        previous = s.name if s.makes is not None else previous
    recipe = Recipe(path, settings, tuple(stages))
    _check_backends(recipe.stages, made)
    return recipe



def stage_hash(stage: PlannedStage, input_ids: list[str | None]) -> str:
    """Hash of what a stage's output depends on: its kind, config and its inputs' artifact ids."""
    blob = json.dumps({"stage": stage.stage, "config": to_dict(stage.config), "inputs": input_ids}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _marker(run_dir: Path, name: str) -> Path:
    return run_dir / MARKERS / f"{name}.json"


def _read_marker(run_dir: Path, name: str) -> dict | None:
    try:
        return json.loads(_marker(run_dir, name).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_marker(run_dir: Path, name: str, record: dict) -> None:
    write_json_atomic(_marker(run_dir, name), record)


def _is_done(run_dir: Path, stage: PlannedStage, h: str) -> bool:
    """A stage is done if its marker has this hash and its output artifact (or the link `load` made to one)
    is still intact."""
    marker = _read_marker(run_dir, stage.name)
    if stage.definition.always or not marker or marker.get("hash") != h or marker.get("not_run"):
        return False  # a stage not run here is tried again: this machine may have what it lacked
    if stage.makes is None:
        return True
    try:
        return Artifact.load(run_dir / stage.name).manifest.get("id") == marker.get("id")
    except ArtifactError:
        return False


OWNED = "owned"
LOCK = "lock"


def _owned(run_dir: Path, name: str) -> bool:
    """Whether the pipeline wrote `name` in this run folder: it marked it, or (runs of older versions) its stage
    finished with a marker."""
    return (run_dir / MARKERS / OWNED / name).is_file() or _marker(run_dir, name).is_file()


def _check_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """Refuse, before any work, a run folder that is an artifact, holds what is not a pipeline run's, or has a
    stage's output name taken by something the pipeline did not write."""
    if not run_dir.exists():
        return
    if (run_dir / MANIFEST).is_file():
        raise OutputPathError(f"--out {run_dir} is an artifact; a run folder must be a new or a pipeline's folder")
    entries = sorted(p.name for p in run_dir.iterdir())
    if entries and not (run_dir / MARKERS).is_dir():
        raise OutputPathError(f"--out {run_dir} is not empty and is not a pipeline run folder (it holds "
                              f"{', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); choose a new or "
                              f"empty folder")
    for s in recipe.stages:
        if os.path.lexists(run_dir / s.name) and not _owned(run_dir, s.name):
            raise OutputPathError(f"{run_dir / s.name} was not written by this pipeline; stage {s.name!r} would "
                                  f"replace it: move it away or rename the stage")


def _mark_owned(run_dir: Path, name: str) -> None:
    mark = run_dir / MARKERS / OWNED / name
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()


def _clear_leftovers(run_dir: Path, name: str, *, keep_output: bool) -> None:
    """Remove what a killed run of this stage left: temporary folders, and a stale output (only one the pipeline
    marked as its own: `_check_run_dir` refused the run otherwise)."""
    for tmp in run_dir.glob(f".{name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in run_dir.glob(f".{name}.old-*"):
        shutil.rmtree(old, ignore_errors=True)
    out = run_dir / name
    if os.path.lexists(out) and not _owned(run_dir, name):
        raise OutputPathError(f"{out} was not written by this pipeline; move it away or rename the stage")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        out.unlink()
    elif out.exists() and not keep_output:
        shutil.rmtree(out)


@dataclass
class StageContext:
    """What a stage's runner gets besides its config: the run folder, its output path, its inputs."""

    run_dir: Path
    out: Path
    inputs: list[Any]  # Artifact per input stage
    settings: PipelineConfig
    progress: bool = True


def run_pipeline(path: str | Path, run_dir: str | Path, *, search: bool = False, progress: bool = True,
                 echo: Callable[[str], None] = print) -> dict:
    """Run a recipe into `run_dir`, skipping stages already done with the same hash; a summary dict."""
    from filelock import FileLock, Timeout

    recipe = load_recipe(path, search=search)
    run_dir = check_output_path(run_dir, exist_ok=True)
    _check_run_dir(run_dir, recipe)
    (run_dir / MARKERS).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / MARKERS / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputPathError(f"another pipeline run is writing into {run_dir}; wait for it to finish") from None
    try:
        _check_run_dir(run_dir, recipe)  # again, now that no other run can change it
        return _run_stages(recipe, run_dir, progress, echo)
    finally:
        lock.release()


def _run_stages(recipe: Recipe, run_dir: Path, progress: bool, echo: Callable[[str], None]) -> dict:
    outputs: dict[str, Any] = {}
    not_run: dict[str, str] = {}  # stage name -> why it was not run here
    summary, t_all = [], time.perf_counter()
    for i, s in enumerate(recipe.stages, 1):
        inputs = [outputs[n] for n in s.inputs]
        h = stage_hash(s, [a.manifest.get("id") if a is not None else None for a in inputs])
        label = f"[{i}/{len(recipe.stages)}] {s.name} ({s.stage})"
        out = run_dir / s.name
        if _is_done(run_dir, s, h):
            outputs[s.name] = _stage_output(s, out)
            echo(f"{label}: done before, same config and inputs ({h}): skipped")
            summary.append({"name": s.name, "stage": s.stage, "hash": h, "skipped": True, "seconds": 0.0})
            continue
        marker = _read_marker(run_dir, s.name)
        resumable = s.definition.resumable and (marker is None or marker.get("hash") == h)
        _clear_leftovers(run_dir, s.name, keep_output=resumable)
        _mark_owned(run_dir, s.name)
        echo(f"{label}: running")
        t0 = time.perf_counter()
        ctx = StageContext(run_dir, out, inputs, recipe.settings, progress)
        missing = [n for n in s.inputs if n in not_run]
        try:
            if missing:
                raise stages.NotRunHere(f"its input {missing[0]} was not run here ({not_run[missing[0]]})")
            result = s.definition.run(s.config, ctx)
        except stages.NotRunHere as exc:
            not_run[s.name] = str(exc)
            _record_not_run(run_dir, s, h, str(exc))
            echo(f"{label}: not run here: {exc}")
            summary.append({"name": s.name, "stage": s.stage, "hash": h, "skipped": False, "seconds": 0.0,
                            "not_run": str(exc)})
            outputs[s.name] = None
            continue
        seconds = time.perf_counter() - t0
        outputs[s.name] = result if isinstance(result, Artifact) else None
        _write_marker(run_dir, s.name, {"hash": h, "stage": s.stage, "seconds": seconds,
                                        "id": result.manifest.get("id") if isinstance(result, Artifact) else None,
                                        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        echo(f"{label}: finished in {seconds:.1f} s ({i}/{len(recipe.stages)} stages, "
             f"{_clock(time.perf_counter() - t_all)} so far)")
        summary.append({"name": s.name, "stage": s.stage, "hash": h, "skipped": False, "seconds": seconds})
    total = time.perf_counter() - t_all
    result = {"recipe": str(recipe.path), "run_dir": str(run_dir), "stages": summary, "seconds": total}
    write_json_atomic(run_dir / MARKERS / "summary.json", result)
    return result


def _record_not_run(run_dir: Path, stage: PlannedStage, h: str, reason: str) -> None:
    """A stage not run here: its folder holds only result.json saying why (the report shows it as not measured
    here), and its marker makes the next run try it again."""
    out = run_dir / stage.name
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)  # anything the stage began (a pipeline-owned folder: _clear_leftovers checked)
    write_json_atomic(out / RESULT, {"stage": stage.stage, "name": stage.name, "inputs": list(stage.inputs),
                                     NOT_MEASURED: reason})
    _write_marker(run_dir, stage.name, {"hash": h, "stage": stage.stage, "not_run": reason,
                                        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def _stage_output(stage: PlannedStage, out: Path):
    return None if stage.makes is None else Artifact.load(out)
