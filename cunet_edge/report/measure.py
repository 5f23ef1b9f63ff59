"""What the report measures itself, on one footing for every stage: ε drift, sample grids, device estimates.

Every runnable artifact of a lineage is fed the same denoiser inputs: the (x_t, t) the lineage's
reference (its root, the FP32 checkpoint as trained) receives while it samples EPS_RUNS images
with DDIM in EPS_STEPS steps from seeded noise, i.e. 64 inputs at 16 timesteps across the whole
schedule. The ε relative error against the reference, and the drift each stage added (child
against parent), are then measured alike whether the stage changed the solver, pruned, exported
or quantized. Each artifact also draws a sample grid from the same seeded noise (the PyTorch and
numpy samplers share one noise stream), scored by PSNR against the reference's grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..devices.estimate import EstimateConfig, estimate
from ..errors import CunetEdgeError
from ..kinds import ONNX_KINDS, kind_runtime
from ..quantize.calibration import CalibrationConfig, capture_calibration_set
from ..records import split_sampler_setting
from ..runtimes.base import open_runner
from ..sampling import SampleConfig, generate_with_runner
from .gather import DEFAULT_SAMPLER, Node

__all__ = ["EPS_RUNS", "EPS_STEPS", "measure_lineages", "estimate_devices", "rel_err", "psnr"]

EPS_RUNS, EPS_STEPS = 4, 16


def rel_err(a, b) -> float:
    """‖a − b‖ / ‖b‖ over every element (the measure quantize records as its drift)."""
    import numpy as np

    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def psnr(a, b) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) against reference images b."""
    import numpy as np

    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def _eps(runner, inputs: dict) -> Any:
    """ε for every input: all at once, or in zero-padded chunks of the artifact's static batch."""
    import numpy as np

    fn, (x, t), b = runner.eps_fn(), (inputs["x"], inputs["t"]), runner.static_batch()
    if b is None:
        return fn(x, t)
    out = []
    for i in range(0, len(x), b):
        xs, ts = x[i:i + b], t[i:i + b]
        n = len(xs)
        if n < b:
            xs = np.concatenate([xs, np.zeros((b - n, *xs.shape[1:]), xs.dtype)])
            ts = np.concatenate([ts, np.full(b - n, ts[0], ts.dtype)])
        out.append(fn(xs, ts)[:n])
    return np.concatenate(out)


def _runner_options(runtime: str, threads: int | None) -> dict:
    return {"threads": threads} if runtime in ("torch", "onnxruntime") else {}


def _sample_keys(members: list[Node], variants: dict[Node, list[dict]]) -> list[tuple[str, int]]:
    """The (sampler, steps) the members' variants were measured at; DDIM 50 when none was."""
    keys = {(v["sampler"], v["sampler_steps"]) for n in members for v in variants.get(n, [])
            if v["sampler"] and v["sampler_steps"]}
    return sorted(keys) or [DEFAULT_SAMPLER]


def _measure_one(node: Node, keys, inputs: dict | None, with_eps: bool, cfg) -> dict | None:
    """Run node on its runtime: capture the lineage's inputs if none yet, then its ε and its sample grids."""
    runtime = kind_runtime(node.kind)
    try:
        with open_runner(node.art.path, runtime, **_runner_options(runtime, cfg.threads)) as r:
            if with_eps:
                if inputs is None:
                    inputs = capture_calibration_set(r, CalibrationConfig(n_images=EPS_RUNS, sampler_steps=EPS_STEPS,
                                                                          seed=cfg.seed + 1))
                node.eps = _eps(r, inputs)
            for sampler, steps in keys:  # sampler: a sampler_setting, e.g. unipc+karras
                name, spacing = split_sampler_setting(sampler)
                scfg = SampleConfig(n=cfg.samples, sampler=name, steps=steps, spacing=spacing, seed=cfg.seed)
                node.grids[(sampler, steps)] = generate_with_runner(r, scfg).numpy()
    except CunetEdgeError as exc:
        node.notes.append(f"not run here on {runtime}: {exc}")
    return inputs


def measure_lineages(nodes: list[Node], variants: dict[Node, list[dict]], cfg,
                     tick: Callable[[str], None] = lambda _: None) -> None:
    """ε on common inputs and sample grids for every node; the first node of a lineage that runs is its reference.

    Each node draws grids at its own variants' sampler settings; the reference at all of its lineage's,
    so that every grid has one to be compared with. A lineage of one model has no drift to measure.
    """
    trees: dict[Node, list[Node]] = {}
    for n in nodes:
        trees.setdefault(n.lineage()[0], []).append(n)
    for members in trees.values():
        order = sorted(members, key=lambda n: (len(n.lineage()), n.name))  # parents before children
        runnable = [n for n in order if kind_runtime(n.kind)]
        for n in order:
            if n not in runnable:
                n.notes.append(f"kind {n.kind!r} runs on no runtime; no drift or samples measured")
        inputs, reference = None, None
        for node in runnable:
            tick(node.name)
            keys = _sample_keys(members if reference is None else [node], variants)
            inputs = _measure_one(node, keys, inputs, len(runnable) > 1, cfg)
            if reference is None and node.grids:
                reference = node
        for node in members:
            node.reference = reference


def estimate_devices(node: Node, devices: tuple[str, ...]) -> None:
    """Roofline latency per call (batch 1) of an ONNX artifact on each device profile, or why there is none."""
    if node.kind not in ONNX_KINDS:
        return  # the estimator reads ONNX graphs; the report says so once, above the table
    for d in devices:
        try:
            e = estimate(node.art.path, d, EstimateConfig(batch=1, sampler_steps=1))
            node.estimates[d] = {"call_ms": e["per_call_ms"], "precision": e["precision"],
                                 "device_name": e["device_name"]}
        except CunetEdgeError as exc:
            node.estimates[d] = str(exc)
