"""An engine against ONNX Runtime on the same inputs, and the first layer where they part.

Shared by `cunet-edge export --format tensorrt` (export/tensorrt.py) and a deploy bundle's
build_engine.py, which gets a verbatim copy: numpy and the standard library at the top, onnx and
onnxruntime imported where used, no imports from the package, Python 3.8 syntax.

The core is backend-agnostic: a side is a callable feed -> {tensor name: array}.

- `check_feeds`: seeded inputs spread across the diffusion schedule (several timesteps, the model's
  input signature: float inputs get unit Gaussian noise, integer ones the timestep).
- `compare`: the two sides' outputs per timestep: max absolute error, max relative error (to the
  reference's largest magnitude), pass/fail against the precision's tolerance (TOLERANCES).
- `first_divergence`: with every intermediate tensor an output on both sides (Polygraphy's
  `--onnx-outputs mark all` / `--trt-outputs mark all`), the first tensor, in the ONNX graph's
  topological order, whose error exceeds the tolerance, with the ONNX node that makes it.
- `onnx_tensor_order` and `mark_all_outputs` (onnx), `ort_outputs` (onnxruntime): the ONNX Runtime side.
"""

from __future__ import annotations

import numpy as np

# (atol, rtol) per precision: a tensor passes when max|test - ref| <= atol + rtol * max|ref|. FP32 engines may
# use TF32 (export's default), whose 10-bit mantissa is about 1e-3 relative per op; FP16 about 1e-3 per op,
# compounded through the network; INT8 Q/DQ rounding is 1/254 of each tensor's range per quantized op.
TOLERANCES = {"fp32": (1e-4, 1e-3), "tf32": (1e-3, 1e-2), "fp16": (1e-3, 2e-2), "int8": (1e-2, 1.5e-1)}
DEFAULT_TIMESTEPS = 4
DEFAULT_BATCH = 2


class CheckError(ValueError):
    """Inputs the check cannot run on; one line."""


def tolerance(precision, tf32=False):
    """(atol, rtol) for an engine of `precision` ("fp32", "fp16", "int8"); `tf32`: an fp32 build with TF32 on."""
    key = "tf32" if precision == "fp32" and tf32 else precision
    if key not in TOLERANCES:
        raise CheckError("no tolerance for precision %r (one of fp32, fp16, int8)" % (precision,))
    return TOLERANCES[key]


def schedule_timesteps(num_timesteps, n=DEFAULT_TIMESTEPS):
    """`n` timesteps spread evenly over 0..num_timesteps-1, both ends included."""
    if num_timesteps < 1 or n < 1:
        raise CheckError("a schedule of %r timesteps and %r checks cannot be spread" % (num_timesteps, n))
    return sorted({int(round(v)) for v in np.linspace(0, num_timesteps - 1, n)})


