"""Stage: attention maps of every artifact beside PyTorch's (``deploy-attn maps``).

The export finds each declared map (``deploy_attn.maps``) in the graph it exported, by
the exporter's name scopes: the tensors that leave the map submodule's scope, one per
call, in graph order. It records them as ``report["attention_maps"]`` (the graph passes,
onnxsim and the precision stages keep tensor names). This stage adds those tensors as
graph outputs to a *debug copy* of each artifact (the artifacts themselves stay as they
are), runs it on ONNX Runtime in the configuration the checks trust (and on OpenVINO
where it is installed), and compares each map with the one PyTorch's hooks captured.
"""
from __future__ import annotations

import ast
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from ..errors import ArtifactError, ConfigError
from ..maps import Captured, MapSite, MapSpec, capture
from .artifacts import write_json
from .onnx_io import load_onnx
from .parity import compare
from .progress import Progress, silent

MAPS_FILE = "maps.json"
MAPS_DIR = "maps"  # the figures, beside maps.json
SCOPES = "pkg.torch.onnx.name_scopes"
# When a map "drifts": FP32 elementwise (the export's FP32 atol); reduced precisions by the
# Pearson correlation of the map with PyTorch's (saliency evaluation's CC). The cosine is
# reported too, but a sigmoid gate is positive everywhere, so its cosine stays near 1 even
# when the gate's pattern has changed (generated mobilenetv2_ca, INT8: cosine 0.9993 with
# errors of 0.13 on a 0..1 gate).
MAP_TOLERANCES = {"fp32": {"atol": 1e-4}, "fp16": {"min_correlation": 0.999},
                  "int8": {"min_correlation": 0.95}, "int8-fp32": {"min_correlation": 0.95},
                  "int8-cpu": {"min_correlation": 0.95}}
WORST_FIGURES = 6  # figures of the worst sites in `deploy-attn report`


# --- the index: each declared map's tensor in the exported graph --------------------------
def _scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES:
            try:
                return list(ast.literal_eval(prop.value))[:-1]  # the last entry is the op
            except (ValueError, SyntaxError):
                return []
    return []


def map_index(raw: onnx.ModelProto, sites: Sequence[MapSite],
              final: onnx.ModelProto) -> list[dict]:
    """Each declared map with the tensor that carries it in ``final``: found in ``raw``
    (the exporter's own graph, whose nodes name their module scopes) as the outputs that
    leave the map submodule's scope, the ``call``-th in graph order; ``tensor`` is None
    with a ``reason`` where the graph does not hold it."""
    nodes = [(n, set(_scopes(n))) for n in raw.graph.node]
    graph_outputs = {o.name for o in raw.graph.output}
    final_tensors = {o for n in final.graph.node for o in n.output}
    consumers: dict[str, list[set[str]]] = {}
    for n, scopes in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(scopes)
    index = []
    for s in sites:
        path = s.module_path
        leaving = [o for n, scopes in nodes if path in scopes for o in n.output
                   if o in graph_outputs or any(path not in c for c in consumers.get(o, []))]
        entry = {**s.as_dict(), "tensor": None, "calls": len(leaving)}
        if s.spec.call >= len(leaving):
            entry["reason"] = (f"the exported graph has {len(leaving)} output(s) of "
                               f"{path}, not a call {s.spec.call}")
        elif leaving[s.spec.call] not in final_tensors:
            entry["reason"] = f"tensor {leaving[s.spec.call]} was folded away by onnxsim"
        else:
            entry["tensor"] = leaving[s.spec.call]
        index.append(entry)
    return index


# --- debug copies and their runs ---------------------------------------------------------
def debug_copy(artifact: Path, tensors: Sequence[str], dst: Path) -> list[str]:
    """A copy of ``artifact`` with ``tensors`` added as graph outputs (types from shape
    inference); the tensors it could add, in order."""
    model = load_onnx(artifact, check=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output,
                                 *inferred.graph.input)}
    have = {o.name for o in model.graph.output}
    added = []
    for t in dict.fromkeys(tensors):
        if t in infos and t not in have:
            model.graph.output.append(infos[t])
            added.append(t)
        elif t in have:
            added.append(t)
    onnx.save(model, str(dst))
    return added


