"""The quantize stage: an FP32 ONNX artifact → an INT8 Q/DQ artifact, with accuracy-aware fallback.

1. Calibration set from the diffusion process (the FP32 model's own sampling runs).
2. Activation ranges per tensor (min-max, percentile or entropy).
3. Sensitivity: the ε error each quantizable layer causes when it alone is quantized.
4. Fallback: the most sensitive layers stay in float, more of them until the ε relative error
   against the FP32 model is within the tolerance; among the passing configurations, the
   fastest measured one is kept (`select="fastest"`: layouts timed within TIE_BAND of the fastest, or
   within the timing's own measured noise if larger, tie, and the tie goes to the fewest float layers),
   or the one with the fewest float layers (`select="fewest-float"`, deterministic, and the only choice
   for TensorRT, which cannot be timed on a machine without it).
5. Drift against the parent (ε error by timestep, sample PSNR from the same seeds) recorded.
6. FP32, FP16 and INT8 side by side (`precisions` in the manifest): ε error against FP32 on the
   held-out inputs, file size, and ONNX Runtime CPU latency at batch 1 and `bench_batch`, timed
   in turn. The FP16 model is the parent exported as `export --precision fp16` would.

The timings (4 and 6) and the drift's sampling runs follow the model's cost (`timing_batch`,
`drift.drift_samples_for`): at 64 px a batch of 16 is 48 G MACs per call, and the timing phases alone
took minutes (docs/results/2026-12-02-stage-costs-64.md).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..artifact import Artifact, ArtifactWriter, check_output_path
from ..checkpoint import CONFIG, read_train_config
from ..config import check_choice, check_positive, to_dict
from ..diffusion import alphas_cumprod
from ..drift import drift_samples_for, error_by_timestep, psnr, rel_err, schedule_inputs
from ..errors import ArtifactError, ConfigError, CunetEdgeError
from ..evaluation import evaluate_images
from ..export.onnx import OnnxExportConfig, export_onnx
from ..kinds import STAGE_IO
from ..records import SOLVER, precision_of
from ..runtimes.base import open_runner
from ..runtimes.numpy_sampler import sample
from ..sampling import SampleConfig, generate_with_runner
from ..timing import PhaseClock, time_call, time_side_by_side
from .calibration import CalibrationConfig, activation_ranges, capture_calibration_set
from .lint import assert_tensorrt_qdq
from .qdq import SCHEMES, insert_qdq, quantizable_nodes

__all__ = ["QuantizeConfig", "quantize_int8", "parse_tolerance", "format_side_by_side"]

FALLBACK_STEPS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
SCREEN_INPUTS, MIN_SCREEN_INPUTS = 8, 4  # sensitivity screening: 8 inputs up to 16 px, 4 at 32 px and above
TIE_BAND = 0.03  # passing layouts timed within 3% of the fastest tie (or within the timing's noise, if larger)
TIMING_MACS = 8e9  # most MACs per timed call: the timing batch shrinks below bench_batch for larger models


def timing_batch(bench_batch: int, macs: int | None) -> int:
    """The batch the timing phases use: bench_batch, or fewer images when one call would exceed TIMING_MACS
    (at least 1). The 16- and 32-px models keep 16; the 64-px preset (3.0 G MACs per call) is timed at 2."""
    if not macs:
        return bench_batch
    return max(1, min(bench_batch, int(TIMING_MACS // macs)))


@dataclass(frozen=True)
class QuantizeConfig:
    """Target format, calibration, tolerance and how the passing configuration is chosen."""

    target: str = "tensorrt"
    calibration: CalibrationConfig = CalibrationConfig()
    tolerance: float = 0.03
    fid_tolerance: float | None = None
    fid_n: int = 500
    max_float_layers: int = 32
    select: str | None = None  # default: fastest for cpu, fewest-float for tensorrt
    val_n: int = 64
    # validation inputs each layer is first screened on (0: all of them; None: by the image size, screen_inputs_for)
    sensitivity_n: int | None = None
    bench_batch: int = 16
    drift_samples: int | None = None  # sampling runs of the drift; None: by the image size (drift.drift_samples_for)
    compare_fp16: bool = True  # export the parent at fp16 for the side-by-side table

    def __post_init__(self):
        check_choice("target", self.target, ("tensorrt", "cpu"))
        check_positive("tolerance", self.tolerance)
        if self.fid_tolerance is not None:
            check_positive("fid_tolerance", self.fid_tolerance)
        check_positive("max_float_layers", self.max_float_layers, allow_zero=True)
        check_positive("val_n", self.val_n)
        if self.sensitivity_n is not None:
            check_positive("sensitivity_n", self.sensitivity_n, allow_zero=True)
        check_positive("bench_batch", self.bench_batch)
        if self.drift_samples is not None:
            check_positive("drift_samples", self.drift_samples)
        if self.select is not None:
            check_choice("select", self.select, ("fastest", "fewest-float"))
        if self.target == "tensorrt" and self.select == "fastest":
            raise ConfigError("select 'fastest' needs TensorRT to time the candidates; use fewest-float for tensorrt")

    def screen_inputs_for(self, image_size: int) -> int:
        """Validation inputs each layer is screened on: sensitivity_n if given, else SCREEN_INPUTS up to 16 px and
        fewer as the image grows (at least MIN_SCREEN_INPUTS; each input holds (size / 16)² times the values).
        Only the screening ranks; the head of the ranking is measured again on all inputs (_Sensitivity)."""
        if self.sensitivity_n is not None:
            return self.sensitivity_n
        return max(MIN_SCREEN_INPUTS, min(SCREEN_INPUTS, round(SCREEN_INPUTS * (16 / image_size) ** 2)))

    @property
    def selection(self) -> str:
        return self.select or ("fastest" if self.target == "cpu" else "fewest-float")


def parse_tolerance(text: str) -> tuple[float, float | None]:
    """'0.03' → (0.03, None); 'eps=0.03,fid=0.1' → (0.03, 0.1): ε relative error, and relative FID increase."""
    text = str(text).strip()
    try:
        if "=" not in text:
            return float(text), None
        parts = dict(p.split("=", 1) for p in text.split(","))
        unknown = set(parts) - {"eps", "fid"}
        if unknown:
            raise ConfigError(f"tolerance {text!r}: unknown key {sorted(unknown)[0]!r}; keys are eps and fid")
        fid = parts.get("fid")
        return float(parts.get("eps", 0.03)), (float(fid) if fid is not None else None)
    except ValueError:
        raise ConfigError(f"tolerance {text!r} cannot be parsed: give a number (0.03) or eps=0.03,fid=0.1") from None


def _session(model_or_path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _errors_by_kind(out: np.ndarray, ref: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float]:
    """ε relative error of `out` against `ref` on each kind of held-out input (groups: kind -> indices)."""
    return {kind: rel_err(out[idx], ref[idx]) for kind, idx in groups.items()}


class _Validator:
    """ε of a candidate vs the FP32 model on held-out inputs (see _validation_set): on the whole set, the larger of
    the errors on each kind of input, so that the tolerance holds for both; on a subset (the sensitivity screening,
    a ranking only), the error over that subset."""

    def __init__(self, fp32_path: Path, val: dict, groups: dict[str, np.ndarray] | None = None):
        self.val = val
        self.groups = groups or {"held-out": np.arange(len(val["x"]))}
        self.ref = _session(fp32_path).run(["eps"], val)[0]

    def subset(self, n: int | None) -> np.ndarray:
        """Indices of n validation inputs spread evenly over the set (so over the timesteps); all when n is None."""
        total = len(self.ref)
        if n is None or n >= total:
            return np.arange(total)
        return np.unique(np.linspace(0, total - 1, n).round().astype(int))

    def error(self, model, n: int | None = None) -> float:
        """ε relative error on all validation inputs, or on `n` of them spread over the set."""
        idx = self.subset(n)
        if len(idx) == len(self.ref):
            return max(_errors_by_kind(_session(model).run(["eps"], self.val)[0], self.ref, self.groups).values())
        feed = {k: np.ascontiguousarray(v[idx]) for k, v in self.val.items()}
        return rel_err(_session(model).run(["eps"], feed)[0], self.ref[idx])

    def breakdown(self, model, bins: int = 10) -> dict:
        """The chosen model's error by kind of input and by timestep band, from one run over the held-out set."""
        out = _session(model).run(["eps"], self.val)[0]
        return {"eps_rel_err_by_inputs": _errors_by_kind(out, self.ref, self.groups),
                "eps_rel_err_by_timestep": error_by_timestep(out, self.ref, self.val["t"], bins)}


