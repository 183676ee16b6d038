"""Attention maps inside an artifact against PyTorch's, and the first one that drifts."""
from __future__ import annotations

import ast
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from ..core.console import Progress, silent
from ..core.numerics import compare
from ..core.onnx_io import load_onnx
from ..map_capture import MapSite, MapSpec, capture
from ..runtime.base import Runner
from ..runtime.openvino import OpenVINORunner, openvino_missing
from ..runtime.ort import OrtRunner

SCOPES = "pkg.torch.onnx.name_scopes"
# When a map "drifts": FP32 elementwise (the export's FP32 atol); reduced precisions by the
# Pearson correlation of the map with PyTorch's (saliency evaluation's CC). The cosine is
# reported too, but a sigmoid gate is positive everywhere, so its cosine stays near 1 even
# when the gate's pattern has changed (generated mobilenetv2_ca, INT8: cosine 0.9993 with
# errors of 0.13 on a 0..1 gate).
MAP_TOLERANCES = {"fp32": {"atol": 1e-4}, "fp16": {"min_correlation": 0.999},
                  "int8": {"min_correlation": 0.95}, "int8-fp32": {"min_correlation": 0.95},
                  "int8-cpu": {"min_correlation": 0.95}}


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


# the runtimes maps are read on, each in the configuration the checks trust
RUNNERS: dict[str, Callable[[Path], Runner]] = {
    "onnxruntime": lambda path: OrtRunner(path, verify=True), "openvino": OpenVINORunner}


def map_runtimes() -> list[str]:
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
                maps = RUNNERS[rt](debug).outputs(x, added)
                found[rt][precision] = {n: v.astype(np.float32) for n, v in maps.items()}
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
