"""OnnxRuntimeRunner: an ONNX artifact on ONNX Runtime, with the CPU, CUDA or TensorRT execution provider."""

from __future__ import annotations

from pathlib import Path

from ..config import check_choice
from ..errors import ConfigError, import_backend
from ..records import precision_of
from .base import Runner

__all__ = ["OnnxRuntimeRunner", "PROVIDERS"]

# --provider name -> ONNX Runtime providers in priority order (CPU always last, as fallback).
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime with all graph optimizations; `threads` sets intra-op threads (0 = ORT's default).

    `spinning` False stops idle intra-op threads from spin-waiting between operators (None keeps
    ONNX Runtime's default, spinning). On a small shared CPU the spinning threads compete with the
    ones doing work: on the 2-core CPU here, INT8 at batch 16 with 2 threads ran 1.25x faster
    without spinning, FP32 1.1x slower (docs/results/2026-11-27-int8-cpu.md).
    """

    name = "onnxruntime"

    def __init__(self, artifact, *, provider: str = "cpu", threads: int | None = None,
                 spinning: bool | None = None, trt_cache: str | None = None):
        super().__init__(artifact)
        check_choice("provider", provider, PROVIDERS)
        if trt_cache is not None and provider != "tensorrt":
            raise ConfigError(f"a TensorRT engine cache folder ({trt_cache}) needs --provider tensorrt, "
                              f"not {provider}")
        if trt_cache is not None and Path(trt_cache).exists() and not Path(trt_cache).is_dir():
            raise ConfigError(f"TensorRT engine cache {trt_cache} exists and is not a folder")
        self.provider, self.threads, self.spinning, self.trt_cache = provider, threads, spinning, trt_cache
        self.device = "cpu" if provider == "cpu" else "cuda"
        self.session = None

    def tensorrt_options(self) -> dict:
        """ONNX Runtime's TensorRT provider options for this artifact (names as in ONNX Runtime's
        OrtTensorRTProviderOptions): the FP16 or INT8 flag of its precision, and the engine cache folder.

        The EP builds its engines weakly typed: without the flag an fp16 graph's layers may run in FP32 and
        TensorRT 8.x ignores Q/DQ INT8; with it TensorRT may also pick FP16 for the layers the export kept in
        FP32 (the timestep embedding, the GroupNorms). Engines take minutes to build on a Jetson; the cache
        keeps them across sessions (keyed by ONNX Runtime on the model, the GPU and the TensorRT version).
        """
        precision = precision_of(self.artifact.manifest)
        opts = {"trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8"}
        if self.trt_cache is not None:
            opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(Path(self.trt_cache).resolve())}
        return opts

    def providers(self) -> list:
        """What the session is given: provider names, the TensorRT one with its options."""
        return [(name, self.tensorrt_options()) if name == "TensorrtExecutionProvider" else name
                for name in PROVIDERS[self.provider]]

    def _open(self) -> None:
        ort = import_backend("onnxruntime", "onnxruntime", "pip install 'cunet-edge[onnx]' (onnxruntime-gpu for CUDA)")
        wanted = PROVIDERS[self.provider][0]
        if wanted not in ort.get_available_providers():
            raise ConfigError(f"ONNX Runtime here has no {wanted} (available: {', '.join(ort.get_available_providers())}); "
                              f"install onnxruntime-gpu for --provider {self.provider}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        if self.spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.trt_cache is not None:
            Path(self.trt_cache).mkdir(parents=True, exist_ok=True)
        self.session = ort.InferenceSession(str(self.artifact.file("model.onnx")), opts, providers=self.providers())
        self._check_signature()

    def _check_signature(self) -> None:
        """The graph's inputs and outputs must be the ones the manifest promises (names, element types)."""
        types = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}
        got = {i.name: types.get(i.type, i.type) for i in self.session.get_inputs()}
        want = {n: spec["dtype"] for n, spec in self.signature["inputs"].items()}
        outs = [o.name for o in self.session.get_outputs()]
        if got != want or outs != list(self.signature["outputs"]):
            raise ConfigError(f"{self.artifact.path}/model.onnx has inputs {got} and outputs {outs}; its manifest "
                              f"promises inputs {want} and outputs {list(self.signature['outputs'])}")

    def close(self) -> None:
        self.session = None

    def _infer(self, feed):
        return {"eps": self.session.run(["eps"], feed)[0]}

    def describe(self) -> dict:
        import onnxruntime as ort

        return super().describe() | {"onnxruntime": ort.__version__, "provider": self.provider,
                                     "spinning": "default" if self.spinning is None else self.spinning,
                                     "providers": self.session.get_providers() if self.session else None} | (
            {"tensorrt_options": self.tensorrt_options()} if self.provider == "tensorrt" else {})
