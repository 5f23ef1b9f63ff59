"""Drift of a model against its parent: ε relative error over the schedule, sample PSNR from the same seeds.

Every stage that changes a model records these numbers (DESIGN §5b), so a report can show
where accuracy went. The solver sweep, the quantize stage and the prune stage share them.
"""

from __future__ import annotations

import math

import numpy as np

from .data import load_images
from .diffusion import alphas_cumprod, q_sample, sample, to_model_range

__all__ = ["rel_err", "psnr", "error_by_timestep", "schedule_inputs", "draw_samples", "torch_drift"]


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def rel_err(a, b) -> float:
    """‖a − b‖ / ‖b‖ over all elements (numpy arrays or tensors), computed in float64."""
    a, b = _np(a).astype(np.float64), _np(b).astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def psnr(a, b) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2); infinite when they are identical."""
    mse = float(np.mean((_np(a).astype(np.float64) - _np(b).astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def error_by_timestep(out, ref, t, bins: int = 10) -> list[dict]:
    """ε relative error of `out` against `ref` in `bins` equal bands of the timesteps `t`."""
    out, ref, t = _np(out), _np(ref), _np(t)
    edges = np.linspace(0, max(int(t.max()) + 1, 1), bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (t >= lo) & (t < hi)
        if sel.any():
            rows.append({"t_from": int(lo), "t_to": int(hi) - 1, "n": int(sel.sum()),
                         "eps_rel_err": rel_err(out[sel], ref[sel])})
    return rows


def schedule_inputs(train_cfg, n: int, seed: int):
    """Noisy test images x_t (torch) at timesteps spread evenly over the whole schedule, and those t."""
    import torch


    x0, _ = load_images(train_cfg.data, "test")
    g = torch.Generator().manual_seed(seed)
    x0 = to_model_range(x0[torch.randperm(x0.shape[0], generator=g)[:n]], train_cfg.diffusion.data_range)
    T = train_cfg.diffusion.timesteps
    t = torch.as_tensor(np.round(np.linspace(0, T - 1, x0.shape[0])).astype(np.int64))
    abar = torch.tensor(alphas_cumprod(train_cfg.diffusion), dtype=torch.float32)
    return q_sample(x0, t, torch.randn(x0.shape, generator=g), abar), t


def draw_samples(model, train_cfg, n: int, steps: int, seed: int):
    """n DDIM samples of a torch model from seeded noise (the same noise for the same seed)."""
    m = train_cfg.model
    device = next(model.parameters()).device
    return sample(model, n, (m.in_channels, m.image_size, m.image_size), train_cfg.diffusion,
                  sampler="ddim", steps=steps, seed=seed, device=device)


DRIFT_SAMPLES, MIN_DRIFT_SAMPLES = 16, 4  # sampling runs of a stage's drift record up to 16 px, and the fewest above


def drift_samples_for(image_size: int, given: int | None = None) -> int:
    """Sampling runs of a stage's drift record (sample PSNR against the parent): `given` if set, else DRIFT_SAMPLES
    up to 16 px and fewer as the image grows (runs x pixels about constant, as calibration's runs), never fewer than
    MIN_DRIFT_SAMPLES. The drift is a record, not a decision, and 16 runs of two models at 64 px cost minutes
    (docs/results/2026-12-02-stage-costs-64.md)."""
    if given is not None:
        return given
    return max(MIN_DRIFT_SAMPLES, min(DRIFT_SAMPLES, round(DRIFT_SAMPLES * (16 / image_size) ** 2)))


def torch_drift(model, parent, train_cfg, *, n_inputs: int = 64, samples: int = 16, sampler_steps: int = 20,
                seed: int = 0) -> dict:
    """A torch model against its parent: ε relative error (overall, by timestep) and sample PSNR, same seeds."""
    import torch

    x, t = schedule_inputs(train_cfg, n_inputs, seed)
    device = next(model.parameters()).device
    x, t = x.to(device), t.to(device)
    with torch.no_grad():
        out, ref = model(x, t), parent(x, t)
    return {
        "eps_rel_err": rel_err(out, ref),
        "eps_rel_err_by_timestep": error_by_timestep(out, ref, t),
        "sample_psnr_vs_parent": psnr(draw_samples(model, train_cfg, samples, sampler_steps, seed),
                                      draw_samples(parent, train_cfg, samples, sampler_steps, seed)),
        "inputs": int(x.shape[0]), "samples": samples, "sampler": f"ddim x{sampler_steps}",
        "reference": "parent model in PyTorch",
    }
