"""ONNX export and verification, TensorRT engine builds, torch-tensorrt (installed as cunet_edge.export).

Nothing is exported from here yet: export lands with the export issue.
"""

__all__: list[str] = []