class _Sensitivity:
    """The ε error of quantizing each layer alone: screened on a few validation inputs, then re-measured on all of
    them for the layers the fallback reaches.

    Measuring every layer on the whole validation set costs one full evaluation per layer (layers × inputs × the
    model's cost: most of the stage's time at 64 px). The ranking only decides which layers the fallback keeps in
    float, and the fallback keeps few. So every layer is screened on `screen_n` inputs spread over the timesteps,
    and only the layers at the head of the ranking (the first k + REFINE_MARGIN when the fallback tries k) are
    measured again on all inputs. The ranking is by the best-known error (the full one where measured), refined
    until its head holds full measurements only. docs/results/2026-12-02-scale.md compares the decisions with the
    one-full-evaluation-per-layer ranking.
    """

    REFINE_MARGIN = 4

    def __init__(self, model, ranges, scheme, validator: _Validator, screen_n: int | None):
        self.model, self.ranges, self.scheme, self.validator = model, ranges, scheme, validator
        self.nodes = quantizable_nodes(model, scheme)
        self.screen_inputs = len(validator.subset(screen_n))
        full = self.screen_inputs == len(validator.ref)
        self.err = {n: (validator.error(self._alone(n), screen_n), full) for n in self.nodes}
        self.evaluations = {"screen": len(self.nodes), "screen_inputs": self.screen_inputs, "full": 0,
                            "full_inputs": len(validator.ref)}

    def _alone(self, node: str):
        return insert_qdq(self.model, self.ranges, self.scheme, float_nodes=set(self.nodes) - {node})

    def order(self, k: int) -> list[str]:
        """Every layer, most harmful first, the first k + REFINE_MARGIN measured on all validation inputs."""
        while True:
            order = sorted(self.nodes, key=lambda n: (-self.err[n][0], n))
            todo = [n for n in order[:k + self.REFINE_MARGIN] if not self.err[n][1]]
            if not todo:
                return order
            for n in todo:
                self.err[n] = (self.validator.error(self._alone(n)), True)
                self.evaluations["full"] += 1

    def record(self) -> list[dict]:
        """The ranking as the manifest keeps it: each layer's error and the number of inputs it was measured on."""
        full, screen = self.evaluations["full_inputs"], self.screen_inputs
        order = sorted(self.nodes, key=lambda n: (-self.err[n][0], n))
        return [{"node": n, "eps_rel_err": self.err[n][0], "inputs": full if self.err[n][1] else screen}
                for n in order]


