"""Import hygiene: the package and the CLI's help stay light; the top-level folders are not packages."""

import subprocess
import sys

import pytest

HEAVY = ("onnxruntime", "tensorrt", "torch_tensorrt", "diffusers", "torchvision", "onnx")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print('MODULES', ' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    line = [x for x in out.splitlines() if x.startswith("MODULES ")][-1]
    return set(line.split()[1:])


def test_import_cunet_edge_is_light():
    mods = _modules_after("import cunet_edge, cunet_edge.export, cunet_edge.quantize, cunet_edge.runtimes, cunet_edge.devices")
    assert not {m for m in mods if m.split(".")[0] in HEAVY + ("torch",)}


@pytest.mark.parametrize("args", [[], ["train"], ["sample"], ["evaluate"], ["inspect"], ["unroll"]])
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
