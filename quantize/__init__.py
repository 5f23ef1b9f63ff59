"""INT8 quantization (installed as cunet_edge.quantize).

- `calibration`: calibration sets drawn from the diffusion process, activation ranges.
- `qdq`: hand-written Q/DQ insertion (weights once, activations per use, skip-concat split).
- `int8`: the `quantize_int8` stage with sensitivity-driven float fallback.
- `lint`: TensorRT explicit-quantization rules, checked anywhere.
"""

__all__: list[str] = []