def _latency_ms(model, val: dict, batch: int) -> float:
    sess = _session(model)
    feed = {"x": np.ascontiguousarray(val["x"][:batch]), "t": val["t"][:batch]}
    return time_call(lambda: sess.run(["eps"], feed), warmup=3, min_iters=10, min_seconds=0.5)["p50_ms"]


def _search(model, ranges, scheme, validator: _Validator, cfg: QuantizeConfig, image_size: int, bar=None) -> dict:
    """Try 0, 1, 2, ... most sensitive layers in float; stop two steps after the first that passes."""
    sens = _Sensitivity(model, ranges, scheme, validator, cfg.screen_inputs_for(image_size) or None)
    tried, passed_at = [], None
    for k in [k for k in FALLBACK_STEPS if k <= min(cfg.max_float_layers, len(sens.nodes))]:
        order = sens.order(k)
        q = insert_qdq(model, ranges, scheme, float_nodes=set(order[:k]))
        err = validator.error(q)
        tried.append({"float_layers": k, "float_nodes": order[:k], "eps_rel_err": err,
                      "passes": err <= cfg.tolerance, "model": q})
        if bar is not None:
            bar()
        if err <= cfg.tolerance and passed_at is None:
            passed_at = len(tried) - 1
        if passed_at is not None and len(tried) - passed_at > 2:
            break
    return {"sensitivity": sens.record(), "sensitivity_evaluations": sens.evaluations, "tried": tried}


