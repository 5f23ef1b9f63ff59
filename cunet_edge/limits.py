"""Checks at the boundary, defined once: JSON records read with limits, the manifest's schema, file names confined
to their artifact, numbers finite and in range.

Everything a user or another program hands in (an artifact's manifest.json, a config or recipe value, a CLI number)
passes here before any work, so a value that parses but is wrong becomes one `error: ...` line, never a traceback,
a hang or a read outside the artifact. Written by hand: the checks are few and specific (a general JSON-Schema
library would add a dependency and still not confine file names or bound nesting).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ArtifactError, ConfigError

__all__ = ["MAX_JSON_DEPTH", "MAX_MANIFEST_BYTES", "MAX_FILES", "MAX_CONFIG_BYTES", "read_json_record",
           "read_text_file", "json_depth", "check_manifest", "check_member", "check_engine_layers",
           "check_regular_file", "check_int", "check_number", "check_seed", "MAX_SEED", "check_threads", "MAX_THREADS",
           "machine_memory_bytes", "check_fits_memory", "MAX_HOURS_ENV", "max_hours", "check_fits_time",
           "time_one_call"]

MAX_JSON_DEPTH = 32  # our records nest 5 deep; 100,000 deep would exhaust the parser's recursion
MAX_MANIFEST_BYTES = 16 << 20
MAX_CONFIG_BYTES = 4 << 20  # a config, recipe or import spec
MAX_FILES = 100_000
# torch takes 64-bit seeds; stages derive more (seed * 1000 + step), so a seed keeps to 32 bits, as numpy's legacy one.
MAX_SEED = 2**32 - 1
MAX_DIM = 1 << 20  # a recorded tensor dimension (a batch, channels, pixels)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def check_regular_file(path: Path, what: str, error: type[Exception] = ArtifactError) -> os.stat_result:
    """`path`'s stat, if it is a regular file (a FIFO or device would hang or stream forever when read)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device)"
        raise error(f"{what} {path} is {kind}")
    return st


