#!/usr/bin/env python3
"""Dump the Python API surface of real TensorRT bindings, without TensorRT or a GPU.

The `tensorrt-bindings` (8.6) and `tensorrt-cu12-bindings` (10.x, 11.x) wheels hold only the
pybind11 module; it links against TensorRT's shared libraries (libnvinfer, libnvinfer_plugin,
libnvonnxparser, and libnvparsers for 8.x). This script installs a wheel with
`pip install --target CACHE/VERSION --no-deps`, builds stand-in libraries with gcc that export the
C entry points the module needs (read with `nm -D --undefined-only`; each returns NULL, so nothing
can be built, but the module imports), imports the module in a subprocess and writes its surface:
classes with their constructor signatures and members (methods with their pybind11 signatures,
properties and whether they can be set), enums with their values, module functions.

    python scripts/trt_surfaces.py                 # every version in VERSIONS -> tests/data/trt_surface/
    python scripts/trt_surfaces.py --version 10.3.0 --out /tmp/s.json

Cache: ~/.cache/cunet-edge/trt (CUNET_EDGE_TRT_CACHE overrides). Needs pip, gcc and nm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "trt_surface"
# version -> PyPI distribution. 8.6 (the newest 8.x on PyPI; JetPack 5 ships 8.5), 10.3 (JetPack 6),
# the newest 10.x and the newest 11.x when this was written.
VERSIONS = {"8.6.1": "tensorrt-bindings", "10.3.0": "tensorrt-cu12-bindings",
            "10.16.1.11": "tensorrt-cu12-bindings", "11.4.0.106": "tensorrt-cu12-bindings"}
MODULE = "tensorrt_bindings"  # the import name inside every bindings wheel (`tensorrt` re-exports it)


def cache_dir() -> Path:
    return Path(os.environ.get("CUNET_EDGE_TRT_CACHE") or Path.home() / ".cache" / "cunet-edge" / "trt")


def install(version: str, cache: Path | None = None) -> Path:
    """The wheel's files under CACHE/VERSION (installed once)."""
    target = (cache or cache_dir()) / version
    if not (target / MODULE / "tensorrt.so").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--target", str(target), f"{VERSIONS.get(version, 'tensorrt-cu12-bindings')}=={version}"],
                       check=True, capture_output=True, text=True, timeout=300)
    return target


def _needed(so: Path) -> tuple[list[str], list[str]]:
    """(TensorRT libraries the module links, C symbols it needs from them)."""
    dyn = subprocess.run(["readelf", "-d", str(so)], check=True, capture_output=True, text=True).stdout
    libs = [n for n in re.findall(r"\[(lib[^\]]+)\]", dyn) if n.startswith("libnv")]
    und = subprocess.run(["nm", "-D", "--undefined-only", str(so)], check=True, capture_output=True, text=True).stdout
    # Strong ("U"), unversioned (not libc's foo@GLIBC), not Python's, not libdl's.
    syms = [p[1] for p in (line.split() for line in und.splitlines())
            if len(p) == 2 and p[0] == "U" and "@" not in p[1] and not re.match(r"_?Py|dl(open|sym|close)$", p[1])]
    return libs, syms


def stand_ins(target: Path) -> Path:
    """Stand-in TensorRT libraries for the module under `target`; returns their folder (for LD_LIBRARY_PATH)."""
    out = target / "stand-in-libs"
    libs, syms = _needed(target / MODULE / "tensorrt.so")
    if all((out / lib).is_file() for lib in libs):
        return out
    out.mkdir(exist_ok=True)
    src = out / "stand_in.c"
    # Every entry point returns NULL/0: enough to load the module, never enough to build or run anything.
    src.write_text("/* stand-ins for TensorRT's C entry points (scripts/trt_surfaces.py) */\n"
                   + "".join(f"void *{s}(void) {{ return 0; }}\n" for s in syms))
    first, *rest = libs
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out / first), str(src)], check=True, capture_output=True)
    empty = out / "empty.c"
    empty.write_text("/* the symbols live in the first stand-in library */\n")
    for lib in rest:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out / lib), str(empty)], check=True, capture_output=True)
    return out


