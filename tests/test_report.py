"""`report`: a real run (checkpoint → unroll → export → quantize, benched and evaluated) gathered into a report.

The numbers in report.csv / report.json are checked against the metrics and manifests they come
from; the drift the report measures is checked against what the stages promise; the HTML is
rendered in headless Chromium (Debian's `chromium`, installed by .ci/run) and the tables and the
embedded plot are looked for in the rendered page.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from cli_helpers import assert_one_line_error, cli_in_process, cli_subprocess, run

from cunet_edge.errors import ConfigError
from cunet_edge.report.render import json_safe

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

ODD = "x<b>&y"  # an artifact folder name that must come out escaped in the HTML
QUICK = dict(min_iters=3, min_seconds=0.05, rounds=1, image_reps=2, threads=1, sampler_steps=2)


def _copy_artifact(src, dst):
    """A copy of a finished artifact without its metrics (other tests measure the shared fixture)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("metrics.json"))
    return dst


@pytest.fixture(scope="module")
def run_dir(tiny_checkpoint, tmp_path_factory):
    """checkpoint → unrolled (another solver) → onnx → int8 (cpu), plus a pruned branch and an unmeasured copy."""
    from cunet_edge.benchmark import BenchConfig, bench, parse_target
    from cunet_edge.evaluation import evaluate_checkpoint
    from cunet_edge.export.onnx import OnnxExportConfig, export_onnx
    from cunet_edge.pruning import PruneConfig, prune
    from cunet_edge.quantize.calibration import CalibrationConfig
    from cunet_edge.quantize.int8 import QuantizeConfig, quantize_int8
    from cunet_edge.sampling import SampleConfig
    from cunet_edge.unrolling import UnrollConfig, unroll

    root = tmp_path_factory.mktemp("report") / "run"
    ckpt = _copy_artifact(tiny_checkpoint, root / "ckpt")
    _copy_artifact(tiny_checkpoint, root / ODD)  # same id as ckpt: lineage must still follow the recorded path
    unrolled = unroll(ckpt, UnrollConfig(method="midpoint", steps=1), root / "unrolled").path
    onnx = export_onnx(unrolled, OnnxExportConfig(), root / "onnx").path
    # compare_fp16 off: the report reads none of the side-by-side table, and it costs an fp16 export.
    qcfg = QuantizeConfig(target="cpu", calibration=CalibrationConfig(n_images=4, sampler_steps=16, method="minmax"),
                          tolerance=0.5, select="fewest-float", val_n=16, drift_samples=4, compare_fp16=False)
    int8 = quantize_int8(onnx, qcfg, root / "int8", progress=False).path
    # The real prune stage (seconds-fast settings for the tiny model): its records must reach the report.
    pytest.importorskip("torch_pruning")
    pcfg = PruneConfig(target_macs=0.6, finetune_steps=2, ratio_step=0.1, importance_batches=2, batch_size=8,
                       val_n=16, drift_samples=4, drift_sampler_steps=4)
    prune(unrolled, pcfg, root / "pruned", progress=False)
    targets = [parse_target(str(ckpt)), parse_target(str(unrolled)), parse_target(str(onnx)), parse_target(str(int8))]
    bench(targets, BenchConfig(**QUICK), progress=False)
    bench([parse_target(str(onnx))], BenchConfig(batch=4, **QUICK), progress=False)
    for art in (ckpt, onnx, int8):
        evaluate_checkpoint(art, SampleConfig(n=40, steps=2))
    return root


@pytest.fixture(scope="module")
def made(run_dir, tmp_path_factory):
    from cunet_edge.report.stage import ReportConfig, report

    out = tmp_path_factory.mktemp("out") / "report"
    result = report(run_dir, ReportConfig(devices=("rtx-4090", "jetson-nano"), samples=4), out, progress=False)
    return out, result


def _metrics(path):
    return json.loads((path / "metrics.json").read_text())


def _row(rows, artifact, runtime=None):
    found = [r for r in rows if r["artifact"] == artifact and (runtime is None or r["runtime"] == runtime)]
    assert len(found) == 1, [r["variant"] for r in rows]
    return found[0]


