"""INT8 Q/DQ insertion written by hand, because ONNX Runtime's quantizer cannot take this graph.

The unrolled network uses each ODE-function weight at every solver stage; ONNX Runtime's
`quantize_static` refuses such shared weights ("Quantization parameter shared mode is not
supported for weight yet"), and duplicating them multiplies the model size by the NFE. Here:

- each weight initializer is quantized **once** (INT8, symmetric, per output channel) and
  dequantized by one DequantizeLinear node that feeds every stage's Conv;
- each activation tensor gets a Q/DQ pair of its own, with the range calibrated for that
  tensor, so every solver stage and every use has its own scale;
- a 1×1 Conv over a skip concatenation whose two inputs have very different ranges is split
  into two Convs over the parts plus an Add (Q-Diffusion's split): each part gets its own
  scale, the weights are sliced, not copied.

Schemes: `tensorrt` — INT8 symmetric activations and weights (zero point 0), Q/DQ on the
inputs of quantized layers only, where TensorRT fuses them (its explicit-quantization
rules). `cpu` — ONNX Runtime's fast CPU path: U8 activations (asymmetric), S8 per-channel
weights, int32 bias and a Q/DQ on the Conv output too, so that ORT fuses DQ→Conv→Q into
QLinearConv (U8S8, VNNI-friendly); cheap ops stay in float.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["QuantScheme", "SCHEMES", "insert_qdq", "quantizable_nodes"]


@dataclass(frozen=True)
class QuantScheme:
    """What the target runtime wants from the Q/DQ graph."""

    name: str
    act_dtype: str  # "int8" or "uint8"
    symmetric_act: bool
    quantize_outputs: bool
    int32_bias: bool
    op_types: tuple[str, ...] = ("Conv",)
    split_concat: bool = False


SCHEMES = {
    "tensorrt": QuantScheme("tensorrt", "int8", True, False, False, ("Conv", "MatMul"), split_concat=True),
    "cpu": QuantScheme("cpu", "uint8", False, True, True, ("Conv",)),
}


def quantizable_nodes(model, scheme: QuantScheme) -> list[str]:
    """Names of the nodes the scheme would quantize (Convs with constant weights; attention MatMuls)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type == "Conv" and n.op_type in scheme.op_types and len(n.input) > 1 and n.input[1] in inits:
            out.append(n.name)
        elif n.op_type == "MatMul" and n.op_type in scheme.op_types:
            out.append(n.name)
    return out