# Runs inside the subprocess: imports the bindings and prints the surface as JSON.
_DUMP = r'''
import inspect, json, re, sys
import tensorrt_bindings as trt

def sigs(obj, name):
    doc = getattr(obj, "__doc__", None) or ""
    found = re.findall(r"^(?:\d+\. )?(" + re.escape(name) + r"\(.*\)(?: -> .+)?)$", doc, re.M)
    if not found and inspect.isfunction(obj):  # a Python function of the package (nptype, volume)
        found = [name + str(inspect.signature(obj))]
    # Shorter: no module prefix, no self argument.
    return [re.sub(r"\(self: [\w.]+(, )?", "(", s.replace("tensorrt_bindings.tensorrt.", "")) for s in found]

def members(cls):
    out = {}
    for n in sorted(dir(cls)):
        if n.startswith("__"):
            continue
        raw = inspect.getattr_static(cls, n, None)
        val = getattr(cls, n, None)
        if isinstance(raw, property):
            out[n] = {"kind": "property", "settable": raw.fset is not None}
        elif type(val).__name__ == "instancemethod" or callable(raw) and not inspect.isclass(val):
            out[n] = {"kind": "method", "signatures": sigs(val, n)}
        elif inspect.isclass(val):
            out[n] = {"kind": "class", "name": val.__qualname__}
        elif hasattr(type(val), "__members__"):
            out[n] = {"kind": "enum_value", "enum": type(val).__qualname__, "value": int(val)}
        else:
            out[n] = {"kind": "attribute", "type": type(val).__name__}
    return out

def describe(cls):
    if hasattr(cls, "__members__"):
        return {"kind": "enum", "values": {k: int(v) for k, v in cls.__members__.items()}}
    bases = [b.__name__ for b in cls.__bases__ if b.__name__ not in ("object", "pybind11_object")]
    # "init": the constructor's signatures; none: Python code cannot make one (pybind11 "No constructor defined")
    return {"kind": "class", "bases": bases, "init": sigs(cls.__init__, "__init__"), "members": members(cls)}

surface = {}
todo = [(n, getattr(trt, n)) for n in dir(trt) if not n.startswith("_")]
while todo:
    name, obj = todo.pop()
    if inspect.isclass(obj):
        surface[name] = describe(obj)
        for m, v in vars(obj).items():
            if inspect.isclass(v) and not m.startswith("_"):
                todo.append((name + "." + m, v))
    elif callable(obj):
        surface[name] = {"kind": "function", "signatures": sigs(obj, name)}
    else:
        surface[name] = {"kind": "constant", "type": type(obj).__name__}
print(json.dumps({"tensorrt_version": trt.__version__, "names": dict(sorted(surface.items()))}))
'''


def dump(version: str, cache: Path | None = None) -> dict:
    """The surface of the bindings of `version` (installed and given stand-in libraries as needed)."""
    target = install(version, cache)
    libs = stand_ins(target)
    env = {**os.environ, "PYTHONPATH": str(target), "LD_LIBRARY_PATH": str(libs)}
    proc = subprocess.run([sys.executable, "-c", _DUMP], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RuntimeError(f"importing the TensorRT {version} bindings failed: {proc.stderr.strip()[-2000:]}")
    surface = json.loads(proc.stdout)
    dist = VERSIONS.get(version, "tensorrt-cu12-bindings")
    return {"wheel": f"{dist}=={version}", "python": "%d.%d" % sys.version_info[:2], **surface}


def to_json(surface: dict) -> str:
    """One line per TensorRT name, so that a diff between two versions reads name by name."""
    names = surface["names"]
    head = {k: v for k, v in surface.items() if k != "names"}
    lines = [f" {json.dumps(k)}: {json.dumps(names[k], sort_keys=True)}" for k in sorted(names)]
    return json.dumps(head, sort_keys=True)[:-1] + ', "names": {\n' + ",\n".join(lines) + "\n}}\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--version", action="append", help="bindings version (default: all of %s)" % ", ".join(VERSIONS))
    p.add_argument("--out", help="output file (one --version only); default tests/data/trt_surface/VERSION.json")
    args = p.parse_args(argv)
    versions = args.version or list(VERSIONS)
    if args.out and len(versions) != 1:
        p.error("--out takes one --version")
    for v in versions:
        out = Path(args.out) if args.out else DATA / f"{v}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_json(dump(v)))
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
