"""Stage: export folders -> ``report.md`` and a self-contained ``report.html``.

Per model and precision: parity figures, FP32-kept nodes, the TensorRT operator check,
artifact sizes and latency per backend (from ``bench.json``, written by ``bench(save=True)``);
plots of latency by backend and of parity error by module; the environment. The report
is built once as a list of blocks and rendered twice (Markdown, HTML), so the two never
disagree. Plots are PNGs: embedded as base64 in the HTML, written beside the Markdown.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from .artifacts import atomic_path, read_json
from .accuracy import ACCURACY_FILE
from .bench import BENCH_FILE, environment, latency_table, settings_line
from .job import PRECISIONS, REPORT_FILE, read_report
from .maps import MAPS_FILE
from .parity import FP16, FP32, INT8
from .targets import forms_note

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


# --- blocks: what the report says, independent of the format ---------------------------
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Plot:
    file: str  # PNG name beside report.md
    alt: str
    png: bytes


Block = Heading | Para | Table | Plot


# --- reading the export folders ----------------------------------------------------------
def exported_names(export_root: str | Path) -> list[str]:
    """Every folder under ``export_root`` with an export report, sorted."""
    root = Path(export_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / REPORT_FILE).is_file())


@dataclass
class ModelRecord:
    name: str
    directory: Path
    report: dict
    bench: dict | None
    accuracy: dict | None = None  # accuracy.json, written by `deploy-attn accuracy`
    maps: dict | None = None  # maps.json, written by `deploy-attn maps`


def load_records(names: Sequence[str] | None, export_root: str | Path) -> list[ModelRecord]:
    """The reports (and bench results, where saved) of ``names`` (export folder names
    under ``export_root``, or export directories), or of every export under it."""
    root = Path(export_root)
    chosen = list(names) if names else exported_names(root)
    if not chosen:
        raise ConfigError(f"no exports under {root}: run 'deploy-attn export NAME' first")
    records = []
    for name in chosen:
        # an export directory given as such, else a folder under the root
        directory = Path(name) if (Path(name) / REPORT_FILE).is_file() else root / name
        bench_path, accuracy_path = directory / BENCH_FILE, directory / ACCURACY_FILE
        report = read_report(directory)
        maps_path = directory / MAPS_FILE
        records.append(ModelRecord(report["name"], directory, report,
                                   read_json(bench_path) if bench_path.is_file() else None,
                                   read_json(accuracy_path) if accuracy_path.is_file()
                                   else None,
                                   read_json(maps_path) if maps_path.is_file() else None))
    return records


# --- figures per precision ---------------------------------------------------------------
def worst_result(results: list[dict]) -> dict:
    """One row summarising several batches: the largest errors, the lowest cosine."""
    if not results:
        return {}
    return {"max_abs": max(r["max_abs"] for r in results),
            "max_rel": max(r["max_rel"] for r in results),
            "cosine": min(r["cosine"] for r in results),
            "finite": all(r["finite"] for r in results),
            "top1_agreement": min((r["top1_agreement"] for r in results
                                   if r.get("top1_agreement") is not None), default=None),
            "batches": ", ".join(str(r["batch"]) for r in results)}


def precision_entries(report: dict) -> dict[str, dict]:
    """precision -> its parity entry (results, tolerance, ok, details), FP32 included."""
    entries = {}
    if "parity" in report and "fp32" in report["parity"]:
        entries["fp32"] = report["parity"]["fp32"]
    entries.update(report.get("precisions", {}))
    return dict(sorted(entries.items(), key=lambda kv: PRECISIONS.index(kv[0])
                       if kv[0] in PRECISIONS else len(PRECISIONS)))


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
    from .engine import tensorrt_series

    series = env.get("tensorrt_series") or tensorrt_series(env.get("tensorrt"))
    return f"{series}.x" if series else "unknown"


PRECISION_HEADER = ["precision", "parity", "threshold", "max abs", "cosine", "top-1",
                    "FP32-kept nodes", "TensorRT operator check", "artifact"]
# --- plots -----------------------------------------------------------------------------
def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def latency_plot(records: list[ModelRecord]) -> bytes | None:
    """Median latency (log scale) per model, one bar per measured backend; p90 as whisker."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    measured = [r for r in records if r.bench]
    if not measured:
        return None
    backends = list(dict.fromkeys(b["backend"] for r in measured for b in r.bench["backends"]
                                  if b.get("latency")))
    if not backends:
        return None
    fig = Figure(figsize=(max(6.0, 1.3 * len(measured) * max(1, len(backends)) / 3 + 2), 4))
    ax = fig.subplots()
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        xs, ys, err = [], [], []
        for j, r in enumerate(measured):
            b = next((b for b in r.bench["backends"] if b["backend"] == backend
                      and b.get("latency")), None)
            if b:
                xs.append(j + (i - (len(backends) - 1) / 2) * width)
                ys.append(b["latency"]["median_ms"])
                err.append(b["latency"]["p90_ms"] - b["latency"]["median_ms"])
        ax.bar(xs, ys, width, yerr=[[0] * len(err), err], label=backend, capsize=2)
    ax.set_xticks(range(len(measured)), [r.name for r in measured], rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("median latency, ms (log; whisker: p90)")
    ax.set_title("Latency by backend")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(backends), 4))
    return png_bytes(fig)


