"""Writing a gathered report: report.json, report.csv, report.md, a self-contained report.html, pareto.png.

The three tables (cost and speed, quality and where it went, device estimates) are one column
spec each, rendered to Markdown and to HTML from the same cells. The HTML embeds every image as a
base64 PNG and its CSS inline, fetches nothing, and escapes all text. matplotlib (the `report`
extra) draws the plot with its Agg canvas, imported only here.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Callable
from pathlib import Path

from ..artifact import json_text
from ..kinds import ONNX_KINDS
from ..records import kid_text
from .plot import check_plotting, plot_pareto

__all__ = ["check_plotting", "write_all", "tables", "summary_lines", "PLOT", "FILES"]

PLOT = "pareto.png"
FILES = {"markdown": "report.md", "html": "report.html", "csv": "report.csv", "json": "report.json", "plot": PLOT}
_DASH = "–"


# --- cell formats -----------------------------------------------------------------------------------------


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ms(v) -> str:
    if not _num(v):
        return _DASH
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _err(v) -> str:
    """A relative error: in percent from 0.1%, else in scientific notation (export's ~1e-7)."""
    if not _num(v):
        return _DASH
    if v == 0:
        return "0"
    return f"{100 * v:.2f}%" if v >= 1e-3 else f"{v:.1e}"


def _db(v) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "identical"
    return f"{v:.1f} dB" if _num(v) else _DASH


def _size(v) -> str:
    if not _num(v):
        return _DASH
    return f"{v / 1e6:.2f} MB" if v >= 1e6 else f"{v / 1e3:.0f} kB"


def _pair(a: str, b: str) -> str:
    return _DASH if a == b == _DASH else f"{a} / {b}"


def _solver(r) -> str:
    if not r.get("solver"):
        return _DASH
    return f"{r['solver']} ({r['nfe_per_call']} NFE)" if r.get("nfe_per_call") else r["solver"]


def _sampler(r) -> str:
    return f"{r['sampler']} {r['sampler_steps']}" if r.get("sampler") else _DASH


def _runtime(r) -> str:
    if not r.get("runtime"):
        return _DASH
    return f"{r['runtime']} ({r['hw']})" if r.get("hw") else r["runtime"]


def _drift_cell(stage: str) -> Callable[[dict], str]:
    def cell(r: dict) -> str:
        v = r.get(f"drift_{stage}")
        recorded = f"{stage}: recorded" in (r.get("drift_sources") or "")
        return _err(v) + (" (rec.)" if recorded and _num(v) else "")

    return cell


def _estimate_cell(device: str) -> Callable[[dict], str]:
    def cell(r: dict) -> str:
        if not _num(r.get(f"est_{device}_call_ms")):
            return "n/a (see notes)"
        return _pair(_ms(r.get(f"est_{device}_call_ms")), _ms(r.get(f"est_{device}_image_ms")))

    return cell


def _vs_reference(key: str, fmt: Callable) -> Callable[[dict], str]:
    """The reference's own row says so, rather than a trivial 0 error / identical samples."""
    return lambda r: "reference" if r.get("reference") == r["artifact"] and key in r else fmt(r.get(key))


def _kid(r) -> str:
    """KID ± its spread over subsets, and the real-vs-real KID; records from before scaled KID say so."""
    if not _num(r.get("kid")):
        return _DASH
    text = kid_text(r["kid"], r["kid_std"] if _num(r.get("kid_std")) else None)
    if _num(r.get("kid_real_reference")):
        text += f" (real {r['kid_real_reference']:.2g})"
    return text if r.get("kid_subset_size") else text + " unscaled"


def _star(r) -> str:
    return "★" if r.get("pareto") else ""


def _engine_layers(a: dict) -> str:
    s = a.get("engine_layers")
    if not s:
        return _DASH
    return ", ".join(f"{k} {v}" for k, v in sorted(s["by_precision"].items(), key=lambda kv: -kv[1]))


def _engine_int8(a: dict) -> str:
    s = a.get("engine_layers") or {}
    if "compute_int8" not in s:
        return _DASH
    fell = s.get("fell_back") or []
    return f"{s['compute_int8']} of {s['compute_layers']}" + (
        "; fell back: " + ", ".join(f"{r['name']} ({r.get('precision')})" for r in fell[:5])
        + (f" +{len(fell) - 5}" if len(fell) > 5 else "") if fell else "")


def _engine_check(a: dict) -> str:
    c = a.get("engine_check")
    if not c:
        return _DASH
    worst = max((r["max_rel_err"] for r in c.get("per_timestep", []) if _num(r.get("max_rel_err"))), default=None)
    text = ("passed" if c.get("ok") else "FAILED") + (f", max rel {_err(worst)}" if worst is not None else "")
    div = c.get("first_divergence")
    if div and div.get("tensor"):
        text += f"; first diverging: {div.get('op_type')} {div.get('node')}"
    return text


def tables(result: dict) -> list[tuple[str, str, str, list[tuple[str, Callable[[dict], str]]], list[dict]]]:
    """(id, title, explanation, [(header, cell(row))], rows) for each table of the report."""
    cost = [
        ("★", _star), ("artifact", lambda r: r["artifact"]), ("kind", lambda r: r["kind"]), ("solver", _solver),
        ("prune (MACs kept)", lambda r: f"{r['prune_macs_ratio']:.2f}" if _num(r.get("prune_macs_ratio")) else _DASH),
        ("precision", lambda r: r["precision"] or _DASH), ("runtime", _runtime), ("sampler", _sampler),
        ("params", lambda r: f"{r['params']:,}" if _num(r.get("params")) else _DASH),
        ("MMACs/call", lambda r: f"{r['macs_per_call'] / 1e6:.1f}" if _num(r.get("macs_per_call")) else _DASH),
        ("size", lambda r: _size(r.get("size_bytes"))),
        ("ms/call p50 / p90", lambda r: _pair(_ms(r.get("call_p50_ms")), _ms(r.get("call_p90_ms")))
         + (f" (b{r['call_batch']})" if r.get("call_batch") else "")),
        ("ms/image p50 / p90", lambda r: _pair(_ms(r.get("image_p50_ms")), _ms(r.get("image_p90_ms")))),
        ("img/s (batch)", lambda r: f"{r['throughput_img_s']:,.0f} (b{r['throughput_batch']})"
         if _num(r.get("throughput_img_s")) else _DASH),
    ]
    quality = [
        ("★", _star), ("artifact", lambda r: r["artifact"]), ("precision", lambda r: r["precision"] or _DASH),
        ("runtime", _runtime), ("sampler", _sampler),
        ("features", lambda r: r.get("features") or _DASH),
        ("FID (n)", lambda r: f"{r['fid']:.2f} ({r['eval_n']})" if _num(r.get("fid")) else _DASH),
        ("KID ± std (real-vs-real)", _kid),
        ("ε rel. err vs FP32 ref", _vs_reference("eps_rel_err", _err)),
        ("sample PSNR vs ref", _vs_reference("sample_psnr_db", _db)),
    ] + [(f"drift: {s}", _drift_cell(s)) for s in result["stages"]]
    rows = result["variants"]
    devices = [("artifact", lambda r: r["artifact"]), ("precision", lambda r: r["precision"] or _DASH),
               ("sampler", _sampler)] + [(f"{d}: ms/call / ms/image", _estimate_cell(d)) for d in result["devices"]]
    out = [
        ("variants", "Cost and speed",
         "One row per variant: artifact × runtime × precision × sampler steps found in its metrics.json. "
         "Latency per network call at the smallest batch benched; per image = one sampler run at batch 1; "
         "throughput at the best batch benched. ★ = on the Pareto front.", cost, rows),
        ("quality", "Quality, and where it went",
         "FID/KID from `evaluate` (n samples), in the feature space named (the dataset's classifier, or "
         "Inception-v3); compare figures only within one. KID: mean ± std over random subsets of half the samples, "
         "beside the real test split's KID; '≈ 0' when within twice its spread of 0. In classifier features it is "
         "measured on features centred and scaled by the real set (a KID marked 'unscaled' predates that and is "
         "mostly noise). ε relative error and sample PSNR are measured by this report "
         "against the lineage's FP32 reference on common inputs; drift per stage is each stage's ε against its "
         "parent, measured here unless marked (rec.) = as the stage recorded it.", quality, rows),
    ]
    if result.get("not_measured"):
        out.append(("not-measured", "Stages not measured here",
                    "Stages of the run this machine could not run (a TensorRT engine needs TensorRT and a CUDA GPU); "
                    "run the recipe again where they are, and these rows fill in.",
                    [("artifact", lambda r: r["artifact"]), ("stage", lambda r: r["stage"]),
                     ("from", lambda r: ", ".join(r["inputs"]) or _DASH),
                     ("result", lambda r: f"not measured here: {r['not_measured']}")], result["not_measured"]))
    engines = [a for a in result.get("artifacts", []) if a.get("engine_layers") or a.get("engine_check")]
    if engines:
        out.append(("engines", "TensorRT engines: what runs, and against ONNX Runtime",
                    "Layers per precision as each engine's IEngineInspector reports them (export saved them in "
                    "layers.json); for an INT8 engine, how many convolution/matmul layers run INT8 and which fell "
                    "back; the engine against ONNX Runtime on seeded inputs across the schedule at export, with the "
                    "first diverging ONNX node when it failed.",
                    [("artifact", lambda a: a["artifact"]), ("layers per precision", _engine_layers),
                     ("conv/matmul INT8", _engine_int8), ("check vs ONNX Runtime", _engine_check)], engines))
    if result["devices"]:
        out.append(("devices", "Estimated latency on device profiles",
                    "Roofline estimates at batch 1 from the ONNX graph (a lower bound; see devices/README.md); "
                    "per image = per call × sampler steps. Only ONNX artifacts can be estimated; why a cell is n/a is "
                    "in the notes.", devices, [r for r in rows if r["kind"] in ONNX_KINDS]))
    return out


# --- summary ----------------------------------------------------------------------------------------------


def summary_lines(result: dict) -> list[str]:
    """Findings in plain text: what was gathered, the front, and what each front point cost against its reference.

    Lines starting with two spaces belong under the line before them.
    """
    rows, p = result["variants"], result["pareto"]
    refs = sorted({r["reference"] for r in rows if r.get("reference")})
    shown = ", ".join(refs[:6]) + (f", … and {len(refs) - 6} more" if len(refs) > 6 else "")
    lines = [f"{len(rows)} variants of {len({r['artifact'] for r in rows})} artifacts; "
             f"FP32 references (lineage roots measured here): {shown or 'none'}."]
    if not p["groups"]:
        return lines + ["No variant has both a quality figure and a latency, so there is no Pareto front: "
                        "run `cunet-edge bench` and `cunet-edge evaluate` on the artifacts."]
    lines.append(f"Pareto front over {p['quality_label']} and {p['latency_label']}, per dataset and measuring device"
                 + (" and feature space:" if p["quality"] == "fid" else ":"))
    by_label = {r["variant"]: r for r in rows}
    for g in p["groups"]:
        space = f", FID in {g['features']} features" if g.get("features") else ""
        lines.append(f"{g['dataset']}, measured on {g['hw']}{space}: {len(g['frontier'])} of {len(g['points'])} "
                     f"plotted variants on the front.")
        vs = {c["variant"]: c for c in g["vs_reference"]}
        for v in g["frontier"]:
            r, c = by_label[v], vs.get(v)
            text = f"  ★ {v}: {_q(r[p['quality']], p['quality'])}, {_ms(r[p['latency']])} ms"
            if c and c["reference"] != v:
                text += (f"; {c['speedup']:.1f}x faster than {c['reference']} "
                         f"({_q(c['reference_quality'], p['quality'])}, {_ms(by_label[c['reference']][p['latency']])} ms)")
            lines.append(text)
    return lines


def _q(v, axis: str) -> str:
    return f"ε error {_err(v)}" if axis == "eps_rel_err" else f"FID {v:.2f}"


def _grouped(pairs: list[tuple[str, str]]) -> list[str]:
    """(subject, reason) pairs as one line per reason: 'a, b, c: reason'."""
    by_reason: dict[str, list[str]] = {}
    for subject, reason in pairs:
        by_reason.setdefault(reason, []).append(subject)
    return [f"{', '.join(subjects)}: {reason}" for reason, subjects in by_reason.items()]


def _notes(result: dict) -> list[str]:
    e = result["eps_inputs"]
    out = [f"ε inputs: the (x_t, t) the reference sees in {e['runs']} DDIM runs of {e['ddim_steps']} steps from "
           f"seed {e['seed']} ({e['n']} inputs over the whole schedule); every artifact of a lineage gets the same "
           "ones. Sample grids: the same seeded noise for every artifact; PSNR against the reference's grid."
           if result["config"]["measure"] else "Drift and sample grids were not measured (--no-measure)."]
    out += [f"skipped {s['path']}: {s['reason']}" for s in result["skipped"]]
    pairs = []
    for a in result["artifacts"]:
        pairs += [(a["artifact"], n) for n in a["notes"] + ([a["parent_note"]] if a["parent_note"] else [])]
        if a["in_run"]:
            pairs += [(f"{a['artifact']} on {d}", f"no estimate: {e}") for d, e in a["estimates"].items()
                      if isinstance(e, str)]
    return out + _grouped(pairs)


# --- files ------------------------------------------------------------------------------------------------


def _csv_columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _write_csv(rows: list[dict], path: Path) -> None:
    cols = _csv_columns(rows)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(result: dict) -> str:
    lines = [f"# cunet-edge report: {result['run_dir']}", "", f"Made {result['created']}.", ""]
    lines += [f"  - {s.strip()}" if s.startswith("  ") else f"- {s}" for s in summary_lines(result)]
    lines += ["", f"![Pareto plot]({PLOT})", ""]
    for _, title, why, cols, rows in tables(result):
        lines += [f"## {title}", "", why, "", "| " + " | ".join(_md_cell(h) for h, _ in cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_md_cell(f(r)) for _, f in cols) + " |" for r in rows]
        lines.append("")
    grids = [(r["variant"], r["samples"]) for r in result["variants"] if r.get("samples")]
    if grids:
        lines += ["## Samples (same seeded noise for every variant)", ""]
        lines += [f"**{_md_cell(v)}**  \n![{_md_cell(v)}]({p})\n" for v, p in grids]
    lines += ["## Notes", ""] + [f"- {_md_cell(n)}" for n in _notes(result)]
    return "\n".join(lines) + "\n"


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1b1b}h1{font-size:20px}h2{font-size:17px;
margin-top:28px}table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}th,td{border:1px solid
#ccc;padding:3px 7px;white-space:nowrap}th{background:#f1f1f1;text-align:left}tr.front td{background:#fff6d8}
p.why{color:#555;max-width:1100px}.grids{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0}figcaption{font-size:12px;
max-width:260px}img.grid{image-rendering:pixelated;width:256px}.wrap{overflow-x:auto}ul.summary li{margin:2px 0}"""
# Marks each image with its decoded size once the page has loaded (lets a headless browser check them).
_SCRIPT = ("window.addEventListener('load',()=>document.querySelectorAll('img').forEach(i=>"
           "i.dataset.decoded=i.naturalWidth>0?i.naturalWidth+'x'+i.naturalHeight:'no'));")


def _img(path: Path, alt: str, cls: str, ident: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    ident = f' id="{ident}"' if ident else ""
    return f'<img{ident} class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html_table(ident: str, cols, rows) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h, _ in cols)
    body = "".join(f'<tr{" class=front" if r.get("pareto") else ""}>' + "".join(f"<td>{e(f(r))}</td>" for _, f in cols)
                   + "</tr>" for r in rows)
    return f'<div class="wrap"><table id="{ident}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_summary(lines: list[str]) -> str:
    """Lines as a list; indented lines as a nested list under the line before them."""
    out, nested = ['<ul class="summary">'], False
    for s in lines:
        sub = s.startswith("  ")
        if sub and not nested:
            out.append("<ul>")
        elif not sub and nested:
            out.append("</ul>")
        nested = sub
        out.append(f"<li>{html.escape(s.strip())}</li>")
    return "".join(out + (["</ul>"] if nested else []) + ["</ul>"])


def _html(result: dict, folder: Path) -> str:
    e = html.escape
    parts = [f"<h1>cunet-edge report: {e(result['run_dir'])}</h1><p>Made {e(result['created'])}.</p>",
             _html_summary(summary_lines(result)),
             _img(folder / PLOT, "Pareto plot: quality against latency, front marked", "plot", "pareto-plot")]
    for ident, title, why, cols, rows in tables(result):
        parts += [f"<h2>{e(title)}</h2>", f'<p class="why">{e(why)}</p>', _html_table(ident, cols, rows)]
    grids = [(r["variant"], r["samples"]) for r in result["variants"] if r.get("samples")]
    if grids:
        parts.append("<h2>Samples (same seeded noise for every variant)</h2><div class=\"grids\">" + "".join(
            f"<figure>{_img(folder / p, v, 'grid')}<figcaption>{e(v)}</figcaption></figure>" for v, p in grids)
            + "</div>")
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in _notes(result)) + "</ul>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>cunet-edge report</title>'
            f"<style>{_CSS}</style></head><body>{''.join(parts)}<script>{_SCRIPT}</script></body></html>\n")


def write_all(result: dict, folder: Path) -> None:
    """Every report file into `folder` (the stage's temporary directory; it renames the folder when done)."""
    plot_pareto(result, folder / PLOT)
    _write_csv(result["variants"], folder / FILES["csv"])
    (folder / FILES["json"]).write_text(json_text(result))
    (folder / FILES["markdown"]).write_text(_markdown(result))
    (folder / FILES["html"]).write_text(_html(result, folder))
