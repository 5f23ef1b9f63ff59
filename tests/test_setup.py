"""scripts/setup.sh's Jetson detection (`--detect`: reports and changes nothing), without a Jetson."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RELEASE = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024"


def _detect(release: Path, python: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUNET_EDGE_TEGRA_RELEASE=str(release), PYTHON=python)
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--detect"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_setup_recognizes_a_jetson_keeps_its_torch_and_says_what_it_found(tmp_path):
    before = sorted(p.name for p in ROOT.iterdir())
    release = tmp_path / "nv_tegra_release"
    release.write_text(RELEASE + "\n# KERNEL_VARIANT: oot\n")
    # This Python (torch, no tensorrt, no CUDA) stands for the board's system Python.
    proc = _detect(release, sys.executable)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"Jetson: {RELEASE} ({release})"
    assert f"JetPack torch: {torch.__version__} (CUDA available: no), kept" in lines
    assert any(line.startswith(f"warning: torch {torch.__version__} sees no CUDA device") for line in lines)
    assert any(line.startswith("TensorRT Python module: not found (sudo apt install python3-libnvinfer)")
               for line in lines)
    assert lines[-1] == "venv: .venv with --system-site-packages"
    # A Python without torch (no site-packages): setup says to install NVIDIA's wheel, not PyPI's CUDA-less one.
    bare = tmp_path / "python"
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    proc = _detect(release, str(bare))
    assert proc.returncode == 0, proc.stderr
    assert "JetPack torch: not found. Install NVIDIA's torch wheel for your JetPack first" in proc.stdout
    # Off a Jetson: one line, a plain venv.
    proc = _detect(tmp_path / "absent", sys.executable)
    assert proc.returncode == 0 and proc.stdout == f"not a Jetson ({tmp_path / 'absent'} not found): a plain .venv\n"
    assert sorted(p.name for p in ROOT.iterdir()) == before  # --detect made nothing
