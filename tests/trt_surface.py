"""Real TensorRT API surfaces (tests/data/trt_surface/*.json, dumped by scripts/trt_surfaces.py) and a fake
`tensorrt` module derived from one: it has exactly the names, members and method signatures of that
version, so a misspelt or removed name raises AttributeError as the real module would, and a call
whose arguments fit none of the real signatures raises TypeError. Behaviour (what a method returns,
what a property reads) comes from the test; everything else is recorded in `module.LOG`.

Also: `project_trt_names()`, every `trt.X.Y` attribute chain the project's code touches (an AST walk).

A board script's subprocess gets one through a `tensorrt.py` on its PYTHONPATH that builds a
FakeTensorRT and puts it in sys.modules (tests/test_deploy.py).
"""

from __future__ import annotations

import ast
import json
import re
import types
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "trt_surface"
ROOT = Path(__file__).resolve().parent.parent
# The surfaces: TensorRT 8.6 (newest 8.x on PyPI; JetPack 5 ships 8.5.2), 10.3 (JetPack 6), newest 10.x, newest 11.x.
VERSIONS = ("8.6.1", "10.3.0", "10.16.1.11", "11.4.0.106")
# Names the code uses only on some versions, and the versions where it would (its version branches).
GATED = {
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH": {"8.6.1"},  # explicit batch: required before 10.0
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": {"10.3.0", "10.16.1.11"},  # always on from 11.0
}


@lru_cache(maxsize=None)
def load_surface(version: str) -> dict:
    return json.loads((DATA / f"{version}.json").read_text())


def has(surface: dict, chain: str) -> bool:
    """Whether `chain` ("BuilderFlag.FP16", "Logger.WARNING", "Builder") names something in the surface."""
    names = surface["names"]
    parts = chain.split(".")
    for i in range(len(parts), 0, -1):  # the longest prefix that is a top-level name ("Logger.Severity")
        head = ".".join(parts[:i])
        if head in names:
            break
    else:
        return False
    entry, rest = names[head], parts[i:]
    for j, part in enumerate(rest):
        if entry["kind"] == "enum":
            return part in entry["values"] and j == len(rest) - 1
        if entry["kind"] != "class" or part not in entry["members"]:
            return False
        member = entry["members"][part]
        if member["kind"] == "class":
            entry = names.get(member["name"]) or names.get(f"{head}.{part}") or {"kind": "?"}
        elif j < len(rest) - 1:
            return False
    return True


# ---------------------------------------------------------------- the project's TensorRT names (AST)

PACKAGE_DIRS = ("cunet_edge", "export", "quantize", "runtimes", "devices")
_TRT_ROOTS = {"trt", "_trt"}  # names (and self.<name> attributes) the code binds the module to


