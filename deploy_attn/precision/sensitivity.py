"""Which INT8 layers cost the most, and the automatic exclusion they lead to."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..core.numerics import compare
from ..core.onnx_io import load_onnx
from ..runtime.ort import OrtRunner
from .common import name_nodes
from .int8 import leave_fp32, quantized_nodes


def int8_sensitivity(src: str | Path, int8: str | Path, score: Callable[[Path], float],
                     progress: Callable[[str], None] | None = None,
                     base: float | None = None) -> list[dict]:
    """Per quantized node: the score (e.g. cosine vs the reference) of the INT8 graph with
    that node alone left FP32, and its gain over the INT8 graph's own score ``base``
    (scored here when not given); most sensitive first."""
    fp32 = name_nodes(load_onnx(src))
    q = load_onnx(int8)
    targets = quantized_nodes(q)
    base = score(Path(int8)) if base is None else base
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one.onnx"
        for i, name in enumerate(targets, 1):
            if progress and (i == 1 or i % 10 == 0 or i == len(targets)):
                progress(f"int8 sensitivity [{i}/{len(targets)}]")
            onnx.save(leave_fp32(q, fp32, [name]), str(path))
            s = score(path)
            rows.append({"node": name,
                         "op_type": next(n.op_type for n in fp32.graph.node if n.name == name),
                         "score_with_node_fp32": s, "gain": s - base})
    rows.sort(key=lambda r: -r["gain"])
    return rows


def auto_exclude(src: str | Path, int8: str | Path, rows: list[dict],
                 score: Callable[[Path], float], target: float, base: float,
                 max_fraction: float = 0.25,
                 confirm: Callable[[list[str]], float] | None = None) -> list[str]:
    """The fewest most-sensitive nodes to leave FP32 for ``score >= target`` (none when
    the INT8 graph's own score ``base`` meets it), at most ``max_fraction`` of the
    quantized nodes. Candidates are scored on the bypassed graph (cheap); ``confirm(nodes)``,
    when given, re-quantizes with ``nodes`` excluded and scores that, and nodes are added
    until the real artifact meets the target too (recalibrating without them shifts the
    scales of their neighbours); its last call is with the nodes returned."""
    if base >= target:
        return []
    fp32, q = name_nodes(load_onnx(src)), load_onnx(int8)
    candidates = rows[: max(1, int(len(rows) * max_fraction))]
    chosen: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.onnx"
        for row in candidates:
            chosen.append(row["node"])
            onnx.save(leave_fp32(q, fp32, chosen), str(path))
            if score(path) >= target:
                break
    if confirm is not None:
        rest = iter(candidates[len(chosen):])
        while confirm(chosen) < target and (row := next(rest, None)) is not None:
            chosen.append(row["node"])
    return chosen


def cosine_scorer(reference_outputs: np.ndarray, inputs: np.ndarray) -> Callable[[Path], float]:
    """Cosine similarity of an ONNX file's outputs on ``inputs`` to ``reference_outputs``
    (in the runtime configuration the checks trust)."""
    def score(path: Path) -> float:
        return compare(OrtRunner(path, verify=True).run(inputs),
                       reference_outputs).cosine

    return score
