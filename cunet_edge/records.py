"""Manifest records and metrics sections, defined once: the writer and every reader use these.

An artifact's `manifest.json` carries, besides what `ArtifactWriter` writes, records that stages
add and later stages, the report and the device tools read:

- `solver`: the solver baked in at unroll time (`solver_record`), carried on by every later stage;
  `check_solver_request` refuses to run such an artifact with other solver settings.
- `pruning`: what `prune` removed (`pruning_record` reads it; `prune_macs_ratio` the headline).
- `drift`: what a stage changed against its parent (`recorded_drift` reads it, or export's `verification`).
- `precision`: fp32, fp16 or int8 (the quantize stage's record sits at the top level of its manifest).

An artifact's `metrics.json` holds one section per measurement: `bench_section` and
`evaluate_section` name them, `BENCH_SECTION` / `EVALUATE_SECTION` parse them back, and
`write_metrics` / `read_metrics` are the only code that touches the file. Updates are a read-merge-write
under an exclusive lock (`filelock`, on `.metrics.json.lock` beside it), so two processes measuring one
artifact at once (two bench runs, a bench and an evaluate) both keep their sections.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .artifact import write_json_atomic
from .errors import ConfigError, OutputPathError

__all__ = ["SOLVER", "TRAINED_SOLVER", "PRUNING", "DRIFT", "PRECISION", "VERIFICATION", "METRICS", "RESULT",
           "NOT_MEASURED", "solver_record", "check_solver_request", "pruning_record", "prune_macs_ratio",
           "recorded_drift", "precision_of", "bench_section", "evaluate_section", "BENCH_SECTION", "EVALUATE_SECTION",
           "write_metrics", "read_metrics", "METRICS_LOCK", "evaluation_features", "kid_text", "sampler_setting",
           "split_sampler_setting"]

SOLVER = "solver"
TRAINED_SOLVER = "trained_solver"
PRUNING = "pruning"
DRIFT = "drift"
PRECISION = "precision"
VERIFICATION = "verification"
METRICS = "metrics.json"
# A pipeline stage that measures in place (bench, evaluate, pareto) writes its own result here, in its folder.
RESULT = "result.json"
# The key of a stage's result.json when the stage could not run on this machine (no TensorRT, no GPU): its reason.
NOT_MEASURED = "not_measured"
METRICS_LOCK = ".metrics.json.lock"
# How long a writer waits for another process's metrics.json update (each takes milliseconds).
METRICS_LOCK_TIMEOUT_S = 60.0


# --- solver --------------------------------------------------------------------------------------------


def solver_record(method: str, steps: int, nfe_per_step: int, ode_blocks: int) -> dict:
    """What an unrolled artifact records of its baked-in solver (checked by every later stage)."""
    per_block = nfe_per_step * steps
    return {"method": method, "steps": steps, "nfe_per_block": per_block, "nfe_per_call": per_block * ode_blocks,
            "ode_blocks": ode_blocks}


def check_solver_request(manifest: dict, where, method: str | None = None, steps: int | None = None) -> None:
    """Refuse to run an artifact whose solver was baked in at unroll time with other solver settings.

    Every artifact made from an unrolled one carries the same `solver` record in its manifest,
    so ONNX files, quantized models and engines refuse a mismatched request the same way.
    """
    rec = manifest.get(SOLVER)
    if not isinstance(rec, dict) or "method" not in rec or "steps" not in rec or (method is None and steps is None):
        return  # nothing baked in to compare against
    want = (method or rec["method"], steps or rec["steps"])
    if want != (rec["method"], rec["steps"]):
        raise ConfigError(
            f"{where} has its solver baked in at unroll time ({rec['method']} x{rec['steps']}); it cannot run "
            f"{want[0]} x{want[1]}: unroll the checkpoint again with --method {want[0]} --steps {want[1]}"
        )


# --- pruning, drift, precision ----------------------------------------------------------------------------


def pruning_record(manifest: dict) -> dict | None:
    """The `pruning` record of a pruned artifact (None for any other)."""
    rec = manifest.get(PRUNING)
    return rec if isinstance(rec, dict) else None


def prune_macs_ratio(manifest: dict) -> float | None:
    """MACs kept / MACs before, from a `pruning` record (params ratio if MACs were not counted)."""
    rec = pruning_record(manifest)
    if rec is None:
        return None
    for key in ("macs_ratio", "params_ratio"):
        if isinstance(rec.get(key), (int, float)):
            return float(rec[key])
    return None


def recorded_drift(manifest: dict) -> dict | None:
    """What a stage recorded of its own drift against its parent: ε relative error (and sample PSNR)."""
    drift = manifest.get(DRIFT)
    if isinstance(drift, dict) and isinstance(drift.get("eps_rel_err"), (int, float)):
        psnr = drift.get("sample_psnr_vs_parent")  # identical samples: infinite, written as "inf" (strict JSON)
        return {"eps_rel_err": drift["eps_rel_err"], "sample_psnr_db": math.inf if psnr == "inf" else psnr,
                "against": drift.get("reference", "parent")}
    ver = manifest.get(VERIFICATION)
    if isinstance(ver, dict) and isinstance(ver.get("rel_err"), (int, float)):
        return {"eps_rel_err": ver["rel_err"], "sample_psnr_db": None, "against": ver.get("reference", "parent")}
    return None


def precision_of(manifest: dict) -> str:
    """The numeric precision an artifact runs at (fp32 unless a stage recorded another)."""
    return manifest.get(PRECISION, "fp32")


# --- metrics.json sections --------------------------------------------------------------------------------

# `bench:RUNTIME:bB:SAMPLER-STEPS` (older runs: without the sampler), `evaluate:SAMPLER-STEPS` (and the
# latest evaluation again as `evaluate`); a timestep spacing other than uniform is appended: `SAMPLER-STEPS-SPACING`.
_SAMPLER = r"(?P<sampler>[a-z][a-z0-9]*)-(?P<steps>\d+)(?:-(?P<spacing>[a-z]+))?"
BENCH_SECTION = re.compile(r"bench:(?P<runtime>[\w.-]+):b(?P<batch>\d+)(?::" + _SAMPLER + ")?")
EVALUATE_SECTION = re.compile(r"evaluate(?::" + _SAMPLER + ")?")


def _spacing_suffix(spacing: str | None) -> str:
    return f"-{spacing}" if spacing not in (None, "uniform") else ""


def sampler_setting(record: dict) -> str:
    """The sampler of a bench or evaluate record as the report shows and groups it: `unipc`, or `unipc+karras` when
    its timestep spacing is not uniform (records written before spacings: uniform; before samplers: ddim)."""
    spacing = record.get("spacing")
    sampler = record.get("sampler") or "ddim"
    return sampler if spacing in (None, "uniform") else f"{sampler}+{spacing}"


def split_sampler_setting(setting: str) -> tuple[str, str]:
    """(sampler, spacing) of a `sampler_setting`."""
    sampler, _, spacing = setting.partition("+")
    return sampler, spacing or "uniform"


def bench_section(row: dict) -> str:
    """metrics.json section of a bench row: `bench:RUNTIME:bB:SAMPLER-STEPS`, with the device and non-default
    options (`bench:torch-cuda-fp16-graphs:b16:ddim-50`) and the sampler of the per-image latency, so that
    variants of one artifact (and its per-image latency at several sampler settings) do not overwrite each other."""
    parts = [row["runtime"]]
    if row["runtime"] == "torch":
        parts += [str(row["device"])] if row.get("device") not in (None, "cpu") else []
        parts += [str(row["precision"])] if row.get("precision") not in (None, "fp32") else []
        parts += ["graphs"] if row.get("cuda_graphs") else []
        parts += ["compile"] if row.get("compiled") else []
    else:
        parts += [str(row["provider"])] if row.get("provider") not in (None, "cpu") else []
        parts += [{True: "spin", False: "nospin"}[row["spinning"]]] if row.get("spinning") in (True, False) else []
    return (f"bench:{'-'.join(parts)}:b{row['batch']}:{row.get('sampler', 'ddim')}-{row['sampler_steps']}"
            f"{_spacing_suffix(row.get('spacing'))}")


def evaluation_features(record: dict) -> str:
    """The feature space (classifier or inception) an `evaluate` record's FID/KID were measured in; records
    written before there was a choice were measured in the classifier's."""
    return record.get("features") or "classifier"


