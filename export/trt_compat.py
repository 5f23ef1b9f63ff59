"""Will TensorRT's ONNX parser take this graph? A check that needs only `onnx`, run before any build.

The operator list is data (`data/tensorrt_onnx_ops.json`), transcribed from onnx-tensorrt's
support matrix with its source URL and TensorRT version, so it is read and updated like any
other reference table. On top of the list, cunet-edge asks for a static graph: no Loop, If or
Scan even where TensorRT imports them, and only the leading (batch) input dim dynamic.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import BackendMissingError, ConfigError

__all__ = ["CONTROL_FLOW", "OP_LIST", "check_tensorrt_compat", "load_op_list"]

OP_LIST = Path(__file__).parent / "data" / "tensorrt_onnx_ops.json"
CONTROL_FLOW = ("Loop", "If", "Scan")
DEFAULT_DOMAINS = ("", "ai.onnx")
QDQ = ("QuantizeLinear", "DequantizeLinear")


@functools.lru_cache(maxsize=1)
def load_op_list() -> dict[str, Any]:
    """The packaged operator table: source, tensorrt_version, retrieved, opset_range, ops, unsupported."""
    return json.loads(OP_LIST.read_text())


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def _load(model):
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise BackendMissingError("onnx", "pip install 'cunet-edge[onnx]'") from None
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ConfigError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable ONNX model: {exc}") from None


def _nodes(proto):
    """Every node TensorRT will import: graph nodes, with calls to model-local functions expanded."""
    functions = {(f.domain, f.name): f for f in proto.functions}

    def walk(nodes, seen):
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in functions and key not in seen:
                yield from walk(functions[key].node, seen | {key})
            else:
                yield node
    yield from walk(proto.graph.node, frozenset())


def _op_name(node) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _op_problems(ops: Counter, table: dict, tensorrt_version: str | None) -> list[str]:
    problems = []
    known, refused = table["ops"], set(table["unsupported"])
    where = f"TensorRT {table['tensorrt_version']}'s ONNX parser"
    for op, n in sorted(ops.items()):
        count = f" (x{n})" if n > 1 else ""
        if "::" in op:
            domain = op.split("::")[0]
            problems.append(f"{op}{count} is a custom-domain op ({domain}) that {where} cannot import without a "
                            "plugin; export with standard ONNX ops only")
        elif op in CONTROL_FLOW:
            problems.append(f"{op}{count} is control flow: cunet-edge builds static graphs only; unroll the "
                            "solver (cunet-edge unroll) before exporting")
        elif op not in known:
            why = "lists it as unsupported" if op in refused else "does not list it"
            problems.append(f"{op}{count} is not supported: {where} {why} ({table['source']})")
        elif tensorrt_version and "since" in known[op] and _version(tensorrt_version) < _version(known[op]["since"]):
            problems.append(f"{op}{count} needs TensorRT >= {known[op]['since']}; this is TensorRT {tensorrt_version}")
    return problems


def _opset(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS), None)


def _opset_problems(proto, table: dict) -> list[str]:
    lo, hi = table["opset_range"]
    opset = _opset(proto)
    if opset is None or lo <= opset <= hi:
        return []
    return [f"opset {opset} is outside the range TensorRT {table['tensorrt_version']} parses ({lo} to {hi})"]


def _opset_note(proto, table: dict, tensorrt_version: str | None) -> list[str]:
    """A note, not a problem: the parser imports most ops of a newer opset unchanged (our exports need >= 18)."""
    opset = _opset(proto)
    if not tensorrt_version or opset is None:
        return []
    documented = [(_version(v), m) for v, m in table["max_opset_by_version"].items()]
    known = [m for v, m in sorted(documented) if v <= _version(tensorrt_version)]
    if not known or opset <= known[-1]:
        return []
    note = (f"opset {opset} is newer than the opset {known[-1]} TensorRT {tensorrt_version}'s parser documents: "
            "ops whose definition changed since may fail to parse")
    return [note]


def _input_problems(proto) -> list[str]:
    """Every graph input fully static except its leading (batch) dim."""
    initializers = {t.name for t in proto.graph.initializer}
    problems = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        if not ttype.HasField("shape"):
            problems.append(f"input {value.name!r} has no shape: only the batch dim may be dynamic")
            continue
        for i, dim in enumerate(ttype.shape.dim):
            if i > 0 and not dim.HasField("dim_value"):
                name = dim.dim_param or "?"
                problems.append(f"input {value.name!r} dim {i} is dynamic ({name}): only the leading batch dim "
                                "may be; export with a fixed image size")
    return problems


def _zero_point_problems(proto) -> list[str]:
    """Q/DQ are fine, but TensorRT needs symmetric quantization: a constant zero point must be all zeros."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    bad = set()
    for node in proto.graph.node:
        if node.op_type in QDQ and node.domain in DEFAULT_DOMAINS and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and numpy_helper.to_array(zp).any():
                bad.add(node.name or node.input[2])
    if not bad:
        return []
    first = min(bad)
    return [f"{len(bad)} Q/DQ node(s) have a non-zero zero point (e.g. {first!r}): TensorRT needs it 0"]


def _restriction_notes(ops: Counter, table: dict) -> list[str]:
    known = table["ops"]
    return [f"{op}: supported with restrictions: {known[op]['restrictions']}"
            for op in sorted(ops) if op in known and "restrictions" in known[op]]


def check_tensorrt_compat(model, *, tensorrt_version: str | None = None) -> dict[str, Any]:
    """Check an ONNX file or ModelProto against TensorRT's parser support and cunet-edge's static-graph rule.

    Returns {"ok", "problems" (one line each), "ops" (op histogram), "notes" (restrictions of the ops
    present, for the reader), "source", "tensorrt_version"}. Give `tensorrt_version` (the TensorRT
    that will build) to also flag ops its parser gained only in a later release.
    """
    proto = _load(model)
    table = load_op_list()
    ops = Counter(_op_name(n) for n in _nodes(proto))
    problems = (_op_problems(ops, table, tensorrt_version) + _opset_problems(proto, table)
                + _input_problems(proto) + _zero_point_problems(proto))
    return {"ok": not problems, "problems": problems, "ops": dict(sorted(ops.items())),
            "notes": _restriction_notes(ops, table) + _opset_note(proto, table, tensorrt_version),
            "source": table["source"],
            "tensorrt_version": table["tensorrt_version"]}