@lru_cache(maxsize=None)
def project_files() -> tuple[str, ...]:
    """Every project source file (the bundle's scripts included) that imports tensorrt or uses a `trt` name."""
    files = sorted({p.resolve().relative_to(ROOT).as_posix() for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py")})
    uses = re.compile(r"import tensorrt\b|import_tensorrt\(\)|\b_?trt\.")
    return tuple(f for f in files if uses.search((ROOT / f).read_text()))


def _chain(node) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in _TRT_ROOTS:
        return parts[::-1]
    if parts and isinstance(node, ast.Name) and node.id == "self" and parts[-1] in _TRT_ROOTS:
        return parts[-2::-1]
    return None


def project_trt_names(files=None) -> dict[str, list[str]]:
    """{"BuilderFlag.GPU_FALLBACK": ["export/tensorrt.py:171", ...]}: each longest `trt.X.Y` chain in the code."""
    found: dict[str, list[str]] = {}
    for rel in files or project_files():
        tree = ast.parse((ROOT / rel).read_text())
        inner = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in inner:
                parts = _chain(node)
                if parts:
                    sub = node.value
                    while isinstance(sub, ast.Attribute):
                        inner.add(id(sub))
                        sub = sub.value
                    found.setdefault(".".join(parts), []).append(f"{rel}:{node.lineno}")
    # Drop chains that end in a dunder (trt.__version__ is checked by the version tests) and keep methods'
    # owners: `trt.Logger.WARNING` is a chain; `trt.Logger(...)` a prefix of it.
    return {k: v for k, v in sorted(found.items()) if not k.split(".")[-1].startswith("__")}


# Names the code gives TensorRT objects (locals, or self.<name>) -> their TensorRT class; the walk below checks
# every member the code reads on them. (Members read on a call's result, `x.get_timing_cache().serialize()`, are
# not seen here: the fake-based build tests run those lines.)
HOLDERS = {"builder": "Builder", "config": "IBuilderConfig", "network": "INetworkDefinition", "parser": "OnnxParser",
           "profile": "IOptimizationProfile", "engine": "ICudaEngine", "context": "IExecutionContext",
           "_runtime": "Runtime", "inp": "ITensor", "layer": "ILayer", "cache": "ITimingCache",
           "tensor": "ITensor", "inspector": "EngineInspector"}


def project_member_uses(files=None) -> dict[str, list[str]]:
    """{"IExecutionContext.execute_async_v3": ["runtimes/tensorrt_runner.py:80", ...]}: members read on TensorRT
    objects, found by the names the code holds them in (HOLDERS)."""
    found: dict[str, list[str]] = {}
    for rel in files or project_files():
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            holder = node.value
            name = holder.id if isinstance(holder, ast.Name) else (
                holder.attr if isinstance(holder, ast.Attribute) and isinstance(holder.value, ast.Name)
                and holder.value.id == "self" else None)
            if name in HOLDERS:
                found.setdefault(f"{HOLDERS[name]}.{node.attr}", []).append(f"{rel}:{node.lineno}")
    return dict(sorted(found.items()))


# ---------------------------------------------------------------- the fake module

class FakeError(AssertionError):
    """The test gave the fake no behaviour for something the code under test used."""


def _split_params(sig: str) -> tuple[list[tuple[str, bool]], str]:
    """("name(a: T, b: int = 0) -> R") -> ([("a", False), ("b", True)], "R"); params as (name, has_default)."""
    m = re.match(r"^\w+\((.*)\)(?: -> (.+))?$", sig)
    body, ret = m.group(1), (m.group(2) or "").strip()
    params, depth, cur = [], 0, ""
    for ch in body + ",":
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            if cur.strip():
                params.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out = []
    for p in params:
        if p in ("*", "/") or p.startswith("*"):
            out.append((p, True))
            continue
        out.append((p.split(":")[0].split("=")[0].strip(), "=" in p))
    return out, ret


def _fits(sig: str, args, kwargs) -> bool:
    params, _ = _split_params(sig)
    if any(p[0].startswith("*") for p in params):
        return True
    names = [p for p, _ in params]
    if len(args) > len(names) or any(k not in names[len(args):] for k in kwargs):
        return False
    return all(d or i < len(args) or n in kwargs for i, (n, d) in enumerate(params))


class EnumValue(int):
    def __new__(cls, enum: str, name: str, value: int):
        obj = super().__new__(cls, value)
        obj.enum, obj.name = enum, name
        return obj

    def __repr__(self):
        return f"<{self.enum}.{self.name}: {int(self)}>"

    def __str__(self):  # as pybind11 enums print
        return f"{self.enum.split('.')[-1]}.{self.name}"

    @property
    def value(self):
        return int(self)


class FakeTensorRT(types.ModuleType):
    """A `tensorrt` module with one real version's names; behaviours: {"Class.member" or "function": value}.

    A behaviour for a method or function is a callable (self_state, *args, **kwargs) -> result (functions get
    no self_state); for a property, a value or a callable (self_state) -> value. Instances keep their state in
    a dict (`obj._state`, shared with behaviours); properties set by the code land there and in LOG.
    """

    def __init__(self, version: str, behaviours: dict | None = None):
        super().__init__("tensorrt")
        self._surface = load_surface(version)
        self._names = self._surface["names"]
        self._behaviours = dict(behaviours or {})
        self._classes: dict = {}
        self.__version__ = self._surface["tensorrt_version"]
        self.LOG: list = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        entry = self._names.get(name)
        if entry is None:
            raise AttributeError(f"module 'tensorrt' has no attribute '{name}' (TensorRT {self.__version__})")
        if entry["kind"] in ("class", "enum"):
            value = self._class(name)
        elif entry["kind"] == "function":
            value = self._function(name, entry)
        else:
            raise FakeError(f"the fake has no value for the constant tensorrt.{name}")
        setattr(self, name, value)
        return value

    def _function(self, name, entry):
        def call(*args, **kwargs):
            self._check(name, entry, args, kwargs)
            self.LOG.append((name, args, kwargs))
            if name not in self._behaviours:
                raise FakeError(f"no behaviour for tensorrt.{name}")
            return self._behaviours[name](*args, **kwargs)
        return call

    @staticmethod
    def _signatures(entry) -> list[str]:
        sigs = entry.get("signatures") or []
        if len(sigs) > 1:  # pybind11's overload header "name(*args, **kwargs)" is not a signature of its own
            sigs = [s for s in sigs if not s.endswith("(*args, **kwargs)")]
        return sigs

    def _check(self, qual, entry, args, kwargs):
        sigs = self._signatures(entry)
        if sigs and not any(_fits(s, args, kwargs) for s in sigs):
            raise TypeError(f"{qual}(): incompatible arguments {args!r} {kwargs!r}; TensorRT {self.__version__} "
                            f"takes {' | '.join(sigs)}")

    def _class(self, qual: str):
        if qual in self._classes:
            return self._classes[qual]
        entry = self._names[qual]
        module = self
        if entry["kind"] == "enum":
            cls = type(qual.split(".")[-1], (), {"__qualname__": qual, "__module__": "tensorrt"})
            for k, v in entry["values"].items():
                setattr(cls, k, EnumValue(qual, k, v))
            cls.__members__ = {k: getattr(cls, k) for k in entry["values"]}
            self._classes[qual] = cls
            return cls
        members = entry["members"]

        class Meta(type):
            def __getattr__(cls, name):
                m = members.get(name)
                if m is None or name.startswith("__"):
                    raise AttributeError(f"type object 'tensorrt.{qual}' has no attribute '{name}' "
                                         f"(TensorRT {module.__version__})")
                if m["kind"] == "enum_value":
                    return EnumValue(m["enum"], name, m["value"])
                if m["kind"] == "class":
                    return module._class(m["name"] if m["name"] in module._names else f"{qual}.{name}")
                raise FakeError(f"tensorrt.{qual}.{name} read from the class: the fake does not model it")

        def __init__(obj, *args, **kwargs):
            if not entry.get("init"):
                raise TypeError(f"tensorrt.{qual}: No constructor defined! (TensorRT {module.__version__}; "
                                "a test makes one with FakeTensorRT.new)")
            module._check(f"{qual}.__init__", {"signatures": entry["init"]}, args, kwargs)
            object.__setattr__(obj, "_state", {"args": args, "kwargs": kwargs})
            module.LOG.append((qual, args, kwargs))
            init = module._behaviours.get(f"{qual}.__init__")
            if init:
                init(obj._state, *args, **kwargs)

        def __getattr__(obj, name):
            m = members.get(name)
            if m is None or name.startswith("__"):
                raise AttributeError(f"'tensorrt.{qual}' object has no attribute '{name}' "
                                     f"(TensorRT {module.__version__})")
            key = f"{qual}.{name}"
            if m["kind"] == "method":
                def method(*args, **kwargs):
                    module._check(key, m, args, kwargs)
                    module.LOG.append((key, args, kwargs))
                    if key in module._behaviours:
                        return module._behaviours[key](obj._state, *args, **kwargs)
                    return module._default(key, m)
                return method
            if m["kind"] == "property":
                if name in obj._state:
                    return obj._state[name]
                if key in module._behaviours:
                    b = module._behaviours[key]
                    return b(obj._state) if callable(b) else b
                raise FakeError(f"no behaviour for the property tensorrt.{key}")
            return getattr(type(obj), name)

        def __setattr__(obj, name, value):
            m = members.get(name)
            if m is None or m["kind"] != "property":
                raise AttributeError(f"'tensorrt.{qual}' object has no attribute '{name}' "
                                     f"(TensorRT {module.__version__})")
            if not m["settable"]:
                raise AttributeError(f"tensorrt.{qual}.{name} is read-only")
            module.LOG.append((f"{qual}.{name}=", (value,), {}))
            obj._state[name] = value

        cls = Meta(qual.split(".")[-1], (), {"__init__": __init__, "__getattr__": __getattr__,
                                              "__setattr__": __setattr__, "__qualname__": qual,
                                              "__module__": "tensorrt"})
        self._classes[qual] = cls
        return cls

    def new(self, qual: str):
        """An instance of class `qual` as TensorRT hands them out (ITensor, ILayer, ICudaEngine: no constructor)."""
        obj = object.__new__(self._class(qual))
        object.__setattr__(obj, "_state", {})
        return obj

    def _default(self, key, member):
        """A method with no behaviour: None for `-> None`, True for `-> bool`, a fresh object for a TensorRT class."""
        rets = {_split_params(s)[1] for s in self._signatures(member)}
        if rets == {"None"}:
            return None
        if rets == {"bool"}:
            return True
        if len(rets) == 1 and next(iter(rets)) in self._names and self._names[next(iter(rets))]["kind"] == "class":
            return self.new(next(iter(rets)))
        raise FakeError(f"no behaviour for tensorrt.{key} (returns {' | '.join(sorted(rets)) or '?'})")

    def calls(self, key: str) -> list:
        """The argument tuples of every recorded call (or property set, key "Class.name=") of `key`."""
        return [args for k, args, _ in self.LOG if k == key]


def engine_runtime(version: str) -> FakeTensorRT:
    """The fake of `version` behaving as a deserialized engine eps = 0.5 x + 1e-3 t, reading and writing the
    addresses the code binds (host memory here: the fake CUDA bindings of the bundle tests allocate there)."""
    import ctypes

    import numpy as np

    fake = FakeTensorRT(version)
    t_type = "INT32" if version.startswith("8.") else "INT64"  # t is int32 before TensorRT 10
    np_types = {"FLOAT": np.float32, "INT32": np.int32, "INT64": np.int64}

    def execute(st, stream):
        shapes, addr = st["shapes"], st["addr"]
        n, b = int(np.prod(shapes["x"])), shapes["t"][0]
        x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(addr["x"]))
        t_c = ctypes.c_int32 if t_type == "INT32" else ctypes.c_int64
        t = np.ctypeslib.as_array((t_c * b).from_address(addr["t"]))
        out = np.ctypeslib.as_array((ctypes.c_float * n).from_address(addr["eps"]))
        out[:] = (x.reshape(b, -1) * 0.5 + t[:, None] * 1e-3).ravel()
        st.setdefault("streams", []).append(stream)
        return True

    fake._behaviours.update({
        "Runtime.deserialize_cuda_engine": lambda st, data: fake.new("ICudaEngine") if data == b"PLAN" else None,
        "ICudaEngine.num_io_tensors": 3,
        "ICudaEngine.get_tensor_name": lambda st, i: ["x", "t", "eps"][i],
        "ICudaEngine.get_tensor_mode": lambda st, n: getattr(fake.TensorIOMode, "OUTPUT" if n == "eps" else "INPUT"),
        "ICudaEngine.get_tensor_dtype": lambda st, n: getattr(fake.DataType, t_type if n == "t" else "FLOAT"),
        "ICudaEngine.get_tensor_shape": lambda st, n: (-1, 1, 8, 8) if n == "x" else (-1,),
        "ICudaEngine.get_tensor_profile_shape": lambda st, n, i: [(1, 1, 8, 8), (1, 1, 8, 8), (8, 1, 8, 8)],
        "nptype": lambda d: np_types[d.name],
        "IExecutionContext.set_input_shape": lambda st, n, s: s[0] <= 8 and (
            st.setdefault("shapes", {}).update({n: tuple(s)}) or True),  # the profile's max batch is 8
        "IExecutionContext.get_tensor_shape": lambda st, n: st["shapes"]["x"],
        "IExecutionContext.set_tensor_address": lambda st, n, p: st.setdefault("addr", {}).update({n: p}) or True,
        "IExecutionContext.execute_async_v3": execute,
    })
    return fake


# ---------------------------------------------------------------- what an engine's inspector says

# Tensor "Format/Datatype" strings as TensorRT's inspector writes them (the NVIDIA/TensorRT repository's
# tools/experimental/trt-engine-explorer/tests/inputs/mobilenet.qat.onnx.engine.graph.json).
FORMATS = {"FP32": "Row major linear FP32", "FP16": "Channel major FP16 format where channel % 8 == 0",
           "INT8": "Thirty-two wide channel vectorized row major Int8 format"}
WEIGHT_TYPES = {"FP32": "Float", "FP16": "Half", "INT8": "Int8"}
INSPECTOR_NAMES = ("ICudaEngine.create_engine_inspector", "EngineInspector.get_engine_information",
                   "LayerInformationFormat.JSON", "ProfilingVerbosity.DETAILED", "IBuilderConfig.profiling_verbosity")


def engine_information(layers, detailed=True) -> str:
    """The JSON IEngineInspector.get_engine_information(JSON) returns for `layers` [(name, LayerType, precision,
    tactic)]: at DETAILED verbosity one object per layer (Name, LayerType, Inputs/Outputs with Format/Datatype,
    Weights for convolutions, TacticName, TacticValue); below it only the names, as TensorRT does."""
    if not detailed:
        return json.dumps({"Layers": [name for name, *_ in layers], "Bindings": ["x", "t", "eps"]})
    out = []
    for i, (name, kind, precision, tactic) in enumerate(layers):
        entry = {"Name": name, "LayerType": kind,
                 "Inputs": [{"Name": f"in{i}", "Location": "Device", "Dimensions": [4, 8, 8, 8],
                             "Format/Datatype": FORMATS[precision]}],
                 "Outputs": [{"Name": f"out{i}", "Location": "Device", "Dimensions": [4, 8, 8, 8],
                              "Format/Datatype": FORMATS[precision]}]}
        if "Convolution" in kind:
            entry.update(ParameterType="Convolution", Weights={"Type": WEIGHT_TYPES[precision], "Count": 576})
        if tactic:
            entry["TacticName"] = tactic
        entry["TacticValue"] = "0x%016x" % (i * 7919)
        out.append(entry)
    return json.dumps({"Layers": out, "Bindings": ["x", "t", "eps"]})


def inspector_behaviours(fake: FakeTensorRT, layers) -> None:
    """Give `fake` an engine whose inspector reports `layers` (see engine_information), in detail only if the
    build set IBuilderConfig.profiling_verbosity = ProfilingVerbosity.DETAILED. Only where the version's surface
    has every name involved: a version without them fails the test."""
    missing = [n for n in INSPECTOR_NAMES if not has(fake._surface, n)]
    assert not missing, f"TensorRT {fake.__version__} lacks {missing}"

    def info(st, fmt):
        if fmt != fake.LayerInformationFormat.JSON:
            return "\n".join(name for name, *_ in layers)  # ONELINE
        levels = fake.calls("IBuilderConfig.profiling_verbosity=")
        return engine_information(layers, detailed=bool(levels) and levels[-1][0] == fake.ProfilingVerbosity.DETAILED)
    fake._behaviours.update({"ICudaEngine.create_engine_inspector": lambda st: fake.new("EngineInspector"),
                             "EngineInspector.get_engine_information": info})


def onnx_network_behaviours(fake: FakeTensorRT, model) -> None:
    """Make the fake parser's network look like onnx `model` parsed: its inputs (dynamic dims -1), and one layer per
    ONNX node whose outputs carry the node's output tensor names (as TensorRT's ONNX parser names them) and types
    (shape inference); the graph outputs are the network's outputs. `fake.float_tensors`: the FP32/FP16 ones."""
    import onnx

    graph_outputs = {o.name for o in model.graph.output}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    elem = {v.name: v.type.tensor_type.elem_type for v in list(inferred.value_info) + list(inferred.output)}
    # FLOAT and FLOAT16 tensors as TensorRT types them; every other type stands as INT32 (8.6 has no INT64).
    trt_type = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF"}
    inputs = [(i.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim))
              for i in model.graph.input]
    nodes = [(n.name, list(n.output)) for n in model.graph.node]

    def get_input(st, i):
        tensor = fake.new("ITensor")
        tensor._state.update(name=inputs[i][0], shape=inputs[i][1])
        return tensor

    def get_layer(st, i):
        layer = fake.new("ILayer")
        layer._state.update(name=nodes[i][0], num_outputs=len(nodes[i][1]), outs=nodes[i][1])
        return layer

    def get_output(st, j):
        tensor = fake.new("ITensor")
        name = st["outs"][j]
        tensor._state.update(name=name, is_network_output=name in graph_outputs,
                             dtype=getattr(fake.DataType, trt_type.get(elem.get(name), "INT32")))
        return tensor
    fake.float_tensors = [t for _, outs in nodes for t in outs if elem.get(t) in trt_type]
    fake._behaviours.update({"INetworkDefinition.get_input": get_input, "INetworkDefinition.get_layer": get_layer,
                             "ILayer.get_output": get_output, "INetworkDefinition.num_layers": len(nodes),
                             "INetworkDefinition.num_inputs": len(inputs)})
