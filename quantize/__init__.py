"""Calibration data, INT8 Q/DQ, FP16 conversion (installed as cunet_edge.quantize).

Nothing is exported from here yet: quantization lands with the quantization issue.
"""

__all__: list[str] = []
