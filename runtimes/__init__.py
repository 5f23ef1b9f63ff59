"""One runner per backend behind one interface (installed as cunet_edge.runtimes).

- `base`: `Runner`, `open_runner`, the `RUNTIMES` registry.
- `torch_runner`, `onnxruntime_runner`, `tensorrt_runner`, `torch_tensorrt_runner`: the runners.
- `numpy_sampler`: DDPM/DDIM in numpy alone (shipped as is in deployment bundles), the twin of
  `cunet_edge.diffusion`'s samplers: same names, same arguments.
"""

__all__: list[str] = []
