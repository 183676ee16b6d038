"""Command: attention maps of every artifact beside PyTorch's (``deploy-attn maps``).

The export finds each declared map (``deploy_attn.map_capture``) in the graph it exported, by
the exporter's name scopes: the tensors that leave the map submodule's scope, one per
call, in graph order. It records them as ``report["attention_maps"]`` (the graph passes,
onnxsim and the precision stages keep tensor names). This command adds those tensors as
graph outputs to a *debug copy* of each artifact (the artifacts themselves stay as they
are), runs it on ONNX Runtime in the configuration the checks trust (and on OpenVINO
where it is installed), and compares each map with the one PyTorch's hooks captured.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checks.drift import MAP_TOLERANCES, map_runtimes, measure, worst
from ..core.console import Progress, format_table, silent
from ..core.errors import ArtifactError, ConfigError
from ..core.files import write_json
from ..core.images import load_image
from ..exportdir.config import ExportConfig
from ..exportdir.layout import MAPS_DIR, MAPS_FILE, REPORT_FILE
from ..exportdir.reader import open_export
from ..jobs.export import export_job
from ..map_capture import Captured
from ..precision.calib import image_folder
from .figures import png_bytes


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
                          "deploy_attn/map_capture.py) in this model")
    have = list(report.get("files", {}))
    chosen = list(precisions) if precisions else have
    missing = [p for p in chosen if p not in have]
    if missing:
        raise ConfigError(f"{exp.name}: the export has no {', '.join(missing)} artifact; it "
                          f"has {', '.join(have)}")
    runtimes = map_runtimes()
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
    card, shape = exp.card(), exp.report["input_shape"]
    pre = card.preprocess
    if (image or calib_dir) and pre is None:
        raise ConfigError(f"{card.name} takes {shape[1]}-channel feature maps, not images; "
                          "omit --image/--calib-dir (the maps use the export's inputs)")
    batch = int(shape[0])
    if image is not None:
        x = np.repeat(load_image(Path(image), pre)[None], batch, axis=0)
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