def drifting_site(artifact: Path, index: Sequence[dict], module, x: np.ndarray,
                  precision: str) -> dict | None:
    """The first indexed map (in graph order) of ``artifact`` outside ``precision``'s map
    tolerance against ``module``'s on ``x`` (on ONNX Runtime), with its figures; None when
    every map holds."""
    rows = measure({precision: artifact}, index, module, x, ["onnxruntime"])[2]
    r = next((r for r in rows if r["results"]["onnxruntime"][precision]["ok"] is False), None)
    return None if r is None else {**r, **r["results"]["onnxruntime"][precision]}


def drift_note(drift: dict | None, precision: str) -> str:
    """The clause an export failure adds: where the maps first drift, and what to run."""
    if drift is None:
        return "; every attention map stays within its tolerance (the loss is elsewhere)"
    tol = MAP_TOLERANCES[precision]
    figures = (f"correlation {drift['correlation']:.4f} with PyTorch's (tolerance >= "
               f"{tol['min_correlation']}), cosine {drift['cosine']:.4f}, max abs "
               f"{drift['max_abs']:.3g}" if "correlation" in drift else drift.get("reason", ""))
    return (f"; the first attention site whose map drifts: {drift['site']} ({drift['class']}) "
            f"{drift['map']}, {figures}; 'deploy-attn maps' with the same model options "
            "draws every site")


