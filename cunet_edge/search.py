"""`pipeline --search`: explore sampler steps × solver steps × prune ratio × precision × distillation.

The recipe's `[search]` table is expanded into ordinary stages (prune → unroll → export →
quantize for every variant, then evaluate at every sampler step count and one side-by-side
bench), so the search resumes and skips like any recipe. The `distill` axis adds, per step count
N > 0, a student distilled from the model for N DDIM steps (`distill` stage) and its solver ×
precision variants (not pruned: prune's fine-tuning uses the many-step loss), each evaluated at
its own setting, DDIM N steps at trailing spacing, the grid it was distilled for; 0 stands for
the model's own prune × solver × precision grid at the search's sampler steps. A final `pareto` stage reads the
measurements back, marks the Pareto front (quality vs latency per image) and names the fastest
variant whose FID stays within `quality_tolerance` of the reference: the trained model run
as trained (torchdiffeq, PyTorch eager) at the most sampler steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import write_json_atomic
from .config import check_choice, check_positive
from .diffusion import SAMPLERS, SPACINGS
from .errors import ConfigError
from .records import RESULT, SOLVER, evaluate_section, evaluation_features, read_metrics

__all__ = ["SearchConfig", "ParetoConfig", "expand_search", "pareto_front", "run_pareto"]

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class SearchConfig:
    """The grid, the sample count per FID, the quality tolerance, and extra keys for the generated stages."""

    model: str = "checkpoint"  # the recipe stage whose trained model is explored
    sampler: str = "ddim"
    sampler_steps: tuple[int, ...] = (50, 32, 16)
    spacing: str = "uniform"
    solver_steps: tuple[int, ...] = (1,)
    prune: tuple[float, ...] = (1.0,)  # fraction of the MACs kept; 1.0 = not pruned
    precision: tuple[str, ...] = ("fp32", "int8")
    distill: tuple[int, ...] = (0,)  # 0: the model's own grid; N: a student for N DDIM steps (trailing), its variants
    quality_tolerance: float = 0.10
    n: int = 500
    prune_config: dict = field(default_factory=dict)
    quantize_config: dict = field(default_factory=dict)
    distill_config: dict = field(default_factory=dict)  # DistillConfig keys of the distill stages (from_steps, ...)
    bench_config: dict = field(default_factory=dict)
    evaluate_config: dict = field(default_factory=dict)  # e.g. {features = "inception"}

    def __post_init__(self):
        for name in ("sampler_steps", "solver_steps", "prune", "precision", "distill"):
            if not getattr(self, name):
                raise ConfigError(f"search.{name} must list at least one value")
        for s in self.sampler_steps + self.solver_steps:
            check_positive("search steps", s)
        for d in self.distill:
            check_positive("search.distill values (0: no distillation)", d, allow_zero=True)
        if "to_steps" in self.distill_config:
            raise ConfigError("search.distill_config cannot set to_steps: the distill axis gives it")
        for p in self.prune:
            if not 0 < p <= 1:
                raise ConfigError(f"search.prune values are fractions of the MACs kept, in (0, 1]; got {p}")
        for p in self.precision:
            check_choice("search.precision", p, PRECISIONS)
        check_positive("quality_tolerance", self.quality_tolerance)
        check_positive("n", self.n)
        check_choice("search.sampler", self.sampler, SAMPLERS)
        check_choice("search.spacing", self.spacing, SPACINGS)


def _tag(p: float) -> str:
    return "full" if p >= 1 else f"prune{p:g}"


def _solver_precision(cfg: SearchConfig, src: str, tag: str, specs: list[dict]) -> list[str]:
    """Unroll `src` at each solver step count, export, quantize: appends the stages, returns the final variants."""
    finals = []
    for s in cfg.solver_steps:
        base = f"search-{tag}-solver{s}"
        specs.append({"stage": "unroll", "name": base, "input": src, "steps": s})
        specs.append({"stage": "export", "name": f"{base}-fp32", "input": base})
        if "fp32" in cfg.precision:
            finals.append(f"{base}-fp32")
        if "fp16" in cfg.precision:
            specs.append({"stage": "export", "name": f"{base}-fp16", "input": base, "precision": "fp16"})
            finals.append(f"{base}-fp16")
        if "int8" in cfg.precision:
            specs.append({"stage": "quantize", "name": f"{base}-int8", "input": f"{base}-fp32", "target": "cpu",
                          **cfg.quantize_config})
            finals.append(f"{base}-int8")
    return finals


def expand_search(cfg: SearchConfig) -> list[dict]:
    """The [[stage]] tables that carry out the search (checked by the recipe's own rules after)."""
    specs: list[dict] = []
    finals: list[str] = []
    if 0 in cfg.distill:
        for p in cfg.prune:
            src = cfg.model
            if p < 1:
                src = f"search-{_tag(p)}"
                specs.append({"stage": "prune", "name": src, "input": cfg.model, "target_macs": p, **cfg.prune_config})
            finals += _solver_precision(cfg, src, _tag(p), specs)
    students: dict[int, list[str]] = {}  # student steps -> the student and its variants
    for n in sorted({d for d in cfg.distill if d > 0}, reverse=True):
        src = f"search-distill{n}"
        specs.append({"stage": "distill", "name": src, "input": cfg.model, **cfg.distill_config, "to_steps": n})
        students[n] = [src] + _solver_precision(cfg, src, f"distill{n}", specs)
    variants = [cfg.model] + finals
    sampler = cfg.sampler if cfg.spacing == "uniform" else f"{cfg.sampler}-{cfg.spacing}"
    for st in cfg.sampler_steps:
        specs.append({"stage": "evaluate", "name": f"search-eval-{sampler}{st}", "inputs": variants,
                      "n": cfg.n, "sampler": cfg.sampler, "steps": st, "spacing": cfg.spacing, **cfg.evaluate_config})
    for n, names in students.items():  # each student at the grid it was distilled for
        specs.append({"stage": "evaluate", "name": f"search-eval-distill{n}", "inputs": names, "n": cfg.n,
                      "sampler": "ddim", "steps": n, "spacing": "trailing", **cfg.evaluate_config})
    every = variants + [v for names in students.values() for v in names]
    specs.append({"stage": "bench", "name": "search-bench", "inputs": every, "batch": 1, "sampler": cfg.sampler,
                  "sampler_steps": max(cfg.sampler_steps), "spacing": cfg.spacing, **cfg.bench_config})
    specs.append({"stage": "pareto", "name": "search-pareto", "inputs": every, "bench": "search-bench",
                  "sampler": cfg.sampler, "sampler_steps": list(cfg.sampler_steps), "spacing": cfg.spacing,
                  "quality_tolerance": cfg.quality_tolerance,
                  "distilled": {v: n for n, names in students.items() for v in names}})
    return specs


@dataclass(frozen=True)
class ParetoConfig:
    """Which bench stage's timings and which evaluations to read, and the allowed FID increase."""

    bench: str = "search-bench"
    sampler: str = "ddim"
    sampler_steps: tuple[int, ...] = (50,)
    spacing: str = "uniform"
    quality_tolerance: float = 0.10
    # Inputs (by stage name) distilled for N DDIM steps: ranked at DDIM N steps, trailing, not at sampler_steps.
    distilled: dict = field(default_factory=dict)

    def __post_init__(self):
        check_positive("quality_tolerance", self.quality_tolerance)
        for name, n in self.distilled.items():
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise ConfigError(f"pareto.distilled.{name} must be a positive step count, got {n!r}")


def pareto_front(rows: list[dict], quality: str = "fid", cost: str = "image_ms") -> list[dict]:
    """The rows no other row beats on both quality and cost (lower is better for both)."""
    front, best = [], float("inf")
    for r in sorted(rows, key=lambda r: (r[cost], r[quality])):
        if r[quality] < best:
            front.append(r)
            best = r[quality]
    return front


def _run_evaluations(run_dir: Path) -> dict[tuple, dict]:
    """The evaluations the run's evaluate stages recorded in their result.json, by (artifact, sampler, steps, spacing):
    where the measurements of a model linked in from outside the run are (the pipeline never writes into it)."""
    found = {}
    for result in sorted(run_dir.glob(f"*/{RESULT}")):
        try:
            rows = json.loads(result.read_text()).get("results")
        except (OSError, ValueError, RecursionError, AttributeError):
            continue
        for m in rows if isinstance(rows, list) else ():
            if isinstance(m, dict) and "fid" in m and isinstance(m.get("artifact"), str):
                key = m.get("sampler"), m.get("sampler_steps"), m.get("spacing", "uniform")
                found[(Path(m["artifact"]).resolve(), *key)] = m
    return found


def _variant_rows(cfg: ParetoConfig, ctx) -> list[dict]:
    bench = json.loads((ctx.run_dir / cfg.bench / RESULT).read_text())
    p50 = {Path(r["artifact"]).resolve(): r for r in bench["results"]}
    in_run = _run_evaluations(ctx.run_dir)
    rows = []
    for art in ctx.inputs:
        metrics = read_metrics(art.path)
        timing = p50.get(art.path.resolve())
        student = cfg.distilled.get(art.path.name)
        sampler, spacing, steps = ("ddim", "trailing", [student]) if student else \
            (cfg.sampler, cfg.spacing, cfg.sampler_steps)
        spaced = "" if spacing == "uniform" else f" {spacing}"
        for st in steps:
            # This run's own evaluation first: a linked model's metrics.json may hold another run's (other n, seed).
            ev = (in_run.get((art.path.resolve(), sampler, st, spacing))
                  or metrics.get(evaluate_section(sampler, st, spacing)))
            if ev is None or timing is None:
                raise ConfigError(f"pareto: {art.path.name} has no {'evaluation' if ev is None else 'bench'} at "
                                  f"{sampler} {st}{spaced}; run the evaluate and bench stages first")
            rows.append({"variant": f"{art.path.name} · {sampler} {st}{spaced}", "artifact": str(art.path),
                         "kind": art.kind, "runtime": timing["runtime"], "precision": timing["precision"],
                         "solver": art.manifest.get(SOLVER), "distilled_steps": student, "sampler_steps": st,
                         "fid": ev["fid"],
                         "kid_mean": ev["kid_mean"], "features": evaluation_features(ev), "call_ms": timing["p50_ms"],
                         "image_ms": timing["p50_ms"] * st})  # network time per image at batch 1
    spaces = sorted({r["features"] for r in rows})
    if len(spaces) > 1:
        raise ConfigError(f"pareto: the evaluations were measured in different feature spaces ({', '.join(spaces)}); "
                          f"FIDs in two spaces cannot be compared: evaluate every input with the same features")
    return rows


def run_pareto(cfg: ParetoConfig, ctx):
    """Pareto front and the fastest variant within the tolerance; `result.json` in the stage folder."""
    rows = _variant_rows(cfg, ctx)
    reference = next(r for r in rows if r["artifact"] == str(ctx.inputs[0].path)
                     and r["sampler_steps"] == max(cfg.sampler_steps))
    limit = reference["fid"] * (1 + cfg.quality_tolerance)
    front = pareto_front(rows)
    ok = [r for r in rows if r["fid"] <= limit]
    fastest = min(ok, key=lambda r: r["image_ms"])
    for r in rows:
        r["on_front"] = r in front
        r["within_tolerance"] = r["fid"] <= limit
        r["speedup_vs_reference"] = reference["image_ms"] / r["image_ms"]
    result = {"reference": reference, "fid_limit": limit, "quality_tolerance": cfg.quality_tolerance,
              "fastest_within_tolerance": fastest, "front": [r["variant"] for r in front], "rows": rows}
    write_json_atomic(ctx.out / RESULT, result)
    print(format_pareto(result))
    return None


def format_pareto(result: dict) -> str:
    lines = [f"{'variant':58} {'FID':>7} {'ms/call':>8} {'ms/image':>9} {'speed-up':>8}  front"]
    for r in sorted(result["rows"], key=lambda r: r["image_ms"]):
        mark = ("*" if r["on_front"] else " ") + (" ok" if r["within_tolerance"] else "")
        lines.append(f"{r['variant'][:58]:58} {r['fid']:7.2f} {r['call_ms']:8.3f} {r['image_ms']:9.1f} "
                     f"{r['speedup_vs_reference']:7.1f}x  {mark}")
    f = result["fastest_within_tolerance"]
    lines.append(f"fastest within FID +{100 * result['quality_tolerance']:.0f}% of the reference "
                 f"({result['reference']['variant']}, FID {result['reference']['fid']:.2f}): {f['variant']}, "
                 f"{f['image_ms']:.1f} ms per image, {f['speedup_vs_reference']:.1f}x faster, FID {f['fid']:.2f}")
    return "\n".join(lines)
