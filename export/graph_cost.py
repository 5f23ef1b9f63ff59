"""FLOPs and bytes moved by every node of an ONNX graph, from ONNX shape inference with the batch fixed.

Per ONNX node: FLOPs (a count of the arithmetic each op does) and bytes moved (inputs + outputs
+ weights, at the element size of the precision the node runs in). The export stage records the
graph's MACs with it; the device roofline (`cunet_edge.devices.estimate`) turns it into time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import check_choice
from ..errors import ConfigError

__all__ = ["ESTIMATE_PRECISIONS", "FLOAT_BYTES", "FLOPS_PER_ELEMENT", "FREE_OPS", "MATMUL_OPS", "NodeCost", "graph_costs",
           "with_batch", "cost_warnings"]

ESTIMATE_PRECISIONS = ("fp32", "fp16", "int8")
FLOAT_BYTES = {"fp32": 4, "fp16": 2}
# FLOPs per element, a count of the arithmetic each op does (not a measurement):
# 1 for plain arithmetic; 4 for exp/log/sin/sqrt-like functions (a short polynomial); 8 for a
# normalization (mean 1 + variance 3 + normalize 2 + affine 2) and for softmax (max, subtract,
# exp 4, sum, divide). Data movement costs 0 FLOPs. Bias adds of Conv/Gemm are not counted.
_ARITH = ("Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "LeakyRelu", "PRelu", "Max", "Min", "Clip", "Where",
          "Sum", "Mean", "Equal", "Greater", "Less", "Not", "And", "Or", "Floor", "Ceil", "Round", "Sign", "Mod",
          "Reciprocal", "BatchNormalization")
_TRANSCENDENTAL = ("Sigmoid", "Tanh", "Exp", "Log", "Sin", "Cos", "Erf", "Sqrt", "Pow", "Softplus", "HardSigmoid",
                   "HardSwish", "Gelu", "Elu", "Selu", "Mish")
_NORM = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "Softmax", "LogSoftmax")
_MOVE = ("Concat", "Split", "Slice", "Transpose", "Resize", "Upsample", "Pad", "Gather", "GatherElements", "Expand",
         "Tile", "Cast", "CastLike", "DepthToSpace", "SpaceToDepth", "ScatterND")
FLOPS_PER_ELEMENT = {**{op: 1 for op in _ARITH}, **{op: 4 for op in _TRANSCENDENTAL}, **{op: 8 for op in _NORM},
                     **{op: 0 for op in _MOVE}}
_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "GlobalAveragePool")  # 1 per input
MATMUL_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Views and metadata, and Q/DQ that TensorRT folds into weights or fuses into the layers around them.
FREE_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Shape", "Size", "Identity", "Constant",
            "ConstantOfShape", "Dropout", "QuantizeLinear", "DequantizeLinear")
# ONNX TensorProto element types: float ones take the precision's size; others keep their own.
_FLOAT_TYPES = {1, 10, 11, 16}
_INT_BYTES = {2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 12: 4, 13: 8}


@dataclass(frozen=True)
class NodeCost:
    """One ONNX node's work. `precision` is what it runs in ("int8" = quantized layer); not executed = free."""

    name: str
    op: str
    flops: int
    bytes: int
    precision: str
    executed: bool = True
    note: str = ""  # why the count may be short: "unknown shape" or "op not in FLOPS_PER_ELEMENT"


# --- per-graph counting ---------------------------------------------------------------------------------


def with_batch(model, batch: int):
    """A copy of `model` with every symbolic dim of the inputs' first axis set to `batch`, shapes inferred."""
    from onnx import shape_inference

    model = type(model).FromString(model.SerializeToString())
    g = model.graph
    firsts = [i.type.tensor_type.shape.dim[0] for i in g.input if i.type.tensor_type.shape.dim]
    names = {d.dim_param for d in firsts} - {""}
    fixed = {d.dim_value for d in firsts if not d.dim_param and d.dim_value}
    if not names and fixed and fixed != {batch}:
        raise ConfigError(f"the model was exported for batch {min(fixed)} (static); ask for --batch {min(fixed)}")
    for v in [*g.input, *g.output, *g.value_info]:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_value = batch
    try:
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except shape_inference.InferenceError as exc:
        raise ConfigError(f"ONNX shape inference failed at batch {batch}: {str(exc).splitlines()[0]}") from None


