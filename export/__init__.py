"""Export stages (installed as cunet_edge.export); heavy backends are imported inside each stage.

- `onnx`: `export_onnx` — unrolled model → verified ONNX (fp32 / fp16).
- `trt_compat`: `check_tensorrt_compat` — TensorRT ONNX-parser coverage, runs anywhere.
- `tensorrt`: `build_engine`, `trtexec_command`, `check_engine_location`.
- `torch_tensorrt`: `compile_torch_tensorrt`.
"""

__all__: list[str] = []