def _choose(tried: list[dict], val: dict, cfg: QuantizeConfig, batch: int) -> tuple[dict, dict]:
    """Among passing candidates: the fastest measured, or the fewest float layers; else the least error. Returns the
    candidate and how it was chosen (the manifest's `choice`).

    "Fastest" times each passing layout twice, in turn, at `batch`. Timings on a shared machine move by more than
    the layouts differ (two runs of one ONNX model kept 8 and 12 float layers), so layouts whose median is within
    TIE_BAND of the fastest, or within the timing's measured noise if that is larger (the largest relative spread
    between a layout's two timings), tie; the tie goes to the fewest float layers, as `fewest-float` chooses: every
    tied layout passes the error gate, the choice no longer follows the noise, and the most INT8 layout is the
    smallest. The other tie-break, the least error, would keep more layers in float (on the digits recipe 12
    against 8: FID 6.58 / 10.28 against 6.86–6.94 / 10.80–10.84 at DDIM 50 / 16; see
    docs/results/2026-12-02-digits-recipe.md)."""
    ok = [c for c in tried if c["passes"]]
    if not ok:
        return min(tried, key=lambda c: c["eps_rel_err"]), {"rule": "none passes: the least error"}
    if cfg.selection == "fewest-float" or len(ok) == 1:
        return ok[0], {"rule": "fewest float layers" if cfg.selection == "fewest-float" else "the only passing one"}
    for c in ok:
        c["latency_rounds_ms"] = []
    for _ in range(2):  # timed in turn, twice, so that one noisy moment does not decide
        for c in ok:
            c["latency_rounds_ms"].append(_latency_ms(c["model"], val, batch))
    for c in ok:
        c["latency_ms"] = float(np.median(c["latency_rounds_ms"]))
    return _fastest_with_ties(ok, batch)


def _fastest_with_ties(ok: list[dict], batch: int) -> tuple[dict, dict]:
    """The fewest float layers among the layouts timed within the tie band of the fastest (see _choose)."""
    noise = max((max(c["latency_rounds_ms"]) - min(c["latency_rounds_ms"])) / min(c["latency_rounds_ms"])
                for c in ok)
    band = max(TIE_BAND, noise)
    fastest = min(ok, key=lambda c: c["latency_ms"])
    tied = [c for c in ok if c["latency_ms"] <= fastest["latency_ms"] * (1 + band)]
    best = min(tied, key=lambda c: (c["float_layers"], c["latency_ms"]))
    return best, {"rule": f"fastest; layouts within max({TIE_BAND:g}, the timing's noise) of it tie, and the tie "
                          "goes to the fewest float layers",
                  "timing_batch": batch, "noise": noise, "tie_band": band,
                  "fastest_float_layers": fastest["float_layers"],
                  "tied_float_layers": [c["float_layers"] for c in tied],
                  "latency_ms": {str(c["float_layers"]): c["latency_ms"] for c in ok}}


class _SessionRunner:
    """Just enough of a runner (eps_fn, static_batch, train_config) to sample an in-memory ONNX model."""

    name = "onnxruntime"

    def __init__(self, model, art):
        self.sess, self.art = _session(model), art

    def eps_fn(self):
        return lambda x, t: self.sess.run(["eps"], {"x": x.astype(np.float32), "t": t.astype(np.int64)})[0]

    def static_batch(self):
        b = self.art.manifest["signature"]["inputs"]["x"]["shape"][0]
        return b if isinstance(b, int) else None

    def train_config(self):
        return read_train_config(self.art)


def _fid(model, art, n: int) -> float:
    runner = _SessionRunner(model, art)
    return evaluate_images(generate_with_runner(runner, SampleConfig(n=n)), runner.train_config().data)["fid"]


def _fid_gate(best: dict, tried: list[dict], art, cfg: QuantizeConfig) -> tuple[dict, dict | None]:
    """With a FID tolerance: the first passing layout (chosen one first, then more float layers) whose FID holds."""
    if cfg.fid_tolerance is None:
        return best, None
    ref = _fid(art.file("model.onnx"), art, cfg.fid_n)
    order = [best] + sorted((c for c in tried if c["passes"] and c is not best), key=lambda c: c["float_layers"])
    for c in order:
        c["fid"] = _fid(c["model"], art, cfg.fid_n)
        if c["fid"] <= (1 + cfg.fid_tolerance) * ref:
            return c, {"fid_fp32": ref, "fid_int8": c["fid"], "n": cfg.fid_n, "passes": True}
    c = min(order, key=lambda c: c["fid"])
    c["passes"] = False
    return c, {"fid_fp32": ref, "fid_int8": c["fid"], "n": cfg.fid_n, "passes": False}


SAMPLING, NOISY_DATA = "sampling runs", "noisy test images"


class _HeldOut(NamedTuple):
    val: dict  # the ONNX feed: x, t
    groups: dict  # kind of input -> indices into val
    note: str | None  # why the noisy test images are missing, if they are


