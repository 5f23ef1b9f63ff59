"""One runner per backend behind one interface (installed as cunet_edge.runtimes).

- `base`: `Runner`, `open_runner`, the `RUNTIMES` registry.
- `torch_runner`, `onnxruntime_runner`, `tensorrt_runner`, `torch_tensorrt_runner`: the runners.
- `numpy_sampler`: DDPM/DDIM in numpy alone (shipped as is in deployment bundles).
"""

__all__: list[str] = []
