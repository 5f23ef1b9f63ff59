"""Calibration data drawn from the diffusion process itself, and activation ranges measured on it.

Post-training quantization of a diffusion denoiser must see the inputs it meets while
sampling: noisy images at every timestep of the schedule, where activation ranges differ a
lot (Q-Diffusion, PTQ4DM). So the calibration set is the denoiser's inputs (x_t, t) captured
at every step of seeded sampling runs of the FP32 model itself. Ranges come from ONNX
Runtime's calibrators (min-max, percentile, entropy), run on every input of the ops to be
quantized; the unrolled graph gives each solver stage its own tensors, hence its own range.

Cost at larger image sizes (docs/results/2026-12-02-stage-costs.md). Every calibration input is a
full denoiser call, and ONNX Runtime's calibrator returns every exposed tensor of a chunk of inputs
at once, so time and memory grow with inputs × activation size. Two rules keep that in check:

- the number of sampling runs, unless given, follows the image size (`images_for`): 32 runs at
  16 px, and fewer at larger sizes so that each tensor's histogram still gets about as many
  values as at 16 px (every timestep of the schedule is still captured), never fewer than
  MIN_CALIBRATION_INPUTS inputs in all;
- the calibrator is fed chunks sized so that one chunk's collected tensors stay within
  `collect_mib` (ranges are folded into running histograms chunk by chunk, so nothing else
  accumulates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import check_choice, check_positive
from ..diffusion import alphas_cumprod
from ..errors import ConfigError
from ..limits import check_seed
from ..runtimes.numpy_sampler import SAMPLERS, sample

__all__ = ["CalibrationConfig", "capture_calibration_set", "activation_ranges", "bytes_per_input", "chunk_size",
           "CALIBRATION_METHODS"]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
MIN_CALIBRATION_INPUTS = 64
REFERENCE_IMAGES, REFERENCE_SIZE = 32, 16  # the calibration measured at 16 px (docs/results/2026-11-27-int8-cpu.md)


@dataclass(frozen=True)
class CalibrationConfig:
    """How many sampling runs to capture, with which sampler and seed, and how ranges are computed."""

    n_images: int | None = None  # sampling runs captured; None: by the image size (images_for)
    sampler: str = "ddim"
    sampler_steps: int = 20
    seed: int = 0
    method: str = "percentile"
    percentile: float = 99.99
    chunk: int = 64  # most inputs per calibrator call
    collect_mib: float = 512.0  # most MiB of collected tensors per calibrator call (fewer inputs when larger)

    def __post_init__(self):
        check_seed(self.seed)
        if self.n_images is not None:
            check_positive("n_images", self.n_images)
        check_positive("sampler_steps", self.sampler_steps)
        check_positive("chunk", self.chunk)
        check_positive("collect_mib", self.collect_mib)
        check_choice("calibration method", self.method, CALIBRATION_METHODS)
        check_choice("sampler", self.sampler, SAMPLERS)
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in [90, 100], got {self.percentile}")
        if self.n_images is not None and self.n_images * self.sampler_steps < MIN_CALIBRATION_INPUTS:
            raise ConfigError(
                f"too few calibration samples: {self.n_images} images x {self.sampler_steps} sampler steps = "
                f"{self.n_images * self.sampler_steps} denoiser inputs; need at least {MIN_CALIBRATION_INPUTS}")

    def images_for(self, image_size: int) -> int:
        """Sampling runs to capture: n_images if given, else REFERENCE_IMAGES at REFERENCE_SIZE px and fewer as
        the image grows (the values each tensor's histogram gets stay about constant: runs x pixels), but at
        least enough runs for MIN_CALIBRATION_INPUTS inputs."""
        if self.n_images is not None:
            return self.n_images
        by_pixels = round(REFERENCE_IMAGES * (REFERENCE_SIZE / image_size) ** 2)
        return min(REFERENCE_IMAGES, max(by_pixels, math.ceil(MIN_CALIBRATION_INPUTS / self.sampler_steps)))


def capture_calibration_set(runner, cfg: CalibrationConfig) -> dict[str, np.ndarray]:
    """The (x_t, t) the denoiser receives at every step while sampling cfg.images_for(size) from seeded noise."""
    tc = runner.train_config()
    m = tc.model
    n = cfg.images_for(m.image_size)
    xs, ts = [], []
    inner = runner.eps_fn()

    def eps(x, t):
        xs.append(np.array(x, dtype=np.float32))
        ts.append(np.array(t, dtype=np.int64))
        return inner(x, t)

    sample(eps, n, (m.in_channels, m.image_size, m.image_size), alphas_cumprod(tc.diffusion),
           sampler=cfg.sampler, steps=cfg.sampler_steps, seed=cfg.seed, batch_size=n,
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


def bytes_per_input(session) -> int:
    """Bytes one calibration input adds to a calibrator call's collected outputs (float32, batch dimension
    excluded; a symbolic dimension other than the batch counts as 1, so the figure is a floor)."""
    total = 0
    for o in session.get_outputs():
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in o.shape[1:]]
        total += 4 * math.prod(dims)
    return total


def chunk_size(per_input: int, cfg: CalibrationConfig) -> int:
    """Inputs per calibrator call: at most cfg.chunk, and at most what keeps the collected outputs within
    cfg.collect_mib (at least one input)."""
    return max(1, min(cfg.chunk, int(cfg.collect_mib * 2 ** 20) // max(per_input, 1)))


def activation_ranges(onnx_path: Path, calib: dict[str, np.ndarray], cfg: CalibrationConfig, workdir: Path,
                      op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "Concat"),
                      stats: dict | None = None) -> dict[str, tuple[float, float]]:
    """(low, high) of every input and output tensor of `op_types` nodes over the calibration set.

    `stats`, when given, receives how the work was split: inputs, bytes per input, inputs per call, calls."""
    calibrator = _calibrator(onnx_path, op_types, cfg, workdir)
    n = calib["x"].shape[0]
    per_input = bytes_per_input(calibrator.infer_session)
    chunk = chunk_size(per_input, cfg)
    # Each collect_data call folds its chunk into running ranges (histograms) and drops the chunk's tensors,
    # so the memory held is one chunk's collected outputs.
    calls = 0
    for i in range(0, n, chunk):
        calibrator.collect_data(_Reader(calib["x"][i:i + chunk], calib["t"][i:i + chunk]))
        calls += 1
    if stats is not None:
        stats.update(inputs=int(n), bytes_per_input=int(per_input), chunk=int(chunk), calls=calls,
                     collected_mib_per_call=round(per_input * min(chunk, n) / 2 ** 20, 1))
    data = calibrator.compute_data()
    out = {}
    for name in data.data:
        lo, hi = data[name].range_value
        out[name] = (float(np.min(lo)), float(np.max(hi)))
    return out
