"""Lint an INT8 Q/DQ ONNX model against TensorRT's explicit-quantization rules (needs only onnx + numpy).

TensorRT builds an INT8 engine from the QuantizeLinear (Q) / DequantizeLinear (DQ) nodes of an ONNX
graph. A graph can be valid ONNX and run in ONNX Runtime, yet be refused by TensorRT's parser or have
a layer silently run in float. This lint reads the main graph (no GPU, no TensorRT) and returns one
line per finding, "node (op): [rule] detail". Problems: what TensorRT refuses, runs in float against
the graph's intent, or what defeats INT8 storage. Warnings: legal, but worth a look.

R1 [int8] [zero-point] Every Q/DQ is signed INT8 with zero point 0 or none. The type is the zero
   point's, else (opset >= 21) Q's output_dtype, else uint8 for Q (the ONNX default [onnx-q]: TensorRT
   would read INT8, ONNX Runtime runs uint8, so the two would disagree) and the input's type for DQ.
   Sources: symmetric signed quantization [trt-qt]; "zeroPt must only contain zero-valued
   coefficients" [trt-ql]; `shiftIsAllZeros(zeroPoint)`, UINT8 only on DLA [ox-imp, ox-ops].
R2 [scale] [activation-scale] [weight-axis] [per-tensor-weight] Scales are constants, finite, > 0
   ("All scale coefficients must have strictly positive values" [trt-ql, ox-imp]); activation scales
   are scalars [trt-2392]; weight scales run along the output-channel axis, one per channel ("The
   size of the 1D scale tensor must match the size of the quantization axis" [trt-ql]): Conv W
   [Cout, Cin/g, kh, kw] -> 0 [trt-2380]; ConvTranspose -> 0 (per-input-channel there [trt-2380]);
   MatMul constant B [.., K, N] -> last (N); Gemm B -> 0 with transB=1, else 1. A per-tensor weight
   scale is legal: a warning (accuracy), counted in stats.
R3 [duplicate-weight] [float-copy] [float-weight] [unused] Each quantized weight is stored once, as
   INT8 behind one shared DQ ("an IDequantizeLayer is required between the weights and the linear
   operator" [trt-eq]). The unrolled ODE reuses each weight at every solver stage: two INT8
   initializers with the same bytes and role, or a float initializer equal to a dequantized INT8
   weight feeding a Conv/MatMul/Gemm, multiply the file size. Float weights behind a Q are legal
   [trt-eq] but keep FP32 size (warning), as do unused initializers (warning).
R4 [weight-only-dq] [float-weights] [one-sided-dq] A Conv/ConvTranspose/MatMul/Gemm with a DQ on its weights has a
   DQ on its data input too: "Quantize all inputs of weighted-operations" [trt-eq, Q/DQ placement
   recommendations]; with weights alone it runs in float on dequantized weights. Nodes in
   `float_nodes` (the caller's float fallbacks) get a warning instead. Dequantized input with float
   weights, or one dequantized input of an activation x activation MatMul, is a warning (float layer).
R5 [dangling-q] [pair-scale] [requantize] [qoperator] [custom-domain] A Q feeds only DQ nodes with
   the same scale/zero point/axis; a DQ->Q chain that changes the scale is a problem (a second
   rounding; equal scales: a warning); no QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger,
   DynamicQuantizeLinear (ONNX Runtime's QOperator format, "N" in [ox-ops]) and no com.microsoft
   contrib ops (no importer in [ox-imp]); other custom domains need a plugin (warning).
R6 [opset] Default-domain opset >= 13: the axis attribute, hence per-channel Q/DQ, came with
   QuantizeLinear-13 [onnx-q]; the parser assumes axis 0 before it [ox-imp].

[trt-eq]  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html
[trt-qt]  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html
[trt-ql]  https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-1030/api/c_api/classnvinfer1_1_1_i_quantize_layer.html
[ox-ops]  https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md
[ox-imp]  https://github.com/onnx/onnx-tensorrt/blob/main/onnxOpImporters.cpp (QuantDequantLinearHelper)
[trt-2380] https://github.com/NVIDIA/TensorRT/issues/2380 (NVIDIA: per-output-channel weight scales for Conv)
[trt-2392] https://github.com/NVIDIA/TensorRT/issues/2392 (NVIDIA: per-tensor Q/DQ on activations)
[onnx-q]  https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendMissingError, ConfigError

__all__ = ["assert_tensorrt_qdq", "lint_tensorrt_qdq"]

Q, DQ = "QuantizeLinear", "DequantizeLinear"
DEFAULT_DOMAINS = ("", "ai.onnx")
WEIGHTED = {"Conv": "convs", "ConvTranspose": "convs", "MatMul": "matmuls", "Gemm": "gemms"}
QOPERATOR = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")
MIN_OPSET = 13
# ONNX TensorProto element types, spelled out so the module needs onnx only inside functions.
INT8, UINT8 = 3, 2
FLOATS = (1, 10, 11, 16)  # float, float16, double, bfloat16


# ---- graph index
@dataclass
class _Graph:
    """What the rules look up: constants, types, producers and consumers of every tensor."""

    nodes: list
    opset: int | None
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    const_types: dict[str, int] = field(default_factory=dict)
    initializers: set[str] = field(default_factory=set)
    value_types: dict[str, int] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    outputs: set[str] = field(default_factory=set)


@dataclass
class _Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)

    def problem(self, node, rule: str, msg: str) -> None:
        self.problems.append(f"{_label(node)}: [{rule}] {msg}")

    def warn(self, node, rule: str, msg: str) -> None:
        self.warnings.append(f"{_label(node)}: [{rule}] {msg}")


def _name(node) -> str:
    return node.name or f"<{node.op_type} -> {node.output[0] if node.output else '?'}>"


def _label(node) -> str:
    return "model" if node is None else f"{_name(node)} ({node.op_type})"


def _load(model_or_path):
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise BackendMissingError("onnx", "pip install 'cunet-edge[onnx]'") from None
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if not isinstance(model_or_path, (str, Path)):
        raise ConfigError(f"expected an onnx.ModelProto or a path, got {type(model_or_path).__name__}")
    path = Path(model_or_path)
    if not path.is_file():
        raise ConfigError(f"ONNX file {path} does not exist")
    try:  # external data is loaded too: the duplicate-weight rule compares bytes
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable ONNX model: {exc}") from None


def _constant_value(node):
    """(array, elem type) of a Constant node, or None for the forms that hold no tensor."""
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t), attr.t.data_type
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(attr.f if attr.name == "value_float" else list(attr.floats), np.float32), 1
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(attr.i if attr.name == "value_int" else list(attr.ints), np.int64), 7
    return None


def _index(model) -> _Graph:
    from onnx import numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    g = _Graph(nodes=list(graph.node), opset=opset, outputs={o.name for o in graph.output})
    for init in graph.initializer:
        g.consts[init.name], g.const_types[init.name] = numpy_helper.to_array(init), init.data_type
        g.initializers.add(init.name)
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type"):
            g.value_types[vi.name] = vi.type.tensor_type.elem_type
    for node in g.nodes:
        for out in node.output:
            g.producer[out] = node
        for i, name in enumerate(node.input):
            if name:
                g.consumers[name].append((node, i))
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            value = _constant_value(node)
            if value is not None:
                g.consts[node.output[0]], g.const_types[node.output[0]] = value
    return g


def _qdq_nodes(g: _Graph, op: str | None = None) -> Iterable:
    ops = (op,) if op else (Q, DQ)
    return (n for n in g.nodes if n.op_type in ops and n.domain in DEFAULT_DOMAINS)


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _type_name(elem: int | None) -> str:
    from onnx import TensorProto

    return "unknown" if elem is None else TensorProto.DataType.Name(elem)


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


# ---- R6 opset, R5 foreign ops
def _check_opset(g: _Graph, rep: _Report) -> None:
    rep.stats["opset"] = g.opset or 0
    if g.opset is None:
        rep.problem(None, "opset", "the model imports no default-domain (ai.onnx) opset")
    elif g.opset < MIN_OPSET:
        rep.problem(None, "opset", f"default opset {g.opset} < {MIN_OPSET}: per-channel Q/DQ (the axis "
                    f"attribute) needs opset >= {MIN_OPSET}")


def _check_foreign_ops(g: _Graph, rep: _Report) -> None:
    for node in g.nodes:
        if node.domain == "com.microsoft":
            rep.problem(node, "custom-domain", "ONNX Runtime contrib op (com.microsoft): TensorRT's parser "
                        "cannot import it; export plain ONNX QuantizeLinear/DequantizeLinear")
        elif node.domain not in DEFAULT_DOMAINS:
            rep.warn(node, "custom-domain", f"op in domain '{node.domain}' needs a TensorRT plugin")
        elif node.op_type in QOPERATOR:
            rep.problem(node, "qoperator", "ONNX Runtime QOperator format, which TensorRT does not "
                        "import; use QDQ format (Q/DQ nodes around float ops)")


# ---- R1 types and zero points
def _qdq_type(g: _Graph, node) -> tuple[int | None, str]:
    """The quantized element type of a Q/DQ node and where it was read from."""
    zp = _input(node, 2)
    if zp:
        return g.const_types.get(zp, g.value_types.get(zp)), f"zero point '{zp}'"
    if node.op_type == Q:
        out = _attr(node, "output_dtype", 0)
        return (out, "output_dtype") if out else (UINT8, "no zero point and no output_dtype: ONNX default")
    return _elem_type(g, node.input[0]), f"input '{node.input[0]}'"


def _elem_type(g: _Graph, tensor: str) -> int | None:
    if tensor in g.const_types:
        return g.const_types[tensor]
    if tensor in g.value_types:
        return g.value_types[tensor]
    prod = g.producer.get(tensor)
    return _qdq_type(g, prod)[0] if prod is not None and prod.op_type == Q else None


def _check_type_and_zero_point(g: _Graph, node, rep: _Report) -> None:
    elem, source = _qdq_type(g, node)
    if elem is None:
        rep.warn(node, "int8", f"cannot tell the quantized type ({source} has no known type)")
    elif elem != INT8:
        rep.problem(node, "int8", f"quantized type is {_type_name(elem)} ({source}); TensorRT takes "
                    "signed INT8 only (UINT8 only on DLA)")
    zp = _input(node, 2)
    if not zp:
        return
    if zp not in g.consts:
        rep.problem(node, "zero-point", f"zero point '{zp}' is not a constant")
    elif np.any(g.consts[zp] != 0):
        rep.problem(node, "zero-point", f"non-zero zero point '{zp}' (values {_brief(g.consts[zp])}); "
                    "TensorRT supports symmetric quantization only (zero point 0)")


def _brief(a: np.ndarray) -> str:
    flat = np.asarray(a).ravel()
    return np.array2string(flat[:4], separator=",") + ("..." if flat.size > 4 else "")


# ---- R2 scales and axes
def _weight_source(g: _Graph, node) -> str | None:
    """The constant a Q/DQ quantizes (directly, or through a Q feeding this DQ), else None."""
    x = node.input[0]
    if x in g.consts:
        return x
    prod = g.producer.get(x)
    if node.op_type == DQ and prod is not None and prod.op_type == Q and prod.input[0] in g.consts:
        return prod.input[0]
    return None


def _expected_axis(consumer, index: int, rank: int) -> int | None:
    """The per-channel axis TensorRT wants for a weight in input `index` of `consumer`, if known."""
    op = consumer.op_type
    if op in ("Conv", "ConvTranspose") and index == 1:
        return 0
    if op == "MatMul" and index == 1 and rank >= 2:
        return rank - 1
    if op == "Gemm" and index == 1:
        return 0 if _attr(consumer, "transB", 0) else 1
    return None


def _dq_consumers(g: _Graph, node) -> list:
    """The ops that read the float weight this Q/DQ produces (through the DQ when `node` is a Q)."""
    outs = [node.output[0]]
    if node.op_type == Q:
        outs = [c.output[0] for c, _ in g.consumers.get(node.output[0], []) if c.op_type == DQ]
    return [pair for out in outs for pair in g.consumers.get(out, [])]


def _check_scale(g: _Graph, node, rep: _Report) -> None:
    s_name = _input(node, 1)
    if s_name not in g.consts:
        rep.problem(node, "scale", f"scale '{s_name}' is not a constant (initializer or Constant)")
        return
    scale = np.asarray(g.consts[s_name], np.float64)
    if scale.size == 0 or not np.all(np.isfinite(scale)):
        rep.problem(node, "scale", f"scale '{s_name}' is empty or not finite: {_brief(scale)}")
    elif np.any(scale <= 0):
        rep.problem(node, "scale", f"scale '{s_name}' has values <= 0 (min {scale.min():g}); "
                    "TensorRT needs strictly positive scales")
    zp = _input(node, 2)
    if zp in g.consts and g.consts[zp].size != scale.size:
        rep.problem(node, "scale", f"zero point '{zp}' has {g.consts[zp].size} values, scale {scale.size}")
    weight = _weight_source(g, node)
    if weight is not None:
        _check_weight_axis(g, node, weight, scale, rep)
    elif scale.size != 1:
        rep.problem(node, "activation-scale", f"activation scale '{s_name}' has {scale.size} values; "
                    "TensorRT supports only per-tensor (scalar) activation scales")


def _check_weight_axis(g: _Graph, node, weight: str, scale: np.ndarray, rep: _Report) -> None:
    shape = g.consts[weight].shape
    rank, axis = len(shape), _attr(node, "axis", 1)
    wanted = defaultdict(list)  # expected axis -> the consumers that expect it
    for consumer, index in _dq_consumers(g, node):
        want = _expected_axis(consumer, index, rank)
        if want is not None and _label(consumer) not in wanted[want]:
            wanted[want].append(_label(consumer))
    if scale.size == 1:
        # Only weight slots count (not e.g. a bias); with one output channel one scale *is* per-channel.
        if node.op_type == DQ and wanted and not all(shape[want] == 1 for want in wanted):
            rep.stats["per_tensor_weight_scales"] += 1
            rep.warn(node, "per-tensor-weight", f"weight '{weight}' {list(shape)} has one scale; "
                     "per-channel scales keep more accuracy")
        return
    norm = axis + rank if axis < 0 else axis
    if scale.ndim != 1 or not 0 <= norm < rank:
        rep.problem(node, "weight-axis", f"weight '{weight}' {list(shape)}: scale shape {list(scale.shape)} "
                    f"with axis {axis} is not a 1-D per-channel scale")
        return
    for want, consumers in sorted(wanted.items()):
        if norm != want:
            rep.problem(node, "weight-axis", f"per-channel axis {axis} on weight '{weight}' {list(shape)} "
                        f"read by {', '.join(consumers)}; TensorRT wants the output-channel axis {want}")
    if scale.size != shape[norm]:
        rep.problem(node, "weight-axis", f"scale has {scale.size} values but weight '{weight}' "
                    f"{list(shape)} has {shape[norm]} channels along axis {axis}")


# ---- R5 Q->DQ structure
def _qparams(g: _Graph, node) -> tuple | None:
    """(scale, zero point, axis) of a Q/DQ as comparable values; None if not all constant."""
    s_name, zp = _input(node, 1), _input(node, 2)
    if s_name not in g.consts or (zp and zp not in g.consts):
        return None
    scale = np.asarray(g.consts[s_name], np.float32).ravel()
    zero = np.asarray(g.consts[zp]).ravel() if zp else np.zeros(1, np.int8)
    axis = _attr(node, "axis", 1) if scale.size > 1 else None
    return scale.tobytes(), zero.astype(np.int64).tobytes(), axis


def _check_q_outputs(g: _Graph, node, rep: _Report) -> None:
    out = node.output[0]
    consumers = g.consumers.get(out, [])
    if out in g.outputs:
        rep.problem(node, "dangling-q", f"output '{out}' is a graph output; a Q must feed a DQ")
    elif not consumers:
        rep.problem(node, "dangling-q", f"output '{out}' feeds nothing; a Q must feed a DQ")
    others = [c for c, _ in consumers if c.op_type != DQ]
    if others:
        names = ", ".join(_label(c) for c in others)
        rep.problem(node, "dangling-q", f"output '{out}' feeds {names}; a Q must feed only DQ nodes")
    mine = _qparams(g, node)
    for dq, _ in consumers:
        if dq.op_type == DQ and mine is not None and _qparams(g, dq) not in (None, mine):
            rep.problem(node, "pair-scale", f"Q/DQ pair with {_label(dq)} uses different scale, zero "
                        "point or axis; a pair must share them")


def _check_requantize(g: _Graph, node, rep: _Report) -> None:
    prod = g.producer.get(node.input[0])
    if prod is None or prod.op_type != DQ:
        return
    theirs, mine = _qparams(g, prod), _qparams(g, node)
    if theirs is not None and mine is not None and theirs != mine:
        rep.problem(node, "requantize", f"DQ-Q-DQ chain: {_label(prod)} feeds this Q with a different "
                    "scale (a second rounding step); quantize the tensor once")
    elif theirs is not None and theirs == mine:
        rep.warn(node, "requantize", f"redundant DQ->Q after {_label(prod)} with the same scale")


# ---- R3 weight storage
def _weight_dqs(g: _Graph) -> list:
    """(dq node, initializer name, int8 array) for every DQ that reads an INT8 initializer."""
    return [(n, n.input[0], g.consts[n.input[0]]) for n in _qdq_nodes(g, DQ)
            if n.input[0] in g.initializers and g.const_types[n.input[0]] == INT8]


def _role(g: _Graph, dq) -> tuple:
    return tuple(sorted({(c.op_type, i) for c, i in g.consumers.get(dq.output[0], [])}))


def _check_duplicate_weights(g: _Graph, weights: list, rep: _Report) -> None:
    groups, readers = defaultdict(dict), defaultdict(list)
    for dq, name, arr in weights:
        key = (_role(g, dq), arr.shape, hashlib.sha1(arr.tobytes()).hexdigest())
        groups[key][name] = dq
        readers[name].append(dq)
    for key, members in groups.items():
        first, *copies = members
        for copy in copies:
            rep.problem(members[copy], "duplicate-weight", f"initializer '{copy}' holds the same INT8 bytes "
                        f"as '{first}' for the same role {key[0]}; store one and share its DQ "
                        f"(here {len(members)} copies)")
    for name, dqs in readers.items():
        if len(dqs) > 1:
            rep.warn(dqs[1], "duplicate-weight", f"weight '{name}' is dequantized by {len(dqs)} DQ nodes; "
                     "one shared DQ is enough")


def _dequantized(g: _Graph, dq, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(dequantized weight, per-element rounding tolerance) of an INT8 weight DQ, if its scale is usable."""
    if _input(dq, 1) not in g.consts:
        return None
    scale = np.asarray(g.consts[dq.input[1]], np.float64)
    if scale.size == 0 or not np.all(np.isfinite(scale) & (scale > 0)):
        return None
    if scale.size > 1:
        axis = _attr(dq, "axis", 1)
        axis += arr.ndim if axis < 0 else 0
        if scale.ndim != 1 or not 0 <= axis < arr.ndim or arr.shape[axis] != scale.size:
            return None
        shape = [1] * arr.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
    else:
        scale = scale.reshape(())
    # A float copy rounds to the stored INT8 value: it lies within half a step of q * scale.
    return arr.astype(np.float64) * scale, np.broadcast_to(scale * 0.5001 + 1e-12, arr.shape)