def test_report_files(made):
    out, result = made
    assert sorted(p.name for p in out.iterdir()) == ["pareto.png", "report.csv", "report.html", "report.json",
                                                     "report.md", "samples"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["variants"] == json_safe(result["variants"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_csv_and_json_carry_the_measured_numbers(made, run_dir):
    out, result = made
    with (out / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result["variants"]) == 6  # one variant each + the unmeasured copy
    for name in ("ckpt", "unrolled", "onnx", "int8"):
        b1 = _metrics(run_dir / name)["bench:" + ("torch" if name in ("ckpt", "unrolled") else "onnxruntime") +
                                      ":b1:ddim-2"]
        row = _row(rows, name)
        assert float(row["call_p50_ms"]) == b1["p50_ms"] and float(row["call_p90_ms"]) == b1["p90_ms"]
        assert float(row["image_p50_ms"]) == b1["image_latency_ms"] and float(row["image_p90_ms"]) == b1["image_p90_ms"]
        assert row["call_batch"] == "1" and row["sampler_steps"] == "2"
    for name in ("ckpt", "onnx", "int8"):
        ev = _metrics(run_dir / name)["evaluate"]
        row = _row(rows, name)
        assert float(row["fid"]) == ev["fid"] and float(row["kid"]) == ev["kid_mean"] and row["eval_n"] == "40"
    onnx = _row(rows, "onnx")
    b4 = _metrics(run_dir / "onnx")["bench:onnxruntime:b4:ddim-2"]
    best = max(b4["images_per_s"], _metrics(run_dir / "onnx")["bench:onnxruntime:b1:ddim-2"]["images_per_s"])
    assert float(onnx["throughput_img_s"]) == best
    manifest = json.loads((run_dir / "onnx" / "manifest.json").read_text())
    assert int(onnx["params"]) == manifest["model_cost"]["params"]
    assert int(onnx["macs_per_call"]) == manifest["model_cost"]["macs"]
    assert int(onnx["size_bytes"]) == (run_dir / "onnx" / "model.onnx").stat().st_size
    assert onnx["lineage"] == "ckpt → unrolled → onnx" and onnx["solver"] == "midpoint x1"
    assert _row(rows, "ckpt")["solver"] == "euler x1 · torchdiffeq"


def test_every_sampler_setting_is_a_variant_of_its_own(run_dir):
    """Two evaluations and two benches (sampler steps 2 and 3) of one artifact: two variants, each with its own
    FID and per-image latency; the legacy `evaluate` section (a copy of the latest) adds none, and a bench section
    without the sampler in its name (older runs) gives way to one with it."""
    from cunet_edge.artifact import Artifact
    from cunet_edge.report.gather import Node, variant_rows

    bench = {"runtime": "onnxruntime", "precision": "fp32", "p50_ms": 1.0, "p90_ms": 1.2, "images_per_s": 9.0}
    metrics = {"bench:onnxruntime:b1:ddim-2": {**bench, "sampler_steps": 2, "image_latency_ms": 2.5},
               "bench:onnxruntime:b1:ddim-3": {**bench, "sampler_steps": 3, "image_latency_ms": 3.5},
               "bench:onnxruntime:b1": {**bench, "sampler_steps": 3, "image_latency_ms": 9.9},  # older: loses
               "evaluate:ddim-2": {"sampler": "ddim", "sampler_steps": 2, "fid": 20.0, "n_samples": 40},
               "evaluate:ddim-3": {"sampler": "ddim", "sampler_steps": 3, "fid": 15.0, "n_samples": 40},
               "evaluate": {"sampler": "ddim", "sampler_steps": 3, "fid": 15.0, "n_samples": 40}}
    rows = variant_rows(Node(Artifact.load(run_dir / "onnx"), "onnx", metrics=metrics))
    assert [(r["sampler_steps"], r["fid"], r["image_p50_ms"]) for r in rows] == [(2, 20.0, 2.5), (3, 15.0, 3.5)]


def test_a_timestep_spacing_is_a_sampler_setting_of_its_own(tiny_checkpoint, tmp_path):
    """The real evaluate and bench stages at UniPC 3 uniform and UniPC 3 Karras: sections that do not overwrite each
    other, and two variants, each with its own FID; the Karras one carries the per-image latency benched with it."""
    from cunet_edge.artifact import Artifact
    from cunet_edge.benchmark import BenchConfig, bench, parse_target
    from cunet_edge.evaluation import evaluate_checkpoint
    from cunet_edge.report.gather import Node, variant_rows
    from cunet_edge.sampling import SampleConfig

    ckpt = _copy_artifact(tiny_checkpoint, tmp_path / "ckpt")
    for spacing in ("uniform", "karras"):
        evaluate_checkpoint(ckpt, SampleConfig(n=20, sampler="unipc", steps=3, spacing=spacing))
    bench([parse_target(str(ckpt))], BenchConfig(**{**QUICK, "sampler_steps": 3}, sampler="unipc", spacing="karras"),
          progress=False)
    metrics = _metrics(ckpt)
    assert {"evaluate:unipc-3", "evaluate:unipc-3-karras", "bench:torch:b1:unipc-3-karras"} <= set(metrics)
    assert metrics["evaluate:unipc-3"]["fid"] != metrics["evaluate:unipc-3-karras"]["fid"]
    rows = variant_rows(Node(Artifact.load(ckpt), "ckpt", metrics=metrics))
    got = {r["sampler"]: r for r in rows}
    assert set(got) == {"unipc", "unipc+karras"}
    assert got["unipc+karras"]["fid"] == metrics["evaluate:unipc-3-karras"]["fid"]
    assert got["unipc"]["fid"] == metrics["evaluate:unipc-3"]["fid"]
    assert got["unipc+karras"]["image_p50_ms"] > 0 and got["unipc"].get("image_p50_ms") is None


def test_unmeasured_artifact_still_has_a_row(made, run_dir):
    _, result = made
    row = _row(result["variants"], ODD)
    assert row["runtime"] is None and "fid" not in row and "call_p50_ms" not in row
    assert row["params"] == _row(result["variants"], "ckpt")["params"] > 0
    assert row["size_bytes"] == (run_dir / ODD / "model.safetensors").stat().st_size
    assert row["reference"] == ODD and row["samples"]  # its own lineage: it is sampled, not benched


def test_drift_per_stage(made, run_dir):
    _, result = made
    rows = {r["artifact"]: r for r in result["variants"]}
    ckpt, unrolled, onnx, int8 = rows["ckpt"], rows["unrolled"], rows["onnx"], rows["int8"]
    assert ckpt["eps_rel_err"] == 0 and ckpt["reference"] == "ckpt"
    # Another solver than the one it was trained with (euler → midpoint) changes ε; export must not.
    assert 1e-4 < unrolled["drift_unroll"] == unrolled["eps_rel_err"] < 1
    assert onnx["drift_export"] < 1e-4  # export fails above 1e-4 (fp32)
    assert onnx["drift_unroll"] == unrolled["drift_unroll"]
    assert 0 < int8["drift_quantize"] < 0.5  # the quantize tolerance of the fixture
    # Drift adds up along the lineage (triangle inequality, up to the ratio of ε norms).
    hops = int8["drift_unroll"] + int8["drift_export"] + int8["drift_quantize"]
    assert int8["eps_rel_err"] <= 1.1 * hops
    assert "quantize: measured" in int8["drift_sources"]
    recorded = json.loads((run_dir / "int8" / "manifest.json").read_text())["drift"]["eps_rel_err"]
    art = next(a for a in result["artifacts"] if a["artifact"] == "int8")
    assert art["recorded_drift"]["eps_rel_err"] == recorded
    # Samples from the same noise: the INT8 grid differs from the reference's, the unrolled one by the solver.
    assert math.isfinite(int8["sample_psnr_db"]) and int8["sample_psnr_db"] > 5


def test_real_prune_figures_reach_the_report(made, run_dir):
    """The prune stage's own manifest record (not a hand-made one) gives the report's prune columns."""
    out, result = made
    manifest = json.loads((run_dir / "pruned" / "manifest.json").read_text())
    record = manifest["pruning"]
    pruned = _row(result["variants"], "pruned")
    assert pruned["kind"] == "pruned" and pruned["prune_macs_ratio"] == record["macs_ratio"] <= 0.6
    assert pruned["lineage"] == "ckpt → unrolled → pruned"
    art = next(a for a in result["artifacts"] if a["artifact"] == "pruned")
    assert art["pruning"]["after"] == record["after"] and art["recorded_drift"]["eps_rel_err"] == \
        manifest["drift"]["eps_rel_err"]
    # Measured here on the lineage's inputs, not copied from the record.
    assert 0 < pruned["drift_prune"] and pruned["drift_prune"] != manifest["drift"]["eps_rel_err"]
    assert f"{record['macs_ratio']:.2f}" in (out / "report.md").read_text()
    assert "prune" in result["stages"] and result["stages"].index("prune") < result["stages"].index("export")


def test_one_artifact_follows_its_lineage_outside_the_run(made, run_dir, tmp_path):
    from cunet_edge.report.stage import ReportConfig, report

    _, full = made
    alone = report(run_dir / "int8", ReportConfig(samples=4), tmp_path / "r", progress=False)
    (row,) = alone["variants"]
    assert row["lineage"] == f"{run_dir / 'ckpt'} → {run_dir / 'unrolled'} → {run_dir / 'onnx'} → int8"
    assert row["reference"] == str(run_dir / "ckpt")
    # The same inputs and models as in the whole run's report: the same measured drift.
    want = _row(full["variants"], "int8")
    for key in ("eps_rel_err", "drift_unroll", "drift_export", "drift_quantize", "sample_psnr_db"):
        assert row[key] == pytest.approx(want[key], rel=1e-5), key


def test_a_moved_run_links_by_id(run_dir, tmp_path):
    from cunet_edge.report.stage import ReportConfig, report

    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)  # parent paths in the manifests still name the original folders
    result = report(moved, ReportConfig(measure=False), tmp_path / "r", progress=False)
    assert _row(result["variants"], "int8")["lineage"] == "ckpt → unrolled → onnx → int8"
    assert _row(result["variants"], "pruned")["lineage"] == "ckpt → unrolled → pruned"
    assert all(a["in_run"] for a in result["artifacts"])


def test_pareto_front_is_the_non_dominated_set(made):
    _, result = made
    p = result["pareto"]
    assert (p["quality"], p["latency"]) == ("fid", "image_p50_ms")
    rows = {r["variant"]: r for r in result["variants"]}
    for g in p["groups"]:
        pts = [rows[v] for v in g["points"]]
        assert len(pts) == 3  # ckpt, onnx, int8: benched and evaluated at the same sampler steps
        for r in pts:
            dominated = any(o[p["latency"]] <= r[p["latency"]] and o["fid"] <= r["fid"]
                            and (o[p["latency"]], o["fid"]) != (r[p["latency"]], r["fid"]) for o in pts)
            assert (r["variant"] in g["frontier"]) == (not dominated) == r["pareto"]
    plotted = {v for g in p["groups"] for v in g["points"]}
    assert all(r["pareto"] is None for r in result["variants"] if r["variant"] not in plotted)


def test_device_estimates(made):
    from cunet_edge.devices.estimate import EstimateConfig, estimate

    _, result = made
    onnx = _row(result["variants"], "onnx")
    want = estimate(_art_path(result, "onnx"), "rtx-4090", EstimateConfig(batch=1, sampler_steps=2))
    assert onnx["est_rtx-4090_call_ms"] == pytest.approx(want["per_call_ms"])
    assert onnx["est_rtx-4090_image_ms"] == pytest.approx(want["per_image_ms"])
    int8 = next(a for a in result["artifacts"] if a["artifact"] == "int8")
    assert "INT8 is not supported" in int8["estimates"]["jetson-nano"]  # Jetson Nano has no INT8
    assert "est_jetson-nano_call_ms" not in _row(result["variants"], "int8")


def _art_path(result, name):
    return next(a["path"] for a in result["artifacts"] if a["artifact"] == name)


class _Dom(HTMLParser):
    """Tables (id → body rows), images (id/class, src, data-decoded) and all text of a page."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.text, self._table, self._in_body = {}, [], [], None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = 0
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table] += 1
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_and_escaped(made):
    out, result = made
    page = (out / "report.html").read_text()
    assert not re.search(r"(?:src|href)=\"(?!data:)", page) and "http://" not in page and "https://" not in page
    dom = _Dom()
    dom.feed(page)
    assert dom.tables["variants"] == dom.tables["quality"] == len(result["variants"])
    assert dom.tables["devices"] == 2  # the ONNX artifacts
    for img in dom.images:
        assert base64.b64decode(img["src"].split(",", 1)[1])[:4] == b"\x89PNG"
    assert sum(i.get("class") == "grid" for i in dom.images) == len(result["variants"])
    assert "x&lt;b&gt;&amp;y" in page and "<b>&y" not in page
    assert ODD in "".join(dom.text)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chromium_renders_the_tables_and_the_plot(made, tmp_path):
    out, result = made
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                           "--virtual-time-budget=5000", "--dump-dom", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    assert dom.tables["variants"] == dom.tables["quality"] == len(result["variants"])
    plot = next(i for i in dom.images if i.get("id") == "pareto-plot")
    width, height = map(int, plot["data-decoded"].split("x"))  # set by the page once the browser decoded it
    assert width > 300 and height > 200
    assert all(i.get("data-decoded", "no") != "no" for i in dom.images)
    assert "Pareto front over FID" in "".join(dom.text)


def test_cli_report(run_dir, tmp_path):
    res = run("report", run_dir, "--out", tmp_path / "r", "--no-measure", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output and "6 variants of 6 artifacts" in res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert not (tmp_path / "r" / "samples").exists() and "eps_rel_err" not in _row(data["variants"], "int8")
    # Nothing ran: drift per stage is what each stage recorded (export: its verification against PyTorch).
    int8 = _row(data["variants"], "int8")
    manifest = json.loads((run_dir / "int8" / "manifest.json").read_text())
    exported = json.loads((run_dir / "onnx" / "manifest.json").read_text())
    assert int8["drift_quantize"] == manifest["drift"]["eps_rel_err"]
    assert int8["drift_export"] == exported["verification"]["rel_err"]
    assert "unroll: unknown" in int8["drift_sources"] and "drift_unroll" not in int8
    again = run("report", run_dir, "--out", tmp_path / "r", "--no-measure", "--replace")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "r.json"]


def test_report_bad_input(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "exists").mkdir()
    cases = [
        ((tmp_path / "empty", "--out", tmp_path / "o"), "no artifacts under"),
        ((tmp_path / "missing", "--out", tmp_path / "o"), "does not exist"),
        ((run_dir, "--out", tmp_path / "afile" / "o"), "not a writable directory"),
        ((run_dir, "--out", tmp_path / "exists"), "already exists"),
        ((run_dir, "--out", run_dir / "onnx" / "o"), "inside artifact"),
        ((run_dir, "--out", tmp_path / "o", "--device", "jetson-nanoo"), "device 'jetson-nanoo' is not one of"),
        ((run_dir, "--out", tmp_path / "o", "--samples", 0), "samples must be"),
    ]
    for i, (args, match) in enumerate(cases):  # the first through the real entry point, the rest in process
        assert_one_line_error((cli_subprocess if i == 0 else cli_in_process)("report", *args), match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "exists"]
    assert not (run_dir / "onnx" / "o").exists() and not list((tmp_path / "exists").iterdir())
    with pytest.raises(ConfigError, match="threads"):
        from cunet_edge.report.stage import ReportConfig

        ReportConfig(threads=0)


def test_without_matplotlib_one_line_error_and_nothing_written(run_dir, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\nfrom cunet_edge.cli import main\n"
            f"main(['report', {str(run_dir)!r}, '--out', {str(tmp_path / 'o')!r}, '--no-measure'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_one_line_error(proc, "cunet-edge[report]")
    assert not list(tmp_path.iterdir())


def test_a_failure_while_writing_leaves_nothing(tmp_path):
    from cunet_edge.report.stage import _staging

    with pytest.raises(RuntimeError), _staging(tmp_path / "r", replace=False) as tmp:
        (tmp / "report.md").write_text("half")
        raise RuntimeError("disk full")
    assert not list(tmp_path.iterdir())
