"""Solver sweep: every unrollable method × step count, measured against two references.

For each configuration: ε relative error against the adaptive solution (dopri5 at
rtol = atol = 1e-5) and against the model as trained (its own solver settings), over noisy
inputs spread across the whole schedule; end-to-end sample drift (PSNR against the trained
model's samples from the same seeds); torch CPU latency per call at batch 1 and 16, measured
in the same run. Recommends the cheapest configuration within a tolerance of the trained model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .checkpoint import load_checkpoint
from .config import check_positive
from .constants import PROFILE_TIMESTEP
from .drift import draw_samples, psnr, rel_err, schedule_inputs
from .errors import ConfigError
from .evaluation import evaluate_images
from .kinds import STAGE_IO
from .models import SolverConfig, build_model, count_nfe
from .models.explicit import UNROLLABLE, nfe_per_step
from .records import solver_record
from .timing import time_call, time_side_by_side
from .limits import check_seed

__all__ = ["SweepConfig", "solver_sweep", "format_table"]


@dataclass(frozen=True)
class SweepConfig:
    """Which configurations to sweep and how much to measure for each."""

    methods: tuple[str, ...] = UNROLLABLE
    max_steps: int = 8
    n_inputs: int = 64
    tolerance: float = 0.01
    drift_samples: int = 16
    sampler_steps: int = 50
    fid: bool = False
    fid_n: int = 1000
    seed: int = 0

    def __post_init__(self):
        check_seed(self.seed)
        bad = [m for m in self.methods if m not in UNROLLABLE]
        if bad:
            raise ConfigError(f"method {bad[0]!r} is not one of: {', '.join(UNROLLABLE)}")
        for name in ("max_steps", "n_inputs", "tolerance", "drift_samples", "sampler_steps", "fid_n"):
            check_positive(name, getattr(self, name))


def _with_solver(ckpt, solver):
    """A copy of the checkpoint's model with another solver and the same weights."""
    cfg = dataclasses.replace(ckpt.config.model, solver=solver)
    model = build_model(cfg)
    model.load_state_dict(ckpt.model.state_dict())
    return model.eval(), cfg


def _latency(model, cfg, batch: int) -> float:
    import torch


    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.full((batch,), PROFILE_TIMESTEP)
    with torch.no_grad():
        return time_call(lambda: model(x, t), warmup=2, min_iters=5, min_seconds=0.3)["p50_ms"]


def _samples(model, ckpt, n: int, steps: int, seed: int):
    return draw_samples(model, ckpt.config, n, steps, seed)


def _measure(model, cfg, ckpt, refs: dict, sweep: SweepConfig) -> dict:
    """ε errors vs both references, sample drift vs the trained model, latency at batch 1 and 16."""
    import torch

    with torch.no_grad():
        eps = model(*refs["inputs"])
    drift = _samples(model, ckpt, sweep.drift_samples, sweep.sampler_steps, sweep.seed)
    return {
        "eps_rel_err_vs_adaptive": rel_err(eps, refs["adaptive"]),
        "eps_rel_err_vs_trained": rel_err(eps, refs["trained"]),
        "sample_psnr_vs_trained": psnr(drift, refs["samples"]),
        "latency_ms_b1": _latency(model, cfg, 1),
        "latency_ms_b16": _latency(model, cfg, 16),
    }


def _fid(model, ckpt, sweep: SweepConfig) -> float:
    return evaluate_images(_samples(model, ckpt, sweep.fid_n, sweep.sampler_steps, sweep.seed), ckpt.config.data)["fid"]


def solver_sweep(src, sweep: SweepConfig, *, progress: bool = True) -> dict:
    """Sweep methods × steps 1..max_steps on a checkpoint; rows, the references, and a recommendation."""
    import torch
    from rich.progress import Progress


    ckpt = load_checkpoint(src, kinds=STAGE_IO["sweep"].accepts)
    if ckpt.config.model.arch != "cunet":
        raise ConfigError(f"{src} is a {ckpt.config.model.arch!r} model; the solver sweep needs a continuous U-Net")
    trained = ckpt.config.model.solver
    adaptive_model, _ = _with_solver(ckpt, SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5))
    inputs = schedule_inputs(ckpt.config, sweep.n_inputs, sweep.seed)
    with torch.no_grad(), count_nfe(adaptive_model) as adaptive_nfe:
        refs = {"inputs": inputs, "trained": ckpt.model(*inputs), "adaptive": adaptive_model(*inputs)}
    refs["adaptive_nfe"] = adaptive_nfe.count  # on the n_inputs batch: dopri5's steps depend on it
    refs["samples"] = _samples(ckpt.model, ckpt, sweep.drift_samples, sweep.sampler_steps, sweep.seed)
    configs = [(m, s) for m in sweep.methods for s in range(1, sweep.max_steps + 1)]
    rows = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("solver sweep", total=len(configs) + 2)
        for method, steps in configs:
            solver = SolverConfig(method=method, steps=steps, unrolled=True)
            model, cfg = _with_solver(ckpt, solver)
            row = solver_record(solver.method, solver.steps, nfe_per_step(solver.method), model.num_ode_blocks) | _measure(model, cfg, ckpt, refs, sweep)
            if sweep.fid:
                row["fid"] = _fid(model, ckpt, sweep)
            rows.append(row)
            bar.update(task, advance=1)
        result = _summarize(rows, ckpt, adaptive_model, refs, sweep)
        bar.update(task, advance=2)
    result["trained_solver"] = dataclasses.asdict(trained)
    return result