def _check_float_copies(g: _Graph, weights: list, float_nodes, rep: _Report) -> None:
    refs = [(dq, name, _dequantized(g, dq, arr)) for dq, name, arr in weights]
    refs = [r for r in refs if r[2] is not None]
    for node in g.nodes:
        w = _input(node, 1)
        if node.op_type not in WEIGHTED or w not in g.initializers or g.const_types[w] not in FLOATS:
            continue
        value = np.asarray(g.consts[w], np.float64)
        for dq, name, (deq, tol) in refs:
            if deq.shape == value.shape and np.all(np.abs(value - deq) <= tol):
                report = rep.warn if _name(node) in float_nodes else rep.problem
                report(node, "float-copy", f"float initializer '{w}' is a copy of INT8 weight '{name}' "
                       f"(dequantized by {_label(dq)}); read the shared DQ output instead")
                break


def _check_storage(g: _Graph, float_nodes, rep: _Report) -> None:
    weights = _weight_dqs(g)
    seen = {name: arr for _, name, arr in weights}
    rep.stats["int8_weights"] = len(seen)
    rep.stats["int8_weight_bytes"] = int(sum(a.nbytes for a in seen.values()))
    _check_duplicate_weights(g, weights, rep)
    _check_float_copies(g, weights, float_nodes, rep)
    for node in _qdq_nodes(g, Q):
        x = node.input[0]
        if x in g.initializers and g.const_types[x] in FLOATS:
            rep.warn(node, "float-weight", f"weight '{x}' is stored as {_type_name(g.const_types[x])} and "
                     "quantized at build time; store INT8 + DQ for a 4x smaller file")
    rep.stats["float_weight_bytes"] = _float_weight_bytes(g)
    used = set(g.consumers) | g.outputs
    for name in sorted(g.initializers - used):
        rep.warn(None, "unused", f"initializer '{name}' ({g.consts[name].nbytes} bytes) is never read")