def _validation_set(runner, cfg: QuantizeConfig) -> _HeldOut:
    """Held-out denoiser inputs of two kinds, half each, and which is which: inputs from the FP32 model's own
    sampling runs (another seed than the calibration's), spread over the whole schedule; and noisy test images
    x_t = q(x_t | x_0) at timesteps spread over the schedule, the inputs on which the report's ε, the stages' drift
    records and benchmarks/scale.py measure. The INT8 error is larger on the second kind: gated on sampling inputs
    alone, the digits model's INT8 passed at 2.53% and the report measured 3.86% (2026-12-02-paper64-quiet.md).
    Where the test images cannot be loaded (an imported model whose dataset is not on this machine), sampling
    inputs only, and the reason is returned."""
    import dataclasses


    c = cfg.calibration
    train_cfg = runner.train_config()
    shape = tuple(runner.signature["inputs"]["x"]["shape"][1:])
    data, note = None, "val_n is 1"
    if cfg.val_n >= 2:
        try:
            x, t = schedule_inputs(train_cfg, cfg.val_n // 2, c.seed + 2)
            data, note = {"x": np.ascontiguousarray(x.numpy(), dtype=np.float32), "t": t.numpy().astype(np.int64)}, None
            if data["x"].shape[1:] != shape:
                data, note = None, f"test images are {data['x'].shape[1:]}, the model takes {shape}"
        except CunetEdgeError as exc:
            note = str(exc)
    n_sampling = cfg.val_n - (len(data["x"]) if data else 0)
    runs = max(4, c.images_for(train_cfg.model.image_size) // 4)
    held = capture_calibration_set(runner, dataclasses.replace(c, seed=c.seed + 1, n_images=runs))
    idx = np.linspace(0, held["x"].shape[0] - 1, min(n_sampling, held["x"].shape[0])).round().astype(int)
    val = {"x": np.ascontiguousarray(held["x"][idx]), "t": held["t"][idx]}
    groups = {SAMPLING: np.arange(len(idx))}
    if data is not None:
        groups[NOISY_DATA] = np.arange(len(idx), len(idx) + len(data["x"]))
        val = {k: np.ascontiguousarray(np.concatenate([val[k], data[k]])) for k in val}
    return _HeldOut(val, groups, None if note is None else f"{NOISY_DATA} not used: {note}")


def _sample_psnr(fp32_path: Path, model, train_cfg, n: int, steps: int = 20) -> float:
    """PSNR of the quantized model's samples against the FP32 model's, from the same seeded noise."""
    m = train_cfg.model
    shape, abar = (m.in_channels, m.image_size, m.image_size), alphas_cumprod(train_cfg.diffusion)
    imgs = []
    for sess in (_session(fp32_path), _session(model)):
        imgs.append(sample(lambda x, t, s=sess: s.run(["eps"], {"x": x, "t": t})[0], n, shape, abar, steps=steps,
                           seed=0, batch_size=n, **train_cfg.diffusion.sampler_options(),
                           data_range=train_cfg.diffusion.data_range))
    return psnr(imgs[1], imgs[0])


def _sizes(fp32_path: Path, model) -> dict:
    from onnx import numpy_helper

    by_type: dict[str, int] = {}
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        by_type[str(a.dtype)] = by_type.get(str(a.dtype), 0) + a.nbytes
    size = len(model.SerializeToString())
    return {"fp32_bytes": fp32_path.stat().st_size, "int8_model_bytes": size,
            "ratio": size / fp32_path.stat().st_size, "initializer_bytes_by_dtype": by_type}


def _fp16_sibling(art, tmp: Path) -> tuple[Path | None, str]:
    """The parent of `art` exported at fp16 into tmp (the model `export --precision fp16` ships), or why not."""
    parent = art.manifest.get("parent") or {}
    try:
        src = Artifact.load(parent.get("path", ""))
    except (CunetEdgeError, OSError) as exc:
        return None, f"FP16 not compared: the parent model of {art.path} is not here ({exc})"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fp16 = export_onnx(src.path, OnnxExportConfig(precision="fp16", verify_n=2), tmp / "fp16")
    except CunetEdgeError as exc:  # the INT8 result stands without the comparison
        return None, f"FP16 not compared: exporting {src.path} at fp16 failed ({exc})"
    return fp16.file("model.onnx"), f"{src.path} exported at fp16"


def _side_by_side(fp32_path: Path, fp16_path: Path | None, int8_model, val: dict, groups: dict, batch: int,
                  note: str, threads: int = 1) -> dict:
    """FP32, FP16 and INT8 on ONNX Runtime CPU: ε vs FP32 on held-out inputs (the larger over their kinds, as the
    gate measures it), size, p50 per call timed in turn."""
    models = {"fp32": fp32_path, "fp16": fp16_path, "int8": int8_model}
    sessions = {k: _session(m, threads) for k, m in models.items() if m is not None}

    def call(sess, b: int):
        dtype = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32
        feed = {"x": np.ascontiguousarray(val["x"][:b]).astype(dtype), "t": val["t"][:b]}
        return lambda: sess.run(["eps"], feed)[0]

    ref = call(sessions["fp32"], len(val["x"]))()
    rows = {}
    for k, sess in sessions.items():
        m = models[k]
        out = call(sess, len(val["x"]))().astype(np.float32)
        rows[k] = {"precision": k, "eps_rel_err": max(_errors_by_kind(out, ref, groups).values()),
                   "bytes": len(m.SerializeToString()) if hasattr(m, "SerializeToString") else Path(m).stat().st_size}
    batches = sorted({1, batch})
    for b in batches:
        times = time_side_by_side({k: call(sess, b) for k, sess in sessions.items()}, rounds=3, warmup=3,
                                  min_iters=10, min_seconds=0.3)
        for k, ms in times.items():
            rows[k][f"p50_ms_b{b}"] = ms
            rows[k][f"speedup_b{b}"] = times["fp32"] / ms
    for r in rows.values():
        r["size_vs_fp32"] = r["bytes"] / rows["fp32"]["bytes"]
    return {"runtime": "onnxruntime cpu", "threads": threads, "batches": batches,
            "fp16": note, "rows": list(rows.values())}


def format_side_by_side(table: dict) -> str:
    """The manifest's `precisions` table as text."""
    bs = table["batches"]
    head = f"{'precision':10} {'eps rel err':>11} {'size':>7} " + " ".join(f"{f'b{b} p50 ms':>11} {'x fp32':>7}" for b in bs)
    lines = [head]
    for r in table["rows"]:
        cells = " ".join(f"{r[f'p50_ms_b{b}']:11.3f} {r[f'speedup_b{b}']:7.2f}" for b in bs)
        lines.append(f"{r['precision']:10} {r['eps_rel_err']:11.2e} {r['size_vs_fp32']:6.2f}x {cells}")
    lines.append(f"ONNX Runtime CPU, {table['threads']} thread(s), timed in turn; FP16: {table['fp16']}")
    return "\n".join(lines)


def _check_source(src):
    art = Artifact.load(src)
    io = STAGE_IO["quantize"]
    if art.kind == io.produces():
        raise ConfigError(f"{src} is already quantized (kind {art.kind}); quantize its FP32 parent instead")
    if art.kind not in io.accepts:
        raise ArtifactError(f"{src} is an artifact of kind {art.kind!r}; quantize needs an ONNX artifact "
                            f"(cunet-edge export --format onnx)")
    if precision_of(art.manifest) != "fp32":
        raise ConfigError(f"{src} is a {art.manifest.get('precision')} ONNX model; quantize an fp32 export")
    return art


def _calibrate(art, cfg: QuantizeConfig, stats: dict | None = None):
    """Calibration and validation sets from the FP32 model's own sampling, and activation ranges (`stats`: how
    the range collection was split, see activation_ranges)."""
    with open_runner(art.path, "onnxruntime", threads=1) as r:
        calib = capture_calibration_set(r, cfg.calibration)
        held = _validation_set(r, cfg)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        ranges = activation_ranges(art.file("model.onnx"), calib, cfg.calibration, Path(tmp), stats=stats)
    return calib, held, ranges


def _record(art, cfg: QuantizeConfig, scheme, calib, search, best, drift, sizes, lint) -> dict:
    m = art.manifest
    tried = [{k: v for k, v in c.items() if k != "model"} for c in search["tried"]]
    return dict(
        precision="int8", target=cfg.target, scheme=to_dict(scheme), signature=m["signature"],
        solver=m.get(SOLVER), model_cost=m.get("model_cost"), dynamic_batch=m.get("dynamic_batch"),
        batch=m.get("batch"), calibration={"inputs": int(calib["x"].shape[0]), "files": ["calibration/x.npy",
                                                                                       "calibration/t.npy"]},
        sensitivity=search["sensitivity"], sensitivity_evaluations=search["sensitivity_evaluations"], tried=tried,
        float_nodes=best["float_nodes"],
        passed=bool(best["passes"]), tolerance=cfg.tolerance, selection=cfg.selection, drift=drift, size=sizes,
        tensorrt_lint=lint,
    )


def quantize_int8(src, cfg: QuantizeConfig, out, *, progress: bool = True):
    """Stage: FP32 `onnx` artifact → `onnx-int8` artifact (Q/DQ), within cfg.tolerance if any layout is."""
    import onnx
    from rich.progress import Progress


    check_output_path(out)
    art = _check_source(src)
    scheme = SCHEMES[cfg.target]
    fp32 = art.file("model.onnx")
    train_cfg = read_train_config(art)  # read once: the image size sets several phases' sizes
    clock = PhaseClock()
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("calibrate", total=None)
        collection: dict = {}
        calib, held, ranges = _calibrate(art, cfg, collection)
        val = held.val
        clock.lap("calibrate")
        bar.update(task, description="sensitivity and fallback search")
        model = onnx.load(str(fp32))
        validator = _Validator(fp32, val, held.groups)
        search = _search(model, ranges, scheme, validator, cfg, train_cfg.model.image_size)
        clock.lap("sensitivity_and_fallback")
        batch = timing_batch(cfg.bench_batch, (art.manifest.get("model_cost") or {}).get("macs"))
        best, choice = _choose(search["tried"], val, cfg, batch)
        clock.lap("choose")
        bar.update(task, description="FID check" if cfg.fid_tolerance else "drift")
        best, fid = _fid_gate(best, search["tried"], art, cfg)
        clock.lap("fid")
        bar.update(task, description="FP32, FP16 and INT8 side by side")
        with tempfile.TemporaryDirectory() as tmp:
            fp16, note = _fp16_sibling(art, Path(tmp)) if cfg.compare_fp16 else (None, "not compared (compare_fp16 off)")
            precisions = _side_by_side(fp32, fp16, best["model"], val, held.groups, batch, note)
        clock.lap("side_by_side")
    lint = _lint(best, cfg)
    samples = drift_samples_for(train_cfg.model.image_size, cfg.drift_samples)
    drift = {"eps_rel_err": best["eps_rel_err"], **validator.breakdown(best["model"]),
             "sample_psnr_vs_parent": _sample_psnr(fp32, best["model"], train_cfg, samples),
             "samples": samples,
             "reference": "parent FP32 ONNX on ONNX Runtime CPU", "fid": fid}
    clock.lap("drift")
    with ArtifactWriter(out, kind=STAGE_IO["quantize"].produces(), stage="quantize", config=to_dict(cfg), parent=art) as w:
        onnx.save(best["model"], str(w.dir / "model.onnx"))
        (w.dir / "calibration").mkdir()
        np.save(w.dir / "calibration" / "x.npy", calib["x"])
        np.save(w.dir / "calibration" / "t.npy", calib["t"])
        (w.dir / CONFIG).write_text(art.file(CONFIG).read_text())
        w.manifest.update(_record(art, cfg, scheme, calib, search, best, drift, _sizes(fp32, best["model"]), lint))
        w.manifest["calibration"].update(images=cfg.calibration.images_for(train_cfg.model.image_size),
                                         collection=collection)
        w.manifest["validation"] = {"inputs": {k: len(v) for k, v in held.groups.items()}, "note": held.note,
                                    "gate": "the larger of the ε errors on each kind of input"}
        w.manifest["precisions"] = precisions
        w.manifest["choice"] = choice
        w.manifest["timings_s"] = clock.laps  # wall time of each phase of this run, for scale studies
        w.manifest["cpu_timings_s"] = clock.cpu_laps  # CPU time (user + system, all threads) of each phase
    return w.artifact


def _lint(best: dict, cfg: QuantizeConfig) -> dict | None:
    """TensorRT's Q/DQ rules checked on the chosen model; a violation is a bug here, so it fails loudly."""
    if cfg.target != "tensorrt":
        return None

    report = assert_tensorrt_qdq(best["model"], float_nodes=set(best["float_nodes"]))
    return {k: report[k] for k in ("ok", "stats") if k in report}