def json_depth(value: Any) -> int:
    """How deep lists and tables nest in a parsed JSON value (a scalar: 0), counted without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v)
    return depth


def read_text_file(path: Path, what: str, *, max_bytes: int = MAX_CONFIG_BYTES,
                   error: type[Exception] = ConfigError) -> str:
    """A config or recipe file's text: a regular file (a FIFO would hang) of at most `max_bytes`, UTF-8."""
    path = Path(path)
    if not os.path.lexists(path):
        raise error(f"cannot read {what} {path}: it does not exist")
    st = check_regular_file(path, what, error)
    if st.st_size > max_bytes:
        raise error(f"{what} {path} is {st.st_size} bytes; at most {max_bytes} are read")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def read_json_record(path: Path, what: str, *, max_bytes: int = MAX_MANIFEST_BYTES, finite: bool = False,
                     error: type[Exception] = ArtifactError) -> Any:
    """Parse a JSON record: a regular file of at most `max_bytes`, UTF-8, at most MAX_JSON_DEPTH deep; with `finite`,
    strict JSON (no NaN or Infinity: a manifest may record an infinite PSNR, a config may not); anything else is
    `error` in one line."""
    st = check_regular_file(path, what, error)
    if st.st_size > max_bytes:
        raise error(f"{what} {path} is {st.st_size} bytes; a record is at most {max_bytes} bytes")
    try:
        text = path.read_bytes()[: max_bytes + 1].decode("utf-8")
        data = json.loads(text, parse_constant=_no_constant) if finite else json.loads(text)
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is corrupted: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise error(f"{what} {path} is corrupted: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity
        raise error(f"{what} {path} is corrupted: not valid JSON: {exc}") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise error(f"{what} {path} is corrupted: nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def check_member(root: Path, name: Any, where: str) -> Path:
    """The path of payload file `name` inside artifact `root`, if the name is confined to it: relative, no `..`, no
    link out of the folder. The check reads nothing outside the artifact (and so reveals nothing of it)."""
    if not isinstance(name, str) or not name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ArtifactError(f"{where}: file name {str(name)[:60]!r} is not a relative path inside the artifact")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or name != pure.as_posix() or pure.parts[0] == "~":
        raise ArtifactError(f"{where}: file name {name[:60]!r} is not a relative path inside the artifact")
    path = root / name
    base = root.resolve()
    parent = path.parent.resolve()  # a link among the folders above the file
    if parent != base and base not in parent.parents:
        raise ArtifactError(f"{where}: file {name[:60]!r} lies outside the artifact (through a link)")
    try:
        link = path.is_symlink()
    except OSError as exc:  # a name longer than the file system holds
        raise ArtifactError(f"{where}: file {name[:60]!r} cannot be opened: {exc.strerror or exc}") from None
    if link:
        raise ArtifactError(f"{where}: file {name[:60]!r} is a link; an artifact holds regular files only")
    return path


def _fail(where: str, key: str, want: str, got: Any) -> None:
    text = json.dumps(got, default=str) if not isinstance(got, (dict, list)) else type(got).__name__
    raise ArtifactError(f"{where}: {key} must be {want}, got {text[:60]}")


def _check_shape(where: str, key: str, shape: Any) -> None:
    if not isinstance(shape, list) or len(shape) > 8:
        _fail(where, key, "a list of at most 8 dimensions", shape)
    for d in shape:
        if d is None or (isinstance(d, str) and 0 < len(d) <= 64):
            continue  # a dynamic dimension (None, or its name)
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIM:
            _fail(where, key, f"dimensions from 1 to {MAX_DIM} (or a dynamic name)", d)


def _check_signature(where: str, sig: Any) -> None:
    if not isinstance(sig, dict) or not isinstance(sig.get("inputs"), dict) or not isinstance(sig.get("outputs"), dict):
        _fail(where, "signature", "a table of inputs and outputs", sig)
    for side in ("inputs", "outputs"):
        for name, spec in sig[side].items():
            key = f"signature.{side}.{name}"
            if not isinstance(spec, dict):
                _fail(where, key, "a table of shape and dtype", spec)
            _check_shape(where, f"{key}.shape", spec.get("shape"))
            if not isinstance(spec.get("dtype"), str) or spec["dtype"] not in (
                    "float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"):
                _fail(where, f"{key}.dtype", "a tensor dtype name", spec.get("dtype"))


_NON_FINITE = ("inf", "-inf", "nan")  # how artifact.json_safe writes a non-finite float


def _measure(where: str, key: str, v: Any, *, low: float | None = 0.0, null: bool = False) -> None:
    """A recorded measurement: a finite number (>= low), or a non-finite one as json_safe writes it ("inf", "nan")."""
    if v is None and null:
        return
    if isinstance(v, str) and v in _NON_FINITE:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (low is not None and v < low):
        _fail(where, key, "a number" + (f" >= {low:g}" if low is not None else "") + ' (or "inf"/"nan")', v)


def _table(where: str, key: str, v: Any) -> dict:
    if not isinstance(v, dict):
        _fail(where, key, "a table", v)
    return v


def _count(where: str, key: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 62:
        _fail(where, key, "an integer >= 0", v)


def _check_error_rows(where: str, key: str, rows: Any, err: str) -> None:
    if not isinstance(rows, list) or len(rows) > 10_000:
        _fail(where, key, "a list of at most 10000 rows", rows)
    for i, row in enumerate(rows):
        _table(where, f"{key}[{i}]", row)
        if err in row:
            _measure(where, f"{key}[{i}].{err}", row[err])
        for k in ("t", "t_from", "t_to", "n"):
            if k in row:
                _count(where, f"{key}[{i}].{k}", row[k])


def _check_drift(where: str, drift: Any, key: str = "drift") -> None:
    """What quantize (int8.py) and prune (drift.torch_drift) record of an artifact's drift against its parent."""
    _table(where, key, drift)
    if "eps_rel_err" in drift:
        _measure(where, f"{key}.eps_rel_err", drift["eps_rel_err"])
    if "sample_psnr_vs_parent" in drift:
        _measure(where, f"{key}.sample_psnr_vs_parent", drift["sample_psnr_vs_parent"], low=None, null=True)
    if "eps_rel_err_by_timestep" in drift:
        _check_error_rows(where, f"{key}.eps_rel_err_by_timestep", drift["eps_rel_err_by_timestep"], "eps_rel_err")
    if "eps_rel_err_by_inputs" in drift:  # quantize: the error on each kind of held-out input
        _table(where, f"{key}.eps_rel_err_by_inputs", drift["eps_rel_err_by_inputs"])
        for k, v in drift["eps_rel_err_by_inputs"].items():
            _measure(where, f"{key}.eps_rel_err_by_inputs.{k}", v)
    for k in ("inputs", "samples"):
        if k in drift:
            _count(where, f"{key}.{k}", drift[k])
    for k in ("reference", "sampler"):
        if k in drift and not isinstance(drift[k], str):
            _fail(where, f"{key}.{k}", "a string", drift[k])
    if "after_pruning" in drift:
        _check_drift(where, drift["after_pruning"], f"{key}.after_pruning")


def _check_verification(where: str, ver: Any) -> None:
    """What export (onnx.verify_onnx) records: ONNX Runtime against PyTorch on seeded inputs."""
    _table(where, "verification", ver)
    for k in ("rel_err", "max_abs_err", "max_rel_err", "tolerance"):
        if k in ver:
            _measure(where, f"verification.{k}", ver[k])
    if "n" in ver:
        _count(where, "verification.n", ver["n"])
    if "timesteps" in ver:
        ts = ver["timesteps"]
        if not isinstance(ts, list) or len(ts) > 1_000_000:
            _fail(where, "verification.timesteps", "a list of timesteps", ts)
        for i, t in enumerate(ts):
            _count(where, f"verification.timesteps[{i}]", t)
    if "per_timestep" in ver:
        _check_error_rows(where, "verification.per_timestep", ver["per_timestep"], "rel_err")
    if "reference" in ver and not isinstance(ver["reference"], str):
        _fail(where, "verification.reference", "a string", ver["reference"])


def _check_pruning(where: str, rec: Any) -> None:
    """What prune (pruning._record) records: target, cost before and after and their ratios, rounds, fine-tuning."""
    _table(where, "pruning", rec)
    for k in ("macs_ratio", "params_ratio"):
        if k in rec:
            v = rec[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1e6:
                _fail(where, f"pruning.{k}", "a ratio > 0", v)
    for k in ("target", "floor"):
        if k in rec:
            _measure(where, f"pruning.{k}", rec[k], null=True)
    for k in ("metric", "importance", "scope"):
        if k in rec and not isinstance(rec[k], str):
            _fail(where, f"pruning.{k}", "a string", rec[k])
    for side in ("before", "after"):
        if side in rec:
            for k, v in _table(where, f"pruning.{side}", rec[side]).items():
                _measure(where, f"pruning.{side}.{k}", v)
    if "iterative_steps" in rec:
        steps = rec["iterative_steps"]
        if not isinstance(steps, list) or not all(isinstance(r, dict) for r in steps):
            _fail(where, "pruning.iterative_steps", "a list of tables", steps)
    for k in ("config", "widths", "seconds"):
        if k in rec:
            _table(where, f"pruning.{k}", rec[k])
    if "depgraph" in rec and rec["depgraph"] is not None:
        _table(where, "pruning.depgraph", rec["depgraph"])
    if "finetune" in rec:
        ft = _table(where, "pruning.finetune", rec["finetune"])
        if "steps" in ft:
            _count(where, "pruning.finetune.steps", ft["steps"])


def _check_engine_layers(where: str, rec: Any) -> None:
    """What export --format tensorrt records of the engine's layers (trt_build.layer_summary, and its file)."""
    _table(where, "engine_layers", rec)
    for k in ("layers", "compute_layers", "compute_int8"):
        if k in rec:
            _count(where, f"engine_layers.{k}", rec[k])
    for k, v in _table(where, "engine_layers.by_precision", rec.get("by_precision", {})).items():
        _count(where, f"engine_layers.by_precision.{k}", v)
    fell = rec.get("fell_back", [])
    if not isinstance(fell, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in fell):
        _fail(where, "engine_layers.fell_back", "a list of {name, precision}", fell)
    if "file" in rec and not isinstance(rec["file"], str):
        _fail(where, "engine_layers.file", "a file name", rec["file"])


def _check_engine_check(where: str, rec: Any) -> None:
    """What export --format tensorrt records of the engine against ONNX Runtime (trt_check.check)."""
    _table(where, "engine_check", rec)
    if not isinstance(rec.get("ok"), bool):
        _fail(where, "engine_check.ok", "true or false", rec.get("ok"))
    for k, v in _table(where, "engine_check.tolerance", rec.get("tolerance", {})).items():
        _measure(where, f"engine_check.tolerance.{k}", v)
    rows = rec.get("per_timestep", [])
    _check_error_rows(where, "engine_check.per_timestep", rows, "max_rel_err")
    for i, row in enumerate(rows):
        if "max_abs_err" in row:
            _measure(where, f"engine_check.per_timestep[{i}].max_abs_err", row["max_abs_err"])
    div = rec.get("first_divergence")
    if div is not None:
        _table(where, "engine_check.first_divergence", div)
        for k in ("tensor", "node", "op_type"):
            if div.get(k) is not None and not isinstance(div[k], str):
                _fail(where, f"engine_check.first_divergence.{k}", "a string", div[k])


def check_engine_layers(data: Any, where: str) -> list:
    """An engine artifact's layers.json: {"layers": [{name, type, precision, tactic, ...}]}; returns the layers."""
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list) or len(layers) > 1_000_000:
        raise ArtifactError(f"{where}: layers must be a list of layer records")
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
            _fail(where, f"layers[{i}]", "a table with a name", layer)
        for k in ("type", "precision", "tactic"):
            if layer.get(k) is not None and not isinstance(layer[k], str):
                _fail(where, f"layers[{i}].{k}", "a string or null", layer[k])
    return layers


def check_manifest(manifest: Any, where: str) -> dict:
    """The manifest's schema: types and ranges of what every reader relies on: the records every artifact has, the
    ones a runner trusts for sizes, and the ones a stage adds that commands print and reports read (`drift`,
    `verification`, `pruning`)."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where} is not a cunet-edge manifest (not a table)")
    if "kind" not in manifest or "files" not in manifest:
        raise ArtifactError(f"{where} is not a cunet-edge manifest (no kind/files)")
    if not isinstance(manifest["kind"], str) or not 0 < len(manifest["kind"]) <= 64:
        _fail(where, "kind", "a kind name", manifest["kind"])
    files = manifest["files"]
    if not isinstance(files, dict):
        _fail(where, "files", "a table of {name: {bytes, sha256}}", files)
    if len(files) > MAX_FILES:
        raise ArtifactError(f"{where}: files lists {len(files)} files; an artifact holds at most {MAX_FILES}")
    for name, meta in files.items():
        key = f"files[{name[:60]!r}]"
        if not isinstance(meta, dict):
            _fail(where, key, "a table of bytes and sha256", meta)
        n = meta.get("bytes")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 1 << 50:
            _fail(where, f"{key}.bytes", "a size in bytes (an integer >= 0)", n)
        if not isinstance(meta.get("sha256"), str) or not _SHA256.fullmatch(meta["sha256"]):
            _fail(where, f"{key}.sha256", "64 lowercase hex digits", meta.get("sha256"))
    for key in ("id", "stage", "created", "precision"):
        if key in manifest and not isinstance(manifest[key], str):
            _fail(where, key, "a string", manifest[key])
    for key in ("config", "versions"):
        if key in manifest and not isinstance(manifest[key], dict):
            _fail(where, key, "a table", manifest[key])
    if "parent" in manifest and manifest["parent"] is not None:
        p = manifest["parent"]
        if not isinstance(p, dict) or not all(isinstance(p.get(k), (str, type(None))) for k in ("path", "kind", "id")):
            _fail(where, "parent", "null or a table of path, kind and id", p)
    if "manifest_version" in manifest:
        v = manifest["manifest_version"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
            _fail(where, "manifest_version", "an integer >= 1", v)
    if "signature" in manifest:
        _check_signature(where, manifest["signature"])
    if "batch" in manifest:
        b = manifest["batch"]
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_DIM:
            _fail(where, "batch", f"an integer from 1 to {MAX_DIM}", b)
    solver = manifest.get("solver")
    if solver is not None:
        if not isinstance(solver, dict) or not isinstance(solver.get("method", ""), str):
            _fail(where, "solver", "a table (method: a name; steps, nfe_*: integers)", solver)
        for k in ("steps", "nfe_per_block", "nfe_per_call", "ode_blocks"):
            v = solver.get(k)
            if k in solver and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1_000_000):
                _fail(where, f"solver.{k}", "an integer from 0 to 1000000", v)
    if "drift" in manifest:
        _check_drift(where, manifest["drift"])
    if "verification" in manifest:
        _check_verification(where, manifest["verification"])
    if "pruning" in manifest:
        _check_pruning(where, manifest["pruning"])
    if "engine_layers" in manifest:
        _check_engine_layers(where, manifest["engine_layers"])
    if "engine_check" in manifest:
        _check_engine_check(where, manifest["engine_check"])
    return manifest


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, error: type[Exception] = ConfigError) -> float:
    """`value` as a float if it is a finite number within [low, high] (`low_open`: > low); else one-line `error`.
    The one range check of CLI options, configs and recipes, so a dry run refuses what the run would."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name}: expected a number, got {value!r}")
    try:
        as_float = float(value)
    except OverflowError:
        as_float = math.inf if value > 0 else -math.inf
    if not math.isfinite(as_float):
        raise error(f"{name} must be a finite number, got {value}")
    if low is not None and (as_float < low or (low_open and as_float == low)):
        raise error(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value}")
    if high is not None and as_float > high:
        raise error(f"{name} must be <= {high:g}, got {value}")
    return as_float


def machine_memory_bytes() -> int:
    """This machine's physical memory (2**40 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 1 << 40


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} bytes"


def check_fits_memory(what: str, need_bytes: float, detail: str, error: type[Exception] = ConfigError) -> None:
    """Refuse, before any work, a request whose estimated memory (a lower bound) exceeds this machine's."""
    have = machine_memory_bytes()
    if need_bytes > have:
        raise error(f"{what} needs at least {_size(need_bytes)} of memory ({detail}); this machine has {_size(have)}")


MAX_HOURS_ENV = "CUNET_EDGE_MAX_HOURS"
DEFAULT_MAX_HOURS = 24.0


def max_hours() -> float:
    """The longest a request may be estimated to run: $CUNET_EDGE_MAX_HOURS hours (default 24)."""
    raw = os.environ.get(MAX_HOURS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_HOURS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{MAX_HOURS_ENV} must be a number of hours, got {raw[:40]!r}") from None
    return check_number(MAX_HOURS_ENV, value, low=0, low_open=True)


def _duration(seconds: float) -> str:
    for unit, scale in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def time_one_call(call) -> float:
    """Seconds one `call()` takes: the faster of two when the first is under a second (the first pays for warm-up)."""
    import time

    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    if first >= 1.0:
        return first
    start = time.perf_counter()
    call()
    return min(first, time.perf_counter() - start)


def check_fits_time(what: str, seconds: float, detail: str, error: type[Exception] = ConfigError) -> None:
    """Refuse, before the work, a request whose estimated run time (a lower bound) exceeds max_hours()."""
    bound = max_hours()
    if seconds > bound * 3600.0:
        raise error(f"{what} would take about {_duration(seconds)} ({detail}); the bound is {bound:g} h "
                    f"(set {MAX_HOURS_ENV} to raise it)")


MAX_THREADS = 4096


def check_threads(value: Any, name: str = "threads") -> int:
    """A CPU thread count: an integer from 1 to MAX_THREADS (10^12 overflowed torch.set_num_threads)."""
    check_int(name, value, high=MAX_THREADS)
    if value < 1:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer from 0 to MAX_SEED (one beyond 64 bits crashed the generator, with a traceback)."""
    return check_int(name, value, low=0, high=MAX_SEED)


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None,
              error: type[Exception] = ConfigError) -> int:
    """`value` if it is an integer within [low, high]; else one-line `error` (a seed past 64 bits, a count of 10^12)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name}: expected an integer, got {value!r}")
    if low is not None and value < low:
        raise error(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise error(f"{name} must be <= {high}, got {value}")
    return value