def _float_weight_bytes(g: _Graph) -> int:
    """Bytes of float initializers in weight slots (or quantized by a Q): what INT8 storage would shrink."""
    names = set()
    for node in g.nodes:
        slots = (0,) if node.op_type == Q else (0, 1) if node.op_type == "MatMul" else (1,)
        if node.op_type in WEIGHTED or node.op_type == Q:
            names |= {_input(node, i) for i in slots if _input(node, i) in g.initializers
                      and g.const_types[_input(node, i)] in FLOATS}
    return int(sum(g.consts[n].nbytes for n in names))


# ---- R4 weighted ops
def _is_weight(g: _Graph, tensor: str) -> bool:
    if tensor in g.consts:
        return True
    prod = g.producer.get(tensor)
    return prod is not None and prod.op_type == DQ and _weight_source(g, prod) is not None


def _is_dequantized(g: _Graph, tensor: str) -> bool:
    prod = g.producer.get(tensor)
    return prod is not None and prod.op_type == DQ and prod.domain in DEFAULT_DOMAINS


def _weight_index(g: _Graph, node) -> int | None:
    if node.op_type != "MatMul":
        return 1
    for i in (1, 0):
        if _is_weight(g, node.input[i]):
            return i
    return None


def _classify(g: _Graph, node, float_nodes, rep: _Report) -> bool:
    """Whether a weighted op runs in INT8; reports the half-quantized cases."""
    widx = _weight_index(g, node)
    if widx is None:  # activation x activation MatMul (attention): both inputs or neither
        deq = [_is_dequantized(g, t) for t in node.input[:2]]
        if any(deq) and not all(deq):
            rep.warn(node, "one-sided-dq", "only one MatMul input is dequantized; it runs in float")
        return all(deq)
    data, weight = node.input[1 - widx], node.input[widx]
    w_q, a_q = _is_dequantized(g, weight), _is_dequantized(g, data)
    if w_q and not a_q:
        report = rep.warn if _name(node) in float_nodes else rep.problem
        report(node, "weight-only-dq", f"weights '{weight}' are dequantized but input '{data}' is not: "
               "TensorRT runs the layer in float; add Q/DQ on the input or list it as a float fallback")
    elif a_q and not w_q and _name(node) not in float_nodes:
        rep.warn(node, "float-weights", f"input '{data}' is dequantized but weights '{weight}' are float: "
                 "the layer runs in float")
    return w_q and a_q


