"""Import hygiene: the package and the CLI's help stay light; the top-level folders are not packages."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from cunet_edge.cli import COMMANDS

HEAVY = ("onnxruntime", "tensorrt", "torch_tensorrt", "diffusers", "torchvision", "onnx", "torch_pruning",
         "matplotlib")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print('MODULES', ' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    line = [x for x in out.splitlines() if x.startswith("MODULES ")][-1]
    return set(line.split()[1:])


def test_import_cunet_edge_is_light():
    mods = _modules_after("import cunet_edge, cunet_edge.export, cunet_edge.quantize, cunet_edge.runtimes, cunet_edge.devices, "
                          "cunet_edge.report.stage, cunet_edge.report.render, cunet_edge.report.plot")
    assert not {m for m in mods if m.split(".")[0] in HEAVY + ("torch",)}


@pytest.mark.parametrize("args", [[]] + [[name] for name in COMMANDS])
def test_help_is_light(args):
    code = (
        "import sys\nfrom cunet_edge.cli import main\n"
        f"try:\n    main({args + ['--help']!r}, standalone_mode=False)\nexcept SystemExit:\n    pass"
    )
    mods = _modules_after(code)
    assert not {m for m in mods if m.split(".")[0] in HEAVY + ("torch",)}


@pytest.mark.parametrize("name", ["export", "quantize", "runtimes", "devices"])
def test_top_level_folders_are_not_importable(name, tmp_path):
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
    subprocess.run([sys.executable, "-c", f"import cunet_edge.{name}"], cwd=tmp_path, check=True)


def test_numpy_sampler_needs_only_numpy(tmp_path):
    """Deployment bundles ship runtimes/numpy_sampler.py alone: it must import nothing of ours or torch's."""
    import shutil

    from cunet_edge.runtimes import numpy_sampler

    shutil.copy(numpy_sampler.__file__, tmp_path / "sampler.py")
    code = ("import sys; sys.modules['torch'] = None; sys.modules['cunet_edge'] = None\n"
            "import numpy as np, sampler\n"
            "x = sampler.sample(lambda x, t: np.zeros_like(x), 2, (1, 4, 4), np.linspace(0.99, 0.01, 100), steps=5)\n"
            "print(x.shape)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(2, 1, 4, 4)"


ROOT = Path(__file__).resolve().parents[1]


def test_layer_contracts_hold():
    """import-linter's contracts in pyproject.toml: no upward import between layers, no circle between siblings.

    It reads the package through the `cunet_edge/{export,quantize,runtimes,devices}` symlinks, so a module
    added to a top-level folder is checked like any other (the layers contract is exhaustive).
    """
    pytest.importorskip("importlinter")
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def _function_level_project_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("cunet_edge")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_project_imports_sit_at_module_top():
    """Imports inside functions are only for optional third-party backends, never for the project's own modules
    (those dodged import circles; the layers contract now rules circles out)."""
    linked = ("export", "quantize", "runtimes", "devices")  # symlinked into cunet_edge/: read them once
    sources = [p for d in ("cunet_edge",) + linked for p in sorted((ROOT / d).rglob("*.py"))
               if "bundle" not in p.parts and not (d == "cunet_edge" and p.relative_to(ROOT / d).parts[0] in linked)]
    assert len(sources) > 60
    inside = [hit for p in sources for hit in _function_level_project_imports(p)]
    assert not inside, inside


def test_torchvision_and_torchmetrics_import_after_the_compat_guard():
    """PyPI's torchvision is a CUDA build; beside CPU torch `import torchvision` (so torchmetrics) fails unless
    cunet_edge.compat defines the two op schemas it needs. In a fresh interpreter, as a user's process starts."""
    code = ("from cunet_edge.compat import ensure_torchvision_imports as e; e(); e(); "
            "import torchmetrics.image.fid, torchvision.transforms, torchvision.utils; print('imported')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "imported", res.stderr[-2000:]
