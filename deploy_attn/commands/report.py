"""Command: export folders -> ``report.md`` and a self-contained ``report.html``.

Per model and precision: parity figures, FP32-kept nodes, the TensorRT operator check,
artifact sizes and latency per backend (from ``bench.json``, written by ``bench(save=True)``);
plots of latency by backend and of parity error by module; the environment. The report
is built once as a list of blocks and rendered twice (Markdown, HTML), so the two never
disagree. Plots are PNGs: embedded as base64 in the HTML, written beside the Markdown.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checks.drift import worst
from ..core.files import atomic_path
from ..engine.sidecar import tensorrt_series
from ..exportdir.layout import MAPS_DIR
from ..precision.saturation import kernel_name
from ..runtime.backends import environment
from ..targets.cpu import forms_note
from .document import Block, Heading, Para, Plot, Table, render_html, render_markdown
from .figures import latency_plot, parity_plot, png_bytes
from .latency import latency_table, settings_line
from .records import ModelRecord, load_records, precision_entries, worst_result

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def trt_summary(check: dict | None) -> str:
    if not check:
        return "not checked"
    if check.get("ok"):
        return f"ok: all {check.get('nodes', '?')} nodes supported"
    issues = [f"{i.get('op_type', '')} '{i.get('node', '')}' ({i.get('reason', '')})"
              if i.get("node") else i.get("reason", "") for i in check.get("issues", [])]
    more = f" +{len(issues) - 2} more" if len(issues) > 2 else ""
    return (f"{check.get('rejected', '?')} of {check.get('nodes', '?')} nodes rejected: "
            f"{'; '.join(issues[:2])}{more}")


def _size(path: Path) -> str:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _fmt(value, spec: str = ".2e") -> str:
    return "-" if value is None else format(value, spec)


def _kept_nodes(entry: dict) -> str:
    kept = entry.get("fp32_kept_nodes")
    if kept is None:
        if "quantized_nodes" not in entry:
            return "-"
        excluded = entry.get("excluded_nodes") or []
        names = (f": {', '.join(excluded[:3])}{' ...' if len(excluded) > 3 else ''}"
                 if excluded else "")
        return f"{entry['quantized_nodes']} quantized, {len(excluded)} left FP32{names}"
    if not kept:
        return "none"
    names = ", ".join(f"{k['op_type']} {k['name']}" for k in kept[:3])
    return f"{len(kept)}: {names}{' ...' if len(kept) > 3 else ''}"


def _threshold(tol: dict) -> str:
    return (f"cos >= {tol['min_cosine']}" if tol.get("min_cosine") is not None
            else f"atol {tol.get('atol')} / rtol {tol.get('rtol')}")


def precision_rows(rec: ModelRecord) -> list[list[str]]:
    rows = []
    files = rec.report.get("files", {})
    checks = rec.report.get("trt_check", {})
    for precision, entry in precision_entries(rec.report).items():
        w = worst_result(entry.get("results", []))
        need = _threshold(entry.get("tolerance", {}))
        file = files.get(precision) or entry.get("file")
        rows.append([precision, "pass" if entry.get("ok") else "FAIL", need,
                     _fmt(w.get("max_abs")), _fmt(w.get("cosine"), ".6f"),
                     _fmt(w.get("top1_agreement"), ".3f"), _kept_nodes(entry),
                     trt_summary(checks.get(precision)),
                     f"{file}: {_size(rec.directory / file)}" if precision in files
                     else "not written"])
    for fmt, forms in rec.report.get("targets", {}).items():
        for precision, t in forms.items():
            w = worst_result(t.get("results", []))
            rows.append([f"{precision} {fmt}", "pass" if t.get("ok") else "FAIL",
                         _threshold(t.get("tolerance", {})),
                         _fmt(w.get("max_abs")), _fmt(w.get("cosine"), ".6f"),
                         _fmt(w.get("top1_agreement"), ".3f"), "-", t.get("runtime", "")
                         + "; " + forms_note(t.get("forms")),
                         ", ".join(f"{f}: {_size(rec.directory / f)}" for f in t["files"])
                         or "not written"])
    for precision, eng in rec.report.get("engines", {}).items():
        p = eng.get("parity", {})
        env = eng.get("environment", {})
        rows.append([f"{precision} engine", "pass" if p.get("ok") else "FAIL", "",
                     _fmt(p.get("max_abs")), _fmt(p.get("cosine"), ".6f"),
                     _fmt(p.get("top1_agreement"), ".3f"), "-",
                     f"TensorRT {env.get('tensorrt', '?')} ({_series(env)} series) on "
                     f"{env.get('gpu', '?')}",
                     f"{eng.get('file')}: {_size(rec.directory / eng.get('file', ''))}"])
    return rows


def source_line(report: dict) -> str:
    """Where the model came from: the source, its weights and the layout they mapped from."""
    model = report.get("model", {})
    source = model.get("source", {})
    what = (f"registry model {source.get('name')}" if source.get("kind") == "registry" else
            f"{source.get('kind', '?')} source {source.get('target') or source.get('class')}")
    if report.get("paper"):
        what += f" ({report['paper']})"
    weights = model.get("weights")
    if weights:
        layout = f", layout {weights['layout']}" if weights.get("layout") else ""
        return f"{what}, weights {weights['path']}{layout}"
    generated = "the caller's module" if source.get("kind") == "object" else \
        f"generated weights (seed {source.get('seed', 0)})"
    return f"{what}, {generated}"


def _series(env: dict) -> str:
    series = env.get("tensorrt_series") or tensorrt_series(env.get("tensorrt"))
    return f"{series}.x" if series else "unknown"


PRECISION_HEADER = ["precision", "parity", "threshold", "max abs", "cosine", "top-1",
                    "FP32-kept nodes", "TensorRT operator check", "artifact"]


def accuracy_blocks(rec: ModelRecord) -> list[Block]:
    """The accuracy section of one model: its table and a plot of the metric per form
    with the 95 % interval of its drop against PyTorch."""
    from matplotlib.figure import Figure

    acc = rec.accuracy
    data = acc["dataset"]
    metric = "top1" if data["kind"] == "classification" else "miou"
    label = "top-1 accuracy %" if metric == "top1" else "mIoU %"
    rows, names, values, errs = [], [], [], []
    for f in acc["forms"]:
        if f["status"] != "ok":
            rows.append([f["form"], "skipped", "", "", "", f.get("reason", "")])
            continue
        value = f["metrics"][metric]
        names.append(f["form"])
        values.append(value)
        if f["form"] == "pytorch":
            rows.append([f["form"], f"{value:.2f}", "-", "-", "-", "reference"])
            errs.append((0.0, 0.0))
            continue
        lo, hi = f["drop_ci95"]
        errs.append((max(0.0, f["drop"] - lo), max(0.0, hi - f["drop"])))
        worst = ", ".join(f"{w['class']} (-{w['drop']:.1f})" for w in f["worst_classes"]) or "-"
        rows.append([f["form"], f"{value:.2f}", f"{f['agreement']:.2f}",
                     f"{f['drop']:+.2f} [{lo:+.2f}, {hi:+.2f}]",
                     "pass" if f["ok"] else "FAIL", worst])
    fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.5))
    ax = fig.subplots()
    ax.bar(range(len(names)), values, yerr=np.array(errs).T if errs else None, capsize=4,
           color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    ax.set_xticks(range(len(names)), names)
    low = min(values) if values else 0
    ax.set_ylim(max(0.0, low - 5), min(100.0, max(values or [100]) + 2))
    ax.set_ylabel(label)
    ax.set_title(f"{rec.name}: {label} on {data['images']} images (whiskers: 95% CI of the "
                 "drop)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return [Heading("Accuracy", 3),
            Para(f"{data['kind']} on {data['path']} ({data['layout']}, {data['images']} "
                 f"images, {data['classes']} classes); drop in points against PyTorch with a "
                 "paired bootstrap 95 % interval."),
            Table(["form", label, "agrees with PyTorch %", "drop [95% CI]", "check",
                   "losses by class"], rows),
            Plot(f"accuracy-{rec.name}.png", f"Accuracy of {rec.name}", png_bytes(fig))]


def maps_blocks(rec: ModelRecord) -> list[Block]:
    """The attention-maps section of one model: every site's correlation with PyTorch's
    map per artifact (worst first) and the figures of the worst sites."""
    maps = rec.maps
    sites = sorted(maps["sites"], key=worst, reverse=True)
    rows = []
    for s in sites:
        cells = []
        for p in maps["precisions"]:
            r = s["results"]["onnxruntime"].get(p, {})
            cells.append("-" if r.get("correlation") is None else
                         f"{r['correlation']:.4f}" + ("" if r["ok"] else " DRIFT"))
        rows.append([s["site"], s["class"], s["map"], *cells])
    figures, blocks = [], []
    for s in sites:
        if s.get("figure") and s["figure"] not in figures and len(figures) < WORST_FIGURES:
            figures.append(s["figure"])
    for i, fig in enumerate(figures, 1):
        path = rec.directory / fig
        if path.is_file():
            blocks.append(Plot(f"maps-{rec.name}-{i:02d}.png", f"Attention maps of {rec.name}: "
                               f"{Path(fig).stem}", path.read_bytes()))
    drift = ", ".join(f"{p}: {d}" for p, d in maps["first_drift"].items() if d) or "none"
    return [Heading("Attention maps", 3),
            Para(f"Each attention site's map in every artifact against PyTorch's (hooks), on "
                 f"{maps['input']['source']}: Pearson correlation on ONNX Runtime, worst "
                 f"first; first map beyond its tolerance: {drift}. Figures of the "
                 f"{len(blocks)} worst sites (all are under {MAPS_DIR}/)."
                 + (f" Note: {maps['diagnostic']}." if maps.get("diagnostic") else "")),
            Table(["site", "class", "map", *maps["precisions"]], rows), *blocks]


# --- the report --------------------------------------------------------------------------
SATURATION_HEADER = ["artifact", "for", "kernels emulated", "layers", "saturating",
                     "max pair sums saturated", "worst layer", "its output error (RMS)"]


def saturation_blocks(rec: ModelRecord) -> list[Block]:
    """What a CPU without VNNI does with each INT8 artifact (saturation.py): one row per
    file, then the saturating layers of each."""
    rows, layers = [], []
    entries = [(e["file"], "TensorRT / any runtime", e) for p, e in
               rec.report.get("precisions", {}).items() if "saturation" in e]
    entries += [(e["files"][0] if e["files"] else f"{fmt} {p} (not written)",
                 f"{e.get('cpu', '?')} CPUs", e)
                for fmt, forms in rec.report.get("targets", {}).items()
                for p, e in forms.items() if "saturation" in e]
    for name, for_, e in entries:
        sat = e["saturation"]
        worst = sat.get("worst") or {}
        rows.append([name, for_, kernel_name(sat), str(len(sat["layers"])),
                     str(sat["saturating_layers"]),
                     f"{100 * sat['max_saturated_fraction']:.3g}%", worst.get("node", "-"),
                     f"{100 * worst.get('output_rel_rms_error', 0):.3g}%"])
        layers += [[name, r["node"], r["op"], f"{100 * r['saturated_fraction']:.3g}%",
                    f"{100 * r['output_rel_rms_error']:.3g}%", str(r["images"])]
                   for r in sat["layers"] if r["saturated"]][:12]
    if not rows:
        return []
    cpu = rec.report.get("cpu", {})
    blocks = [Heading("INT8 on CPUs without VNNI (predicted)", 3),
              Para("Each u8 x s8 pair sum emulated in int16 on the calibration activations, as "
                   "an x86 CPU without VNNI (AVX2, AVX-512 without VNNI) computes it; a VNNI, "
                   "AMX or ARM CPU and TensorRT compute exactly. Exported on "
                   f"{cpu.get('model', '?')} ({' '.join(cpu.get('isa', [])) or '?'}; 8-bit dot "
                   f"products {cpu.get('int8_dot', '?')})."),
              Table(SATURATION_HEADER, rows)]
    if layers:
        blocks.append(Table(["artifact", "layer", "op", "pair sums saturated",
                             "output error (RMS)", "images"], layers))
    return blocks


def build_blocks(records: list[ModelRecord]) -> list[Block]:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [Heading("deploy-attn deployment report", 1),
                           Para(f"{len(records)} model(s), written {now}.")]
    overview = []
    for r in records:
        entries = precision_entries(r.report)
        cos = {p: worst_result(e.get("results", [])).get("cosine") for p, e in entries.items()}
        best = None
        if r.bench:
            timed = [b for b in r.bench["backends"] if b.get("latency")]
            if timed:
                fastest = min(timed, key=lambda b: b["latency"]["median_ms"])
                best = f"{fastest['backend']} {fastest['latency']['median_ms']:.2f} ms"
        nodes = r.report.get("nodes", {})
        overview.append([r.name, r.report.get("kind", "?"),
                         "x".join(map(str, r.report.get("input_shape", []))),
                         str(nodes.get("total_after", "?")),
                         _fmt(worst_result(entries.get("fp32", {}).get("results", [])).get("max_abs")),
                         _fmt(cos.get("fp16"), ".5f"),
                         _fmt(cos.get("int8", cos.get("int8-fp32")), ".5f"),
                         best or "not benchmarked"])
    blocks += [Heading("Overview"),
               Table(["model", "kind", "input", "nodes", "FP32 max abs", "FP16 cosine",
                      "INT8 cosine (FP16 remainder, else FP32)", "fastest backend"], overview)]
    plots = [("latency.png", "Latency by backend", latency_plot(records)),
             ("parity.png", "Parity error by module", parity_plot(records))]
    blocks += [Plot(f, alt, png) for f, alt, png in plots if png]
    for r in records:
        rewrites = r.report.get("rewrites", {})
        rw = [f"{a['source']} -> {a['target']} x{a['count']}" for a in rewrites.get("applied", [])]
        rw += [f"{g['name']} x{g['count']}" for g in rewrites.get("graph", [])]
        blocks += [Heading(r.name),
                   Para(f"{source_line(r.report)}. Opset {r.report.get('opset', '?')}, "
                        f"{'dynamic' if r.report.get('dynamic_axes') else 'fixed'} batch; "
                        f"deploy rewrites: {', '.join(rw) or 'none'}"
                        f"; status {r.report.get('status', '?')}."),
                   Heading("Parity, precision and TensorRT check", 3),
                   Table(PRECISION_HEADER, precision_rows(r))]
        blocks += saturation_blocks(r)
        if r.bench:
            blocks += [Heading("Latency", 3), Para(settings_line(r.bench)),
                       Table(*latency_table(r.bench))]
        else:
            blocks.append(Para(f"No latency: run 'deploy-attn bench {r.name} --save' to add it."))
        if r.accuracy:
            blocks += accuracy_blocks(r)
        if r.maps:
            blocks += maps_blocks(r)
    env = environment()
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    blocks += [Heading("Environment"),
               Table(["", ""], [["CPU", env["cpu"]],
                                ["CPU features", ", ".join(env["cpu_flags"]) or "-"],
                                ["cores", f"{env['cores']} ({env['usable_cores']} usable)"],
                                ["GPU", env["gpu"] or "none visible"],
                                ["platform", env["platform"]], ["libraries", versions]]),
               Para("The environment of this report's writing; each latency table states the "
                    "machine it was measured on.")]
    return blocks


def write_report(names: Sequence[str] | None = None, export_root: str | Path = Path("export"),
                 out_dir: str | Path = Path("export")) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` (with its PNGs beside it) and a self-contained
    ``out_dir/report.html`` for ``names``, or for every export under ``export_root``."""
    records = load_records(names, export_root)
    blocks = build_blocks(records)
    out = Path(out_dir)
    for b in blocks:
        if isinstance(b, Plot):
            with atomic_path(out / b.file) as tmp:
                tmp.write_bytes(b.png)
    md, page = out / REPORT_MD, out / REPORT_HTML
    with atomic_path(md) as tmp:
        tmp.write_text(render_markdown(blocks), encoding="utf-8")
    with atomic_path(page) as tmp:
        tmp.write_text(render_html(blocks), encoding="utf-8")
    return md, page


WORST_FIGURES = 6  # figures of the worst sites in `deploy-attn report`
