"""Shared fixtures: a tiny, seeded training config and a trained tiny checkpoint."""

from __future__ import annotations

import json
import os

import pytest

# Tiny models gain nothing from a second thread, and on a loaded 2-core machine OpenMP
# threads that wait for each other make convs 100x slower; subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = {
    "model": {
        "arch": "cunet", "in_channels": 1, "image_size": 8, "base_channels": 8, "channel_mults": [1, 2],
        "attn_resolutions": [4], "attn_heads": 2, "norm_groups": 4, "time_emb_dim": 16,
        "solver": {"method": "euler", "steps": 1},
    },
    "data": {"name": "digits", "image_size": 8},
    "steps": 6, "batch_size": 8, "warmup_steps": 2, "save_every": 4, "sample_n": 4, "sample_steps": 2,
}


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Keep the classifier cache out of the home directory, in one folder for the whole run: pytest-xdist's workers
    (each with its own basetemp under the run's) share it, so the digits classifier is trained once per run, by the
    first worker that needs it, while the others wait on its lock (evaluation._cache_lock) and load it."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    base = tmp_path_factory.getbasetemp()
    shared = base.parent / "cache" if os.environ.get("PYTEST_XDIST_WORKER") else base / "cache"
    shared.mkdir(exist_ok=True)
    os.environ["CUNET_EDGE_CACHE"] = str(shared)


@pytest.fixture
def tiny_config_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def _shared(path):
    """Hand out a session artifact, and check at the end that no test changed it (tests copy one to modify it).

    Only metrics.json, which evaluate and bench record into the artifact they measure, lies outside the hashes.
    """
    from cunet_edge.artifact import Artifact

    manifest = (path / "manifest.json").read_bytes()
    yield path
    Artifact.load(path)  # every payload file still matches its recorded hash
    assert (path / "manifest.json").read_bytes() == manifest, f"a test changed {path / 'manifest.json'}"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A real checkpoint: the tiny continuous U-Net trained for a few steps on digits."""
    from cunet_edge.training import train, train_config_from_dict

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    train(train_config_from_dict(TINY), out, progress=False)
    yield from _shared(out)


@pytest.fixture(scope="session")
def tiny_unrolled(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint unrolled with three euler steps per block (different from how it was trained: euler x1).

    The last step's evaluation only moves the velocity and is pruned from the graph, so two evaluations per
    block stay: each weight feeds two solver stages, and every export, quantization and prune of it takes seconds;
    the solver methods' unrolled graphs are checked against torchdiffeq in test_unrolling.py.
    """
    from cunet_edge.unrolling import UnrollConfig, unroll

    yield from _shared(
        unroll(tiny_checkpoint, UnrollConfig(method="euler", steps=3), tmp_path_factory.mktemp("unr") / "u").path)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_unrolled, tmp_path_factory):
    """The unrolled tiny model exported to ONNX (fp32, dynamic batch)."""
    pytest.importorskip("onnxruntime")
    from cunet_edge.export.onnx import OnnxExportConfig, export_onnx

    yield from _shared(export_onnx(tiny_unrolled, OnnxExportConfig(), tmp_path_factory.mktemp("onnx") / "o").path)