def _side_by_side(ckpt, unrolled_model) -> dict:
    """The unrolled model vs the trained model through torchdiffeq, timed in turn (batch 1 and 16)."""
    import torch


    m = ckpt.config.model
    out = {}
    for batch in (1, 16):
        x = torch.randn(batch, m.in_channels, m.image_size, m.image_size)
        t = torch.full((batch,), PROFILE_TIMESTEP)
        with torch.no_grad():
            ms = time_side_by_side({"unrolled": lambda: unrolled_model(x, t), "torchdiffeq": lambda: ckpt.model(x, t)},
                                   warmup=2, min_iters=5, min_seconds=0.3)
        out |= {f"unrolled_ms_b{batch}": ms["unrolled"], f"torchdiffeq_ms_b{batch}": ms["torchdiffeq"],
                f"ratio_b{batch}": ms["unrolled"] / ms["torchdiffeq"]}
    return out


def _summarize(rows, ckpt, adaptive_model, refs, sweep: SweepConfig) -> dict:
    """Pick the cheapest row within tolerance; FIDs for it, the trained model and the adaptive one."""
    import torch


    ok = [r for r in rows if r["eps_rel_err_vs_trained"] <= sweep.tolerance]
    best = min(ok, key=lambda r: (r["nfe_per_call"], r["latency_ms_b1"])) if ok else None
    m = ckpt.config.model
    with torch.no_grad(), count_nfe(ckpt.model) as trained_nfe:
        ckpt.model(torch.randn(1, m.in_channels, m.image_size, m.image_size), torch.full((1,), PROFILE_TIMESTEP))
    out = {"rows": rows, "recommended": best, "tolerance": sweep.tolerance,
           "trained": {"nfe_per_call": trained_nfe.count},
           "adaptive": {"nfe_per_call": refs["adaptive_nfe"], "rtol": 1e-5, "atol": 1e-5}}
    if best is not None:
        model, _ = _with_solver(ckpt, dataclasses.replace(m.solver, method=best["method"], steps=best["steps"],
                                                           adjoint=False, unrolled=True))
        best["fid"] = best.get("fid") or _fid(model, ckpt, sweep)
        # Timed in turn with the same model through torchdiffeq: the ratio the unroll stage buys.
        out["latency_unrolled_vs_torchdiffeq"] = _side_by_side(ckpt, model)
    out["trained"]["fid"] = _fid(ckpt.model, ckpt, sweep)
    out["adaptive"]["fid"] = _fid(adaptive_model, ckpt, sweep)
    return out


def format_table(result: dict) -> str:
    """The sweep as a text table, with the references and the recommendation underneath."""
    head = f"{'method':9} {'steps':>5} {'NFE':>5} {'err/trained':>11} {'err/adaptive':>12} {'PSNR dB':>8} {'ms b1':>7} {'ms b16':>7}"
    lines = [head]
    for r in result["rows"]:
        lines.append(f"{r['method']:9} {r['steps']:5d} {r['nfe_per_call']:5d} {r['eps_rel_err_vs_trained']:11.2e} "
                     f"{r['eps_rel_err_vs_adaptive']:12.2e} {r['sample_psnr_vs_trained']:8.2f} "
                     f"{r['latency_ms_b1']:7.2f} {r['latency_ms_b16']:7.2f}" + (f"  FID {r['fid']:.3f}" if "fid" in r else ""))
    tr, ad, best = result["trained"], result["adaptive"], result["recommended"]
    lines.append(f"trained ({result['trained_solver']['method']} x{result['trained_solver']['steps']}, torchdiffeq): "
                 f"NFE {tr['nfe_per_call']}, FID {tr['fid']:.3f}")
    lines.append(f"adaptive (dopri5, tol 1e-5): NFE {ad['nfe_per_call']} (on the sweep's input batch), FID {ad['fid']:.3f}")
    if best is None:
        lines.append(f"no configuration is within eps relative error {result['tolerance']:g} of the trained model")
    else:
        lines.append(f"recommended: {best['method']} x{best['steps']} (NFE {best['nfe_per_call']}, error "
                     f"{best['eps_rel_err_vs_trained']:.2e} vs trained, FID {best['fid']:.3f})")
        sb = result["latency_unrolled_vs_torchdiffeq"]
        lines.append(f"side by side, ms per call: unrolled {sb['unrolled_ms_b1']:.2f} vs torchdiffeq "
                     f"{sb['torchdiffeq_ms_b1']:.2f} at batch 1 ({sb['ratio_b1']:.2f}x), {sb['unrolled_ms_b16']:.2f} vs "
                     f"{sb['torchdiffeq_ms_b16']:.2f} at batch 16 ({sb['ratio_b16']:.2f}x)")
    return "\n".join(lines)