def kid_text(mean: float, std: float | None) -> str:
    """KID ± its spread over subsets, as the CLI and the report show it: a value within twice its spread of 0
    reads "≈ 0", which is what it measured (the samples are as close to the real set as KID can tell)."""
    if std is None:
        return f"{mean:.3g}"
    if abs(mean) < 2 * std:
        return f"≈ 0 ({mean:.2g} ± {std:.2g})"
    return f"{mean:.3g} ± {std:.2g}"


def evaluate_section(sampler: str, steps: int, spacing: str = "uniform") -> str:
    """metrics.json section of an evaluation at one sampler setting: `evaluate:SAMPLER-STEPS` (`-SPACING` when it
    is not uniform)."""
    return f"evaluate:{sampler}-{steps}{_spacing_suffix(spacing)}"


def read_metrics(artifact_dir: str | Path) -> dict[str, Any]:
    """The artifact's metrics.json ({} when there is none); a file that is not a JSON table is a ValueError."""
    path = Path(artifact_dir) / METRICS
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise ValueError(f"{path} is nested too deep to be a metrics table") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON table")
    return data


def write_metrics(artifact_dir: str | Path, section: str, metrics: dict) -> None:
    """Merge `metrics` under `section` into the artifact's metrics.json, atomically and under a lock held across
    the read, the merge and the write (an unreadable file starts anew)."""
    from filelock import FileLock, Timeout

    folder = Path(artifact_dir)
    lock = FileLock(str(folder / METRICS_LOCK), timeout=METRICS_LOCK_TIMEOUT_S)
    try:
        with lock.acquire(poll_interval=0.005):
            try:
                current = read_metrics(folder)
            except (ValueError, UnicodeDecodeError):
                current = {}
            current[section] = metrics
            write_json_atomic(folder / METRICS, current)
    except Timeout:
        raise OutputPathError(f"cannot update {folder / METRICS}: another process has held its lock "
                              f"{folder / METRICS_LOCK} for {METRICS_LOCK_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise OutputPathError(f"cannot update {folder / METRICS}: {exc.strerror or exc}") from None