def _tensor_info(model) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """name -> (shape or None when not fully known, element type) for every typed value of the graph."""
    g = model.graph
    info = {i.name: (tuple(i.dims), i.data_type) for i in g.initializer}
    for v in [*g.input, *g.output, *g.value_info]:
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        info[v.name] = (None if not tt.HasField("shape") or -1 in dims else dims, tt.elem_type)
    return info


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def _flops(node, info) -> int:
    """FLOPs of one node: 2 per multiply-add for Conv/MatMul/Gemm, FLOPS_PER_ELEMENT for the rest."""
    op, out = node.op_type, info.get(node.output[0], (None, 0))[0]

    def shape(i: int):
        return info.get(node.input[i], (None, 0))[0]

    if op == "Conv":  # 2·N·Cout·Hout·Wout·(Cin/group)·kh·kw; weight is [Cout, Cin/group, kh, kw]
        return 2 * _numel(out) * math.prod(shape(1)[1:])
    if op == "ConvTranspose":  # every input element meets (Cout/group)·kh·kw weights
        return 2 * _numel(shape(0)) * math.prod(shape(1)[1:])
    if op == "MatMul":  # 2·M·K·N per batch matrix
        return 2 * _numel(out) * shape(0)[-1]
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return 2 * _numel(out) * shape(0)[0 if trans_a else 1]
    if op in _REDUCE:
        return _numel(shape(0))
    return FLOPS_PER_ELEMENT.get(op, 1) * _numel(out)


def _elem_bytes(elem_type: int, float_bytes: int) -> int:
    return float_bytes if elem_type in _FLOAT_TYPES else _INT_BYTES.get(elem_type, 4)


def _bytes(node, info, float_bytes: int, quantized: bool, out_bytes: int) -> int:
    """Distinct inputs (weights included) and outputs; a quantized layer reads data and weights in 1 byte."""
    total, seen = 0, set()
    for i, name in enumerate(node.input):
        if not name or name in seen:
            continue
        seen.add(name)
        shape, et = info.get(name, (None, 1))
        size = (1 if i < 2 else 4) if quantized else _elem_bytes(et, float_bytes)  # int32/fp32 bias
        total += _numel(shape) * size
    for name in node.output:
        shape, et = info.get(name, (None, 1))
        total += _numel(shape) * (out_bytes if et in _FLOAT_TYPES else _elem_bytes(et, float_bytes))
    return total


def _graph_index(g):
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    return producer, consumers, has_qdq


def _is_quantized(node, producer, has_qdq: bool) -> bool:
    """Conv/MatMul/Gemm whose data and weight come through DequantizeLinear (every one of them without Q/DQ)."""
    if node.op_type not in MATMUL_OPS:
        return False
    return not has_qdq or all(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in node.input[:2])


def _is_free(node, info, consts: set[str]) -> bool:
    """Folded constants, views/metadata, Q/DQ, and integer shape arithmetic (TensorRT does it on the host)."""
    if node.op_type in FREE_OPS or all(i in consts for i in node.input if i):
        return True
    outs = [info.get(o, (None, 1)) for o in node.output]
    return all(et not in _FLOAT_TYPES and shape is not None and len(shape) <= 1 for shape, et in outs)


def graph_costs(model, batch: int, precision: str, float_layers: str = "fp32") -> list[NodeCost]:
    """FLOPs and bytes of every node of `model` at `batch` in `precision` (int8: quantized layers in 1 byte)."""
    check_choice("precision", precision, ESTIMATE_PRECISIONS)
    model = with_batch(model, batch)
    info, g = _tensor_info(model), model.graph
    producer, consumers, has_qdq = _graph_index(g)
    fl = precision if precision != "int8" else float_layers
    fbytes, consts = FLOAT_BYTES[fl], {i.name for i in g.initializer}
    costs = []
    for node in g.node:
        name = node.name or node.output[0]
        if _is_free(node, info, consts):
            if all(i in consts for i in node.input if i):
                consts.update(node.output)
            costs.append(NodeCost(name, node.op_type, 0, 0, "", executed=False))
            continue
        q = precision == "int8" and _is_quantized(node, producer, has_qdq)
        users = consumers.get(node.output[0], [])
        q_out = q and has_qdq and bool(users) and all(c.op_type == "QuantizeLinear" for c in users)
        out_bytes = 1 if q_out else fbytes
        costs.append(NodeCost(name, node.op_type, _flops(node, info), _bytes(node, info, fbytes, q, out_bytes),
                              "int8" if q else fl, note=_note(node, info)))
    return costs


def _note(node, info) -> str:
    if any(info.get(n, (None, 0))[0] is None for n in [*node.input, *node.output] if n):
        return "unknown shape"
    known = node.op_type in FLOPS_PER_ELEMENT or node.op_type in MATMUL_OPS or node.op_type in _REDUCE
    return "" if known else "op not in FLOPS_PER_ELEMENT"


def cost_warnings(costs: list[NodeCost]) -> list[str]:
    """What the counts leave out: tensors shape inference could not size (counted as 0), unlisted ops."""
    out = []
    for note, what in (("unknown shape", "counted 0 for the tensors shape inference left unsized"),
                       ("op not in FLOPS_PER_ELEMENT", "counted 1 FLOP per output element")):
        ops = sorted({c.op for c in costs if c.note == note})
        if ops:
            out.append(f"{sum(c.note == note for c in costs)} nodes ({', '.join(ops)}): {note}, {what}")
    return out


# --- roofline ---------------------------------------------------------------------------------------------