def _ort_maps(path: Path, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    from .parity import ort_batches, ort_session

    session = ort_session(path, verify=True)
    order = [o.name for o in session.get_outputs()]
    runs = list(ort_batches(session, x))
    return {n: np.concatenate([r[order.index(n)] for r in runs]).astype(np.float32)
            for n in names}


def _ov_maps(path: Path, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    from .targets import ov_batches, ov_compile

    compiled = ov_compile(path)
    runs = list(ov_batches(compiled, x))
    return {n: np.concatenate([np.asarray(r[compiled.output(n)]) for r in runs])
            .astype(np.float32) for n in names}


RUNNERS = {"onnxruntime": _ort_maps, "openvino": _ov_maps}


def _runtimes() -> list[str]:
    from .targets import openvino_missing

    return ["onnxruntime"] + (["openvino"] if openvino_missing() is None else [])


# --- comparing -----------------------------------------------------------------------------
def compare_map(test: np.ndarray | None, ref: np.ndarray, precision: str) -> dict:
    """Cosine and max error of one map against PyTorch's, and whether it is within the
    precision's map tolerance. A deploy twin may lay a map out otherwise (GC's softmax as
    [N, HW, 1]): the same number of elements in the same order compares as PyTorch's
    shape."""
    if test is None:
        return {"ok": None, "reason": "not in this artifact"}
    if test.size != ref.size:
        return {"ok": False, "reason": f"shape {list(test.shape)} vs PyTorch {list(ref.shape)}"}
    r = compare(test.reshape(ref.shape), ref)
    a, b = test.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    corr = float(a @ b / denom) if denom > 0 else float(np.allclose(a, b, atol=1e-6))
    tol = MAP_TOLERANCES[precision]
    ok = r.finite and (r.max_abs <= tol["atol"] if "atol" in tol
                       else corr >= tol["min_correlation"])
    return {"cosine": r.cosine, "correlation": corr, "max_abs": r.max_abs, "finite": r.finite,
            "ok": ok}


@dataclass
class MapsResult:
    name: str
    input: dict
    precisions: list[str]
    runtimes: list[str]
    sites: list[dict]  # one per declared map: its index entry, results, figure
    skipped: list[dict] = field(default_factory=list)  # declared maps no graph holds
    diagnostic: str | None = None  # set when the artifacts were built only for this run
    seconds: float = 0.0

    def first_drift(self, precision: str, runtime: str = "onnxruntime") -> dict | None:
        """The first site (in graph order) whose map is outside its tolerance."""
        return next((s for s in self.sites
                     if s["results"].get(runtime, {}).get(precision, {}).get("ok") is False),
                    None)

    def as_dict(self) -> dict:
        return {"name": self.name, "input": self.input, "precisions": self.precisions,
                "runtimes": self.runtimes,
                "tolerances": {p: MAP_TOLERANCES[p] for p in self.precisions},
                "first_drift": {p: (d["site"] + ":" + d["map"]) if (d := self.first_drift(p))
                                else None for p in self.precisions},
                "diagnostic": self.diagnostic, "sites": self.sites, "skipped": self.skipped,
                "seconds": round(self.seconds, 2)}

    def table(self) -> str:
        from .bench import format_table

        cols = ["site", "class", "map", "kind"] + [p for p in self.precisions]
        rows = []
        for s in self.sites:
            row = [s["site"], s["class"], s["map"], s["kind"]]
            for p in self.precisions:
                r = s["results"]["onnxruntime"].get(p, {})
                row.append("-" if r.get("ok") is None else r.get("reason") or
                           f"{r['correlation']:.4f} / {r['cosine']:.5f} / {r['max_abs']:.1e}"
                           + ("" if r["ok"] else " DRIFT"))
            rows.append(row)
        rows += [[s["site"], s["class"], s["map"], s["kind"]] + ["not found"] * len(
            self.precisions) for s in self.skipped]
        return format_table(cols, rows) + ("\n(correlation / cosine / max abs vs "
                                           "PyTorch on ONNX Runtime; sites in graph order)")


def worst(site: dict) -> float:
    """How far a site's map is from PyTorch's at its worst precision on ONNX Runtime
    (1 - correlation)."""
    values = [1.0 - r["correlation"] for r in site["results"]["onnxruntime"].values()
              if r.get("correlation") is not None]
    return max(values, default=0.0)


def _site(entry: dict) -> MapSite:
    """The declared map an index entry describes."""
    site = "" if entry["site"] == "<root>" else entry["site"]
    inner = entry["module"][len(site) + 1:] if site else entry["module"]
    return MapSite(site, entry["class"], entry["map"], MapSpec(inner, entry["kind"],
                                                               entry["call"]))


def measure(files: dict[str, Path], index: Sequence[dict], module, x: np.ndarray,
            runtimes: Sequence[str], progress: Progress = silent):
    """Every indexed map of every artifact (precision -> file) against ``module``'s on
    ``x``: what the hooks captured, runtime -> precision -> tensor -> value from debug
    copies, one row per map found (with its results), and the maps skipped (with why)."""
    sites = [_site(e) for e in index]
    progress(f"maps: PyTorch hooks on {len(sites)} maps, {len(x)} input(s)")
    captured = capture(module, x, sites)
    tensors = [e["tensor"] for e in index if e["tensor"]]
    found: dict[str, dict[str, dict[str, np.ndarray]]] = {rt: {} for rt in runtimes}
    with tempfile.TemporaryDirectory(prefix="deploy-attn-maps-") as tmp:
        for precision, file in files.items():
            debug = Path(tmp) / f"debug-{precision}.onnx"
            added = debug_copy(file, tensors, debug)
            for rt in runtimes:
                progress(f"maps: {Path(file).name} on {rt} ({len(added)} map tensors as outputs)")
                found[rt][precision] = RUNNERS[rt](debug, added, x)
    rows, skipped = [], []
    for s, e in zip(sites, index):
        ref = captured.maps.get(s.key)
        if e["tensor"] is None or ref is None or captured.calls[s.key] != e["calls"]:
            skipped.append({**e, "reason": e.get("reason") or
                            f"PyTorch ran {s.module_path} {captured.calls[s.key]} time(s), the "
                            f"graph has {e['calls']} output(s) of it"})
            continue
        results = {rt: {p: compare_map(found[rt][p].get(e["tensor"]), ref, p) for p in files}
                   for rt in runtimes}
        rows.append({**e, "shape": list(ref.shape), "results": results,
                     "spatial": list(captured.spatial.get(s.site, ())) or None})
    return captured, found, rows, skipped


def evaluate_maps(exp, x: np.ndarray, input_info: dict,
                  precisions: Sequence[str] | None = None, progress: Progress = silent,
                  image: np.ndarray | None = None, write: Path | None = None,
                  diagnostic: str | None = None) -> MapsResult:
    """The maps of an export (an ``OpenExport``) on inputs ``x``, against its reference's;
    ``write``: the folder for maps.json and the figures (default the export's)."""
    t0 = time.perf_counter()
    report = exp.report
    if "attention_maps" not in report:
        raise ArtifactError(f"{exp.directory}: the export predates attention-map indexing; "
                            "export it again")
    index = report["attention_maps"]
    if not index:
        raise ConfigError(f"{exp.name}: no attention module with declared maps (see "
                          "deploy_attn/maps.py) in this model")
    have = list(report.get("files", {}))
    chosen = list(precisions) if precisions else have
    missing = [p for p in chosen if p not in have]
    if missing:
        raise ConfigError(f"{exp.name}: the export has no {', '.join(missing)} artifact; it "
                          f"has {', '.join(have)}")
    runtimes = _runtimes()
    files = {p: exp.directory / report["files"][p] for p in chosen}
    captured, found, rows, skipped = measure(files, index, exp.card().module, x, runtimes,
                                             progress)
    result = MapsResult(exp.name, input_info, chosen, runtimes, rows, skipped, diagnostic)
    out = Path(write or exp.directory)
    out.mkdir(parents=True, exist_ok=True)
    _write_figures(result, captured, found, len(x), image, out, progress)
    result.seconds = time.perf_counter() - t0
    write_json(out / MAPS_FILE, result.as_dict())
    return result


# --- figures --------------------------------------------------------------------------------
def display(value: np.ndarray, kind: str, batch: int, spatial: Sequence[int] | None
            ) -> np.ndarray:
    """What a map looks like for its first input: 1-D (bars) or 2-D (a heatmap)."""
    v = np.asarray(value, dtype=np.float32)
    if kind == "channel":
        return v.reshape(batch, -1)[0]
    if kind == "spatial":
        h, w = v.shape[-2:]
        return v.reshape(batch, -1, h, w)[0].mean(0)
    if kind in ("axis", "branch"):
        return v.reshape(batch, v.shape[1] if v.shape[0] == batch else -1, -1)[0]
    rows = v.reshape(batch, -1, v.shape[-1])[0].mean(0)  # "rows": the mean attention row
    if spatial and len(spatial) == 2 and rows.size == spatial[0] * spatial[1]:
        return rows.reshape(spatial)
    return rows


def _image(x: np.ndarray) -> np.ndarray:
    """The first input as a grey image in [0, 1] (the channel mean, min-max scaled)."""
    g = np.asarray(x[0], dtype=np.float32).mean(0)
    span = float(g.max() - g.min())
    return (g - g.min()) / span if span > 0 else np.zeros_like(g)


def site_figure(title: str, panels: list[tuple[str, list[tuple[str, np.ndarray]]]],
                overlay: np.ndarray | None) -> bytes:
    """One figure: a row per map, a column per form (PyTorch first); heatmaps (over the
    input image where given), bars for 1-D maps."""
    from matplotlib.figure import Figure

    from .report import png_bytes

    columns = len(panels[0][1])
    fig = Figure(figsize=(2.6 * columns, 2.3 * len(panels) + 0.4))
    axes = np.asarray(fig.subplots(len(panels), columns, squeeze=False))
    for r, (label, forms) in enumerate(panels):
        values = np.concatenate([v.ravel() for _, v in forms])
        lo, hi = float(values.min()), float(values.max())
        for c, (form, v) in enumerate(forms):
            ax = axes[r, c]
            if v.ndim == 2:
                if overlay is not None and min(v.shape) > 1:  # a map over the image
                    extent = (0, 1, 0, 1)
                    ax.imshow(overlay, cmap="gray", extent=extent)
                    ax.imshow(v, cmap="jet", alpha=0.5, vmin=lo, vmax=hi, extent=extent,
                              interpolation="bilinear")
                else:
                    ax.imshow(v, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.bar(np.arange(v.size), v, width=1.0, color="tab:blue")
                ax.set_ylim(min(0.0, lo), hi if hi > lo else lo + 1)
                ax.tick_params(labelsize=6)
            ax.set_title(f"{form}: {label}" if c == 0 else form, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def _file_name(rank: int, site: str) -> str:
    return f"{rank:02d}-{''.join(ch if ch.isalnum() else '_' for ch in site)}.png"


def _write_figures(result: MapsResult, captured: Captured, found: dict, batch: int,
                   image: np.ndarray | None, out: Path, progress: Progress) -> None:
    """One PNG per site under ``out/maps/`` (worst first), replacing an earlier set."""
    by_site: dict[str, list[dict]] = {}
    for row in result.sites:
        by_site.setdefault(row["site"], []).append(row)
    order = sorted(by_site, key=lambda s: -max(worst(r) for r in by_site[s]))
    folder = out / MAPS_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{MAPS_DIR}-", dir=out))
    try:
        progress(f"maps: {len(order)} figures")
        for rank, site in enumerate(order, 1):
            panels = []
            for row in by_site[site]:
                key = f"{row['site']}:{row['map']}"
                ref = captured.maps[key]
                forms = [("PyTorch", display(ref, row["kind"], batch, row["spatial"]))]
                for p in result.precisions:
                    v = found["onnxruntime"][p].get(row["tensor"])
                    if v is not None and v.size == ref.size:
                        forms.append((p, display(v.reshape(ref.shape), row["kind"], batch,
                                                 row["spatial"])))
                panels.append((row["map"], forms))
            furthest = max(worst(r) for r in by_site[site])
            title = (f"{result.name} {site} ({by_site[site][0]['class']}): worst 1 - correlation "
                     f"{furthest:.1e} over {', '.join(result.precisions)}")
            name = _file_name(rank, site)
            (staging / name).write_bytes(site_figure(title, panels, image))
            for row in by_site[site]:
                row["figure"] = f"{MAPS_DIR}/{name}"
        if folder.exists():
            shutil.rmtree(folder)
        staging.replace(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)



# --- the command ---------------------------------------------------------------------------
DEFAULT_COUNT = 4
DIAGNOSTIC_PRECISIONS = ("fp16", "int8")


def _maps_of(exp, image: Path | None, calib_dir: Path | None, count: int,
             precisions: Sequence[str] | None, progress: Progress, **kwargs) -> MapsResult:
    """evaluate_maps on the inputs asked for: one image, images of a folder, or the
    export's verification inputs; an image input is drawn under the spatial maps."""
    from .calib import _load_image, image_folder

    card, shape = exp.card(), exp.report["input_shape"]
    pre = card.preprocess
    if (image or calib_dir) and pre is None:
        raise ConfigError(f"{card.name} takes {shape[1]}-channel feature maps, not images; "
                          "omit --image/--calib-dir (the maps use the export's inputs)")
    batch = int(shape[0])
    if image is not None:
        x = np.repeat(_load_image(Path(image), pre)[None], batch, axis=0)
        info = {"source": f"image {image}", "count": 1}
    elif calib_dir is not None:
        data = image_folder(calib_dir, pre, count * batch)
        x, info = data.inputs, {"source": data.source, "count": int(len(data.inputs))}
    else:
        x = exp.verify_inputs(count * batch)
        info = {"source": "the export's verification inputs", "count": int(len(x))}
    overlay = _image(x) if (image or calib_dir) else None
    return evaluate_maps(exp, x.astype(np.float32), info, precisions, progress, overlay,
                         **kwargs)


def maps_job(directory: Path, *, image: Path | None = None, calib_dir: Path | None = None,
             count: int = DEFAULT_COUNT, precisions: Sequence[str] | None = None,
             fresh=None, progress: Progress = silent) -> MapsResult:
    """``deploy-attn maps``: the maps of the export in ``directory``; where there is none
    and ``fresh`` (a ModelCard) is given, of artifacts built for this diagnosis in a
    scratch folder (FP32 and ``precisions``, default FP16 and INT8, kept even where they
    miss their thresholds, never published); maps.json and maps/ go to ``directory``."""
    from .job import REPORT_FILE, ExportConfig, export_job, open_export

    if image is not None and calib_dir is not None:
        raise ConfigError("give --image or --calib-dir, not both")
    directory = Path(directory)
    if (directory / REPORT_FILE).is_file():
        return _maps_of(open_export(directory), image, calib_dir, count, precisions, progress)
    if fresh is None:
        raise ArtifactError(f"{directory}: no export there; run 'deploy-attn export' first")
    wanted = tuple(p for p in (precisions or DIAGNOSTIC_PRECISIONS) if p != "fp32")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".maps-build-", dir=directory) as tmp:
        progress(f"maps: no export in {directory}; building FP32 + {', '.join(wanted)} in a "
                 "scratch folder for this diagnosis (not kept)")
        cfg = ExportConfig(out_dir=Path(tmp), precisions=wanted, calib_dir=calib_dir,
                           strict=False)
        result = export_job(fresh, cfg, progress)
        note = "artifacts built for this diagnosis in a scratch folder and not kept" + "".join(
            f"; {p} missed its threshold: {e['failure']}"
            for p, e in result.report.get("precisions", {}).items() if e.get("failure"))
        return _maps_of(open_export(Path(tmp), card=fresh), image, calib_dir, count, None,
                        progress, write=directory, diagnostic=note)