def parity_plot(records: list[ModelRecord]) -> bytes | None:
    """Per module: FP32 max abs error, and 1 - cosine of each reduced precision (log)."""
    from matplotlib.figure import Figure

    precisions = list(dict.fromkeys(p for r in records for p in precision_entries(r.report)))
    if not precisions:
        return None
    fig = Figure(figsize=(max(10.0, 1.2 * len(records) + 4), 4.5))
    ax_abs, ax_cos = fig.subplots(1, 2)
    names = [r.name for r in records]
    fp32 = [worst_result(precision_entries(r.report).get("fp32", {}).get("results", [])).get("max_abs")
            for r in records]
    ax_abs.bar(range(len(records)), [v or 0 for v in fp32], color="tab:blue")
    ax_abs.axhline(FP32.atol, color="tab:red", ls="--", lw=1, label=f"atol {FP32.atol:g}")
    ax_abs.set_title("FP32: max abs error vs PyTorch", fontsize=10)
    reduced = [p for p in precisions if p != "fp32"]
    width = 0.8 / max(1, len(reduced))
    for i, p in enumerate(reduced):
        xs, ys = [], []
        for j, r in enumerate(records):
            w = worst_result(precision_entries(r.report).get(p, {}).get("results", []))
            if w:
                xs.append(j + (i - (len(reduced) - 1) / 2) * width)
                ys.append(max(1.0 - w["cosine"], 1e-12))
        ax_cos.bar(xs, ys, width, label=p)
    for limit, label in ((1 - FP16.min_cosine, "fp16 limit"), (1 - INT8.min_cosine, "int8 limit")):
        ax_cos.axhline(limit, ls="--", lw=1, color="gray")
        ax_cos.text(len(records) - 0.5, limit, label, fontsize=7, va="bottom", ha="right")
    ax_cos.set_title("FP16 / INT8: 1 - cosine vs PyTorch", fontsize=10)
    for ax in (ax_abs, ax_cos):
        ax.set_yscale("log")
        ax.set_xticks(range(len(records)), names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    ax_abs.legend(fontsize=8)
    if reduced:
        ax_cos.legend(fontsize=8)
    fig.suptitle("Parity error by module")
    fig.subplots_adjust(wspace=0.3)
    return png_bytes(fig)


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
    from .maps import MAPS_DIR, WORST_FIGURES, worst

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
SATURATION_HEADER = ["artifact", "for", "layers", "saturating", "max pair sums saturated",
                     "worst layer", "its output error (RMS)"]


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
        rows.append([name, for_, str(len(sat["layers"])), str(sat["saturating_layers"]),
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


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        elif isinstance(b, Plot):
            out.append(f"![{b.alt}]({b.file})")
        out.append("")
    return "\n".join(out)


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;
max-width:1150px;color:#1d2430;line-height:1.4}h1{border-bottom:3px solid #2b6cb0}
h2{margin-top:1.8em;border-bottom:1px solid #cbd5e0}table{border-collapse:collapse;
margin:.6em 0;font-size:13px}th{background:#2b6cb0;color:#fff;text-align:left}
th,td{border:1px solid #cbd5e0;padding:3px 7px;vertical-align:top}
tr:nth-child(even) td{background:#f1f5fa}img{max-width:100%;display:block;margin:1em 0}
td.fail{color:#c53030;font-weight:600}td.pass{color:#2f855a}"""


def render_html(blocks: Sequence[Block]) -> str:
    title = next((b.text for b in blocks if isinstance(b, Heading)), "report")
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Table):
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                       + "</tr>")
            for row in b.rows:
                cells = []
                for c in row:
                    cls = {"pass": " class='pass'", "FAIL": " class='fail'"}.get(c, "")
                    cells.append(f"<td{cls}>{html.escape(str(c))}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</table>")
        elif isinstance(b, Plot):
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f"<img alt='{html.escape(b.alt)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out)


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