def check_feeds(signature, num_timesteps, n=DEFAULT_TIMESTEPS, batch=DEFAULT_BATCH, seed=0):
    """[(t, feed)]: one seeded feed per timestep of `schedule_timesteps`, shaped by the signature (a dynamic batch
    dim gets `batch`)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in schedule_timesteps(num_timesteps, n):
        feed = {}
        for name, spec in signature["inputs"].items():
            shape = [d if isinstance(d, int) else batch for d in spec["shape"]]
            dtype = np.dtype(spec["dtype"])
            if dtype.kind in "iu":
                feed[name] = np.full(shape, t, dtype=dtype)
            elif dtype.kind == "f":
                feed[name] = rng.standard_normal(shape).astype(dtype)
            else:
                raise CheckError("input %r has dtype %s; the check feeds float and integer inputs" % (name, dtype))
        out.append((t, feed))
    return out


def errors(ref, test):
    """(max abs error, max abs error / max|ref|) of two arrays, in float64; shapes must agree."""
    ref, test = np.asarray(ref, dtype=np.float64), np.asarray(test, dtype=np.float64)
    if ref.shape != test.shape:
        raise CheckError("shapes differ: %s vs %s" % (ref.shape, test.shape))
    if ref.size == 0:
        return 0.0, 0.0
    diff = np.abs(test - ref)
    abs_err = float(np.max(diff)) if np.all(np.isfinite(diff)) else float("inf")
    scale = float(np.max(np.abs(ref))) if np.all(np.isfinite(ref)) else float("inf")
    return abs_err, abs_err / max(scale, 1e-12)


def within(ref, test, tol):
    """Whether `test` matches `ref` within (atol, rtol), and its errors."""
    atol, rtol = tol
    abs_err, rel_err = errors(ref, test)
    scale = float(np.max(np.abs(np.asarray(ref, dtype=np.float64)))) if np.size(ref) else 0.0
    return bool(np.isfinite(abs_err) and abs_err <= atol + rtol * scale), abs_err, rel_err


def compare(reference, test, feeds, tol, outputs=None):
    """Run both sides on each (t, feed); per timestep the worst output's errors and pass/fail.

    `reference`, `test`: feed -> {name: array}; `outputs`: the names compared (default: the reference's)."""
    rows = []
    for t, feed in feeds:
        ref, got = reference(feed), test(feed)
        names = list(outputs or ref)
        missing = [n for n in names if n not in got]
        if missing:
            raise CheckError("the engine has no output %s" % ", ".join(repr(n) for n in missing))
        ok, worst_abs, worst_rel = True, 0.0, 0.0
        for name in names:
            good, abs_err, rel_err = within(ref[name], got[name], tol)
            ok, worst_abs, worst_rel = ok and good, max(worst_abs, abs_err), max(worst_rel, rel_err)
        rows.append({"t": int(t), "max_abs_err": worst_abs, "max_rel_err": worst_rel, "ok": ok})
    return {"ok": all(r["ok"] for r in rows), "tolerance": {"atol": tol[0], "rtol": tol[1]}, "per_timestep": rows}


def first_divergence(reference, test, feed, order, tol):
    """The first tensor of `order` [(tensor, node name, op type)] (topological) that both sides produce on `feed`
    and that differs beyond `tol`: {tensor, node, op_type, max_abs_err, max_rel_err, compared}; tensor None if none
    does (`compared` counts the tensors both sides had)."""
    ref, got = reference(feed), test(feed)
    compared = 0
    for tensor, node, op_type in order:
        if tensor not in ref or tensor not in got:
            continue
        compared += 1
        good, abs_err, rel_err = within(ref[tensor], got[tensor], tol)
        if not good:
            return {"tensor": tensor, "node": node, "op_type": op_type, "max_abs_err": abs_err,
                    "max_rel_err": rel_err, "compared": compared}
    return {"tensor": None, "compared": compared}


def check(reference, test, feeds, tol, *, outputs=None, divergence=None):
    """`compare`, and on a mismatch `divergence(feed)` (a `first_divergence` over both sides' every tensor, which
    may need a debug build: it runs only then) on the worst timestep's feed. The record export and bundles write."""
    result = compare(reference, test, feeds, tol, outputs)
    result["first_divergence"] = None
    if not result["ok"] and divergence is not None:
        worst = max(range(len(feeds)), key=lambda i: result["per_timestep"][i]["max_rel_err"])
        result["first_divergence"] = dict(divergence(feeds[worst][1]), t=int(feeds[worst][0]))
    return result


def onnx_divergence(model, test_all, tol):
    """divergence(feed) for `check`: ONNX Runtime with every tensor of onnx `model` marked, against `test_all`
    (feed -> every tensor the other side marked), in the model's topological order. The marked session (a copy of
    the model with shape inference, and an ONNX Runtime session with every tensor an output) is made on the first
    call, so a check that passes never pays for it."""
    order = onnx_tensor_order(model)
    reference_all = []

    def divergence(feed):
        if not reference_all:
            reference_all.append(ort_outputs(mark_all_outputs(model)))
        return first_divergence(reference_all[0], test_all, feed, order, tol)
    return divergence


def summary_line(result, what="engine"):
    """One line: passed/FAILED, the worst errors, and where it first diverged."""
    rows = result["per_timestep"]
    worst = max(rows, key=lambda r: r["max_rel_err"])
    tol = result["tolerance"]
    line = ("%s check against ONNX Runtime %s: max abs error %.3g, max rel error %.3g (at t=%d) over timesteps %s "
            "(atol %g, rtol %g)") % (
        what, "passed" if result["ok"] else "FAILED", max(r["max_abs_err"] for r in rows), worst["max_rel_err"],
        worst["t"], ",".join(str(r["t"]) for r in rows), tol["atol"], tol["rtol"])
    div = result.get("first_divergence")
    if div and div.get("tensor"):
        line += "; first diverging layer: %s node %r (tensor %r, max rel error %.3g at t=%d)" % (
            div["op_type"], div["node"], div["tensor"], div["max_rel_err"], div["t"])
    elif div is not None and div.get("error"):
        line += "; no first diverging layer: %s" % div["error"]
    elif div is not None:
        line += "; no intermediate tensor differs beyond the tolerance (%d compared)" % div["compared"]
    return line


# ---------------------------------------------------------------- the ONNX Runtime side

def onnx_tensor_order(model):
    """[(tensor, node name, op type)] for every node output of an onnx ModelProto, in the graph's node order
    (topological: the ONNX spec requires it of a valid graph)."""
    out = []
    for i, node in enumerate(model.graph.node):
        for tensor in node.output:
            if tensor:
                out.append((tensor, node.name or "%s_%d" % (node.op_type, i), node.op_type))
    return out


def mark_all_outputs(model):
    """A copy of an onnx ModelProto whose every node output is a graph output (Polygraphy's --onnx-outputs mark
    all), typed from shape inference where it knows the type."""
    import onnx

    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(marked)
    except Exception:  # noqa: BLE001 -- inference is a help for the types; untyped outputs work on ORT too
        inferred = marked
    typed = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    have = {o.name for o in marked.graph.output}
    for tensor, _, _ in onnx_tensor_order(marked):
        if tensor not in have:
            vi = onnx.ValueInfoProto()
            if tensor in typed:
                vi.CopyFrom(typed[tensor])
            else:
                vi.name = tensor
            marked.graph.output.append(vi)
            have.add(tensor)
    return marked


def ort_outputs(model, providers=None):
    """feed -> {output name: array} of an onnx ModelProto (or a path) on ONNX Runtime (CPU unless `providers`)."""
    import onnxruntime as ort

    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    options = ort.SessionOptions()
    # The reference runs the graph as written: fusions would hide the intermediate tensors marked as outputs.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(data, options, providers=providers or ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feed):
        return dict(zip(names, session.run(names, feed)))
    return run
