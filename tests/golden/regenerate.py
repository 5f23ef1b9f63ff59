"""Regenerate the golden files of the tests (the only way they should change).

    python tests/golden/regenerate.py

unrolled_ops.json: the ONNX op histogram of the small unrolled continuous U-Net
(tests/test_unrolling.py::SMALL, rk4 x 2), exported by `cunet-edge export`'s graph step
(export/onnx.py `_torch_export`: the dynamo exporter, then constant folding), before ONNX Runtime's simplification.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))


def unrolled_op_histogram() -> dict[str, int]:
    import collections
    import tempfile

    import onnx
    import torch

    from cunet_edge.export.onnx import OnnxExportConfig, _torch_export
    from cunet_edge.models import CUNetConfig, SolverConfig, build_model
    from test_unrolling import SMALL

    cfg = CUNetConfig(**SMALL, solver=SolverConfig(method="rk4", steps=2, unrolled=True))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        _torch_export(model, cfg, OnnxExportConfig(batch=2, dynamic_batch=False), path)
        nodes = onnx.load(str(path)).graph.node
    return dict(sorted(collections.Counter(n.op_type for n in nodes).items()))


if __name__ == "__main__":
    (HERE / "unrolled_ops.json").write_text(json.dumps(unrolled_op_histogram(), indent=2) + "\n")
    print("wrote", HERE / "unrolled_ops.json")
