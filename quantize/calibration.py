"""Calibration data drawn from the diffusion process itself, and activation ranges measured on it.

Post-training quantization of a diffusion denoiser must see the inputs it meets while
sampling: noisy images at every timestep of the schedule, where activation ranges differ a
lot (Q-Diffusion, PTQ4DM). So the calibration set is the denoiser's inputs (x_t, t) captured
at every step of seeded sampling runs of the FP32 model itself. Ranges come from ONNX
Runtime's calibrators (min-max, percentile, entropy), run on every input of the ops to be
quantized; the unrolled graph gives each solver stage its own tensors, hence its own range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import check_choice, check_positive
from ..diffusion import alphas_cumprod
from ..errors import ConfigError
from ..runtimes.numpy_sampler import SAMPLERS, sample

__all__ = ["CalibrationConfig", "capture_calibration_set", "activation_ranges", "CALIBRATION_METHODS"]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
MIN_CALIBRATION_INPUTS = 64


@dataclass(frozen=True)
class CalibrationConfig:
    """How many sampling runs to capture, with which sampler and seed, and how ranges are computed."""

    n_images: int = 32
    sampler: str = "ddim"
    sampler_steps: int = 20
    seed: int = 0
    method: str = "percentile"
    percentile: float = 99.99
    chunk: int = 64

    def __post_init__(self):
        check_positive("n_images", self.n_images)
        check_positive("sampler_steps", self.sampler_steps)
        check_positive("chunk", self.chunk)
        check_choice("calibration method", self.method, CALIBRATION_METHODS)
        check_choice("sampler", self.sampler, SAMPLERS)
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in [90, 100], got {self.percentile}")
        if self.n_images * self.sampler_steps < MIN_CALIBRATION_INPUTS:
            raise ConfigError(
                f"too few calibration samples: {self.n_images} images x {self.sampler_steps} sampler steps = "
                f"{self.n_images * self.sampler_steps} denoiser inputs; need at least {MIN_CALIBRATION_INPUTS}")


def capture_calibration_set(runner, cfg: CalibrationConfig) -> dict[str, np.ndarray]:
    """The (x_t, t) the denoiser receives at every step while sampling cfg.n_images from seeded noise."""
    tc = runner.train_config()
    m = tc.model
    xs, ts = [], []
    inner = runner.eps_fn()

    def eps(x, t):
        xs.append(np.array(x, dtype=np.float32))
        ts.append(np.array(t, dtype=np.int64))
        return inner(x, t)

    sample(eps, cfg.n_images, (m.in_channels, m.image_size, m.image_size), alphas_cumprod(tc.diffusion),
           sampler=cfg.sampler, steps=cfg.sampler_steps, seed=cfg.seed, batch_size=cfg.n_images,
           **tc.diffusion.sampler_options(), data_range=tc.diffusion.data_range)
    return {"x": np.concatenate(xs), "t": np.concatenate(ts)}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over one chunk of the calibration set."""

    def __init__(self, x: np.ndarray, t: np.ndarray):
        self._items = iter([{"x": x, "t": t}])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # pragma: no cover - part of the protocol, unused by the calibrators we call
        pass


def _calibrator(onnx_path: Path, tensors_of: tuple[str, ...], cfg: CalibrationConfig, workdir: Path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[cfg.method]
    extra = {"minmax": {}, "percentile": {"percentile": cfg.percentile, "symmetric": False, "num_bins": 2048},
             "entropy": {"symmetric": False, "num_bins": 512, "num_quantized_bins": 128}}[cfg.method]
    return create_calibrator(str(onnx_path), list(tensors_of), augmented_model_path=str(workdir / "augmented.onnx"),
                             calibrate_method=method, extra_options=extra, providers=["CPUExecutionProvider"])


def activation_ranges(onnx_path: Path, calib: dict[str, np.ndarray], cfg: CalibrationConfig, workdir: Path,
                      op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "Concat")) -> dict[str, tuple[float, float]]:
    """(low, high) of every input and output tensor of `op_types` nodes over the calibration set."""
    calibrator = _calibrator(onnx_path, op_types, cfg, workdir)
    n = calib["x"].shape[0]
    # Chunks keep memory bounded: each collect_data call folds its batch into the running ranges.
    for i in range(0, n, cfg.chunk):
        calibrator.collect_data(_Reader(calib["x"][i:i + cfg.chunk], calib["t"][i:i + cfg.chunk]))
    data = calibrator.compute_data()
    out = {}
    for name in data.data:
        lo, hi = data[name].range_value
        out[name] = (float(np.min(lo)), float(np.max(hi)))
    return out