@dataclass
class _Builder:
    """Accumulates new nodes and initializers; remembers what it has already quantized."""

    model: object
    scheme: QuantScheme
    ranges: dict
    nodes_before: dict = field(default_factory=dict)  # node name -> list of nodes to insert before it
    new_inits: list = field(default_factory=list)
    act_done: dict = field(default_factory=dict)
    weight_done: dict = field(default_factory=dict)
    counter: int = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}__q{self.counter}"

    def const(self, base: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name


def _act_params(lo: float, hi: float, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of one activation tensor from its calibrated range."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if scheme.symmetric_act:
        amax = max(abs(lo), abs(hi), 1e-8)
        zp_dtype = np.int8 if scheme.act_dtype == "int8" else np.uint8
        zp = 0 if zp_dtype == np.int8 else 128
        return np.float32(amax / 127.0), np.array(zp, dtype=zp_dtype)
    scale = max(hi - lo, 1e-8) / 255.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return np.float32(scale), np.array(zp, dtype=np.uint8)


def _qdq_act(b: _Builder, tensor: str, before: str, rng=None) -> str:
    """A Q→DQ pair on `tensor` (once per tensor); returns the dequantized name."""
    from onnx import helper

    if tensor in b.act_done:
        return b.act_done[tensor]
    lo, hi = rng if rng is not None else b.ranges[tensor]
    scale, zp = _act_params(lo, hi, b.scheme)
    s, z = b.const(f"{tensor}_scale", scale), b.const(f"{tensor}_zp", zp)
    q, dq = b.name(f"{tensor}_q"), b.name(f"{tensor}_dq")
    b.nodes_before.setdefault(before, []).extend([
        helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=b.name("Q")),
        helper.make_node("DequantizeLinear", [q, s, z], [dq], name=b.name("DQ")),
    ])
    b.act_done[tensor] = dq
    return dq


def _weight_scale(w: np.ndarray, axis: int) -> np.ndarray:
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    return (np.maximum(np.abs(w).max(axis=reduce), 1e-12) / 127.0).astype(np.float32)


def _qdq_weight(b: _Builder, name: str, w: np.ndarray, axis: int, before: str) -> tuple[str, np.ndarray]:
    """INT8 per-channel weight, stored once, one DequantizeLinear shared by every user."""
    from onnx import helper

    if name in b.weight_done:
        return b.weight_done[name]
    scale = _weight_scale(w, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    wq = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    q, s = b.const(f"{name}_int8", wq), b.const(f"{name}_scale", scale)
    z = b.const(f"{name}_zp", np.zeros(scale.shape, dtype=np.int8))
    out = b.name(f"{name}_dq")
    b.nodes_before.setdefault(before, []).append(
        helper.make_node("DequantizeLinear", [q, s, z], [out], name=b.name("DQw"), axis=axis))
    b.weight_done[name] = (out, scale)
    return out, scale


def _act_scale(b: _Builder, tensor: str) -> np.float32:
    return _act_params(*b.ranges[tensor], b.scheme)[0]


def _int32_bias(b: _Builder, node, x: str, wscale: np.ndarray, bias: np.ndarray) -> str:
    """Bias as int32 with scale s_x·s_w (what ORT's QLinearConv fusion expects); one per use."""
    from onnx import helper

    scale = (_act_scale(b, x) * wscale).astype(np.float32)
    bq = np.round(bias / scale).astype(np.int32)
    q, s = b.const(f"{node.input[2]}_int32", bq), b.const(f"{node.input[2]}_scale", scale)
    z = b.const(f"{node.input[2]}_zp", np.zeros(scale.shape, dtype=np.int32))
    out = b.name(f"{node.input[2]}_dq")
    b.nodes_before.setdefault(node.name, []).append(
        helper.make_node("DequantizeLinear", [q, s, z], [out], name=b.name("DQb"), axis=0))
    return out


def _qdq_output(b: _Builder, node, after: dict) -> None:
    """Q/DQ on a node's output, keeping the original tensor name for its consumers."""
    from onnx import helper

    y = node.output[0]
    raw = b.name(f"{y}_fp")
    node.output[0] = raw
    scale, zp = _act_params(*b.ranges[y], b.scheme)
    s, z = b.const(f"{y}_scale", scale), b.const(f"{y}_zp", zp)
    q = b.name(f"{y}_q")
    after.setdefault(node.name, []).extend([
        helper.make_node("QuantizeLinear", [raw, s, z], [q], name=b.name("Q")),
        helper.make_node("DequantizeLinear", [q, s, z], [y], name=b.name("DQ")),
    ])


def _quantize_node(b: _Builder, node, weights: dict, after: dict) -> None:
    if node.op_type == "MatMul":
        for i, inp in enumerate(node.input):
            node.input[i] = _qdq_act(b, inp, node.name)
        return
    x, w = node.input[0], node.input[1]
    wdq, wscale = _qdq_weight(b, w, weights[w], 0, node.name)
    node.input[0] = _qdq_act(b, x, node.name)
    node.input[1] = wdq
    if b.scheme.int32_bias and len(node.input) > 2 and node.input[2] in weights:
        node.input[2] = _int32_bias(b, node, x, wscale, weights[node.input[2]])
    if b.scheme.quantize_outputs and node.output[0] in b.ranges:
        _qdq_output(b, node, after)


# A 1x1 Conv over a skip concatenation is split when its inputs' ranges differ by more than this.
SPLIT_RANGE_RATIO = 2.0


def _amax(rng) -> float:
    return max(abs(rng[0]), abs(rng[1]), 1e-12)


def _split_parts(node, producer: dict, weights: dict, channels: dict, ranges: dict) -> list[tuple[str, int]] | None:
    """(input, channels) of the concat under a 1x1 Conv, if splitting it gives each part a better scale."""
    w = weights.get(node.input[1])
    cat = producer.get(node.input[0])
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if w is None or w.shape[2:] != (1, 1) or group != 1 or cat is None or cat.op_type != "Concat":
        return None
    if next((a.i for a in cat.attribute if a.name == "axis"), None) not in (1, -3):
        return None
    parts = [(i, channels.get(i)) for i in cat.input]
    if any(c is None or i not in ranges for i, c in parts) or sum(c for _, c in parts) != w.shape[1]:
        return None
    amax = [_amax(ranges[i]) for i, _ in parts]
    return parts if max(amax) / min(amax) > SPLIT_RANGE_RATIO else None


def _split_conv(b: _Builder, node, parts, weights: dict) -> list:
    """Conv(concat(a, b), W) as Conv(a, W[:, :Ca]) + Conv(b, W[:, Ca:]): each part its own scale (Q-Diffusion)."""
    from onnx import helper

    w, off, convs = weights[node.input[1]], 0, []
    for k, (inp, c) in enumerate(parts):
        wname = b.name(f"{node.input[1]}_part{k}")
        weights[wname] = np.ascontiguousarray(w[:, off:off + c])
        off += c
        ins = [inp, wname] + ([node.input[2]] if k == 0 and len(node.input) > 2 else [])
        conv = helper.make_node("Conv", ins, [b.name(f"{node.output[0]}_part{k}")], name=b.name(f"{node.name}_part{k}"))
        conv.attribute.extend(node.attribute)
        convs.append(conv)
    adds, acc = [], convs[0].output[0]
    for k, conv in enumerate(convs[1:], 1):
        out = node.output[0] if k == len(convs) - 1 else b.name(f"{node.output[0]}_sum")
        adds.append(helper.make_node("Add", [acc, conv.output[0]], [out], name=b.name(f"{node.name}_sum")))
        acc = out
    return convs + adds


def _channels(model) -> dict:
    """Channel count (dim 1) of every tensor whose shape inference knows it."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 1 and dims[1].HasField("dim_value"):
            out[vi.name] = dims[1].dim_value
    return out


def insert_qdq(model, ranges: dict, scheme: QuantScheme, float_nodes=frozenset()):
    """A copy of `model` with the scheme's Q/DQ inserted on every quantizable node not in `float_nodes`."""
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    for i, n in enumerate(graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    b, after, replaced = _Builder(model, scheme, ranges), {}, {}
    targets = set(quantizable_nodes(model, scheme)) - set(float_nodes)
    producer = {o: n for n in graph.node for o in n.output}
    channels = _channels(model) if scheme.split_concat else {}
    for node in list(graph.node):
        if node.name not in targets:
            continue
        parts = _split_parts(node, producer, weights, channels, ranges) if scheme.split_concat else None
        if parts is None:
            _quantize_node(b, node, weights, after)
            continue
        replaced[node.name] = _split_conv(b, node, parts, weights)
        for conv in replaced[node.name]:
            if conv.op_type == "Conv":
                _quantize_node(b, conv, weights, after)
    ordered = []
    for node in graph.node:
        for n in replaced.get(node.name, [node]):
            ordered += b.nodes_before.get(n.name, []) + [n] + after.get(n.name, [])
    del graph.node[:]
    graph.node.extend(ordered)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + b.new_inits)
    return model