def _check_weighted_ops(g: _Graph, float_nodes, rep: _Report) -> None:
    names = set()
    for node in g.nodes:
        names.add(_name(node))
        if node.op_type in WEIGHTED and node.domain in DEFAULT_DOMAINS and len(node.input) >= 2:
            kind = WEIGHTED[node.op_type]
            rep.stats[f"{'quantized' if _classify(g, node, float_nodes, rep) else 'float'}_{kind}"] += 1
    for missing in sorted(set(float_nodes) - names):
        rep.warn(None, "float-nodes", f"float_nodes names '{missing}', which is not a node of the graph")


# ---- public API
STAT_KEYS = ("opset", "q_nodes", "dq_nodes", "quantized_convs", "float_convs", "quantized_matmuls",
             "float_matmuls", "quantized_gemms", "float_gemms", "int8_weights", "int8_weight_bytes",
             "float_weight_bytes", "per_tensor_weight_scales")


def lint_tensorrt_qdq(model_or_path, float_nodes: Iterable[str] = frozenset()) -> dict:
    """Check a Q/DQ ONNX model (ModelProto or path) against TensorRT's explicit-quantization rules.

    Returns {"ok", "problems", "warnings", "stats"}: `ok` is True when there are no problems;
    each problem/warning is one line "node (op): [rule] detail". `float_nodes` names the
    weighted nodes the caller keeps in float on purpose (their weight-only DQ is a warning).
    """
    g = _index(_load(model_or_path))
    float_nodes = frozenset(float_nodes)
    rep = _Report()
    _check_opset(g, rep)
    _check_foreign_ops(g, rep)
    for node in _qdq_nodes(g):
        rep.stats["q_nodes" if node.op_type == Q else "dq_nodes"] += 1
        _check_type_and_zero_point(g, node, rep)
        _check_scale(g, node, rep)
        if node.op_type == Q:
            _check_q_outputs(g, node, rep)
            _check_requantize(g, node, rep)
    _check_storage(g, float_nodes, rep)
    _check_weighted_ops(g, float_nodes, rep)
    stats = {key: int(rep.stats.get(key, 0)) for key in STAT_KEYS}
    return {"ok": not rep.problems, "problems": rep.problems, "warnings": rep.warnings, "stats": stats}


def assert_tensorrt_qdq(model_or_path, float_nodes: Iterable[str] = frozenset()) -> dict:
    """Lint and raise ConfigError with a one-line summary if TensorRT would refuse or mis-run the graph.

    Returns the lint report when there are no problems (warnings do not raise).
    """
    report = lint_tensorrt_qdq(model_or_path, float_nodes)
    problems = report["problems"]
    if problems:
        n = len(problems)
        shown = "; ".join(problems[:3]) + (f"; ... and {n - 3} more" if n > 3 else "")
        raise ConfigError(f"{n} problem{'s' if n != 1 else ''}: {shown}".replace("\n", " "))
    return report
