"""Static TensorRT import check: would the ONNX-TensorRT parser take every node of a graph?

Checked against the operator support matrix of onnx-tensorrt (``data/trt_onnx_ops_10.16.json``):
the op is listed and supported, its data input types are in the matrix's 'types' column, the
opset is in the matrix's range, and the restrictions the matrix states in words hold where
they can be decided without TensorRT (constant inputs, attributes, inferred ranks and types).
Runs on a CPU; a graph that passes can still fail a TensorRT build for reasons only the
builder knows (memory, tactics, shapes that are only known at run time).
"""
from __future__ import annotations

import collections
import json
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterator, Mapping

import numpy as np
import onnx.inliner
from onnx import TensorProto, numpy_helper

from ..core.errors import ArtifactError
from ..core.onnx_io import attr, load_onnx, most_frequent_first
from ..graph.view import constant_value

MATRIX_FILE = "trt_onnx_ops_10.16.json"
STANDARD_DOMAINS = ("", "ai.onnx")
# Matrix notes: "INT8, INT4, FP8 and FP4 are treated as `Quantized Types` in TensorRT, where
# support is available only through quantization" (i.e. through QuantizeLinear/DequantizeLinear).
QUANTIZED_TYPES = ("INT8", "FP8", "INT4", "FP4")
SUMMARY_ISSUES = 3  # issues named in summary() before "+N more"

# ONNX element type -> the matrix's type names. DOUBLE counts as FP32: the matrix notes say
# TensorRT casts DOUBLE down to FLOAT.
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.DOUBLE: "FP32", TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16", TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.FLOAT4E2M1: "FP4",
    TensorProto.INT4: "INT4", TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL",
}


def type_name(elem_type: int) -> str:
    """The matrix's name for an ONNX element type (ONNX's own name where the matrix has none)."""
    return _TYPE_NAMES.get(elem_type) or TensorProto.DataType.Name(elem_type)


@dataclass(frozen=True)
class OpSupport:
    """One row of the matrix."""
    supported: bool
    types: tuple[str, ...]
    restrictions: str


@dataclass(frozen=True)
class OpMatrix:
    """The ONNX-TensorRT operator support matrix of one TensorRT version."""
    tensorrt_version: str
    source: str
    opset_min: int
    opset_max: int
    ops: Mapping[str, OpSupport]


def load_matrix(path: Path | None = None) -> OpMatrix:
    """Read the operator matrix: the packaged TensorRT 10.16 one, or the JSON file at ``path``."""
    if path is None:
        where = f"deploy_attn/data/{MATRIX_FILE}"
        text = (resources.files("deploy_attn") / "data" / MATRIX_FILE).read_text(encoding="utf-8")
    else:
        where = str(path)
        if not Path(path).is_file():
            raise ArtifactError(f"{path}: no such TensorRT operator matrix file")
        text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        ops = {name: OpSupport(bool(row["supported"]), tuple(row["types"]), row["restrictions"])
               for name, row in data["ops"].items()}
        return OpMatrix(str(data["tensorrt_version"]), data["source"],
                        int(data["opset_range"]["min"]), int(data["opset_range"]["max"]),
                        MappingProxyType(ops))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{where}: not a TensorRT operator matrix "
                            f"({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class TrtIssue:
    """Why TensorRT would reject one node; ``node`` is empty for a model-wide issue (opset)."""
    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op_type} '{self.node}' ({self.reason})" if self.node else self.reason


@dataclass(frozen=True)
class TrtCheckResult:
    tensorrt_version: str
    source: str
    nodes: int  # all nodes checked, subgraphs included
    rejected: int  # nodes with at least one issue
    issues: list[TrtIssue]
    op_counts: dict[str, int]  # non-standard ops as "domain:OpType"

    @property
    def ok(self) -> bool:
        return not self.issues

    def as_dict(self) -> dict:
        return {"tensorrt_version": self.tensorrt_version, "source": self.source, "ok": self.ok,
                "nodes": self.nodes, "rejected": self.rejected,
                "issues": [asdict(i) for i in self.issues], "op_counts": dict(self.op_counts),
                "summary": self.summary()}

    def summary(self) -> str:
        """One line for the CLI and for error messages."""
        head = f"TensorRT {self.tensorrt_version} operator check"
        if self.ok:
            return f"{head}: all {self.nodes} nodes supported"
        named = [str(i) for i in self.issues[:SUMMARY_ISSUES]]
        if len(self.issues) > SUMMARY_ISSUES:
            named.append(f"+{len(self.issues) - SUMMARY_ISSUES} more")
        return f"{head}: {self.rejected} of {self.nodes} nodes rejected: {', '.join(named)}"


def check_trt_support(model: onnx.ModelProto | str | Path,
                      matrix: OpMatrix | None = None) -> TrtCheckResult:
    """Check every node (subgraphs and inlined local functions included) against the matrix.

    A path is read with ``load_onnx`` without the ONNX checker, so a missing or corrupt file
    is an ArtifactError; the graph's TensorRT problems come back as issues, not exceptions.
    """
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model, check=False)
    matrix = matrix or load_matrix()
    if model.functions:  # onnx-tensorrt imports model-local functions by expanding them
        model = onnx.inliner.inline_local_functions(model)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - >2 GB or malformed: check with the types already there
        pass
    versions = {d.domain: d.version for d in model.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    graph = _GraphInfo(model.graph)

    issues: list[TrtIssue] = []
    if opset is not None and not matrix.opset_min <= opset <= matrix.opset_max:
        issues.append(TrtIssue("", "", f"ai.onnx opset {opset} outside TensorRT "
                                       f"{matrix.tensorrt_version}'s {matrix.opset_min}-"
                                       f"{matrix.opset_max}"))
    counts: collections.Counter[str] = collections.Counter()
    rejected = 0
    for index, node in enumerate(graph.nodes):
        std = node.domain in STANDARD_DOMAINS
        counts[node.op_type if std else f"{node.domain}:{node.op_type}"] += 1
        reasons = list(dict.fromkeys(_node_issues(node, opset, matrix, graph)))  # dedupe
        rejected += bool(reasons)
        label = node.name or f"#{index}"
        issues.extend(TrtIssue(label, node.op_type, r) for r in reasons)
    return TrtCheckResult(matrix.tensorrt_version, matrix.source, len(graph.nodes), rejected,
                          issues, most_frequent_first(counts))


class _GraphInfo:
    """Nodes, element types, shapes and constant values of a graph and all its subgraphs
    (ONNX names are unique across scopes, so one table serves every scope)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | None]] = {}
        self.initializers: dict[str, TensorProto] = {}
        self.producers: dict[str, onnx.NodeProto] = {}
        self._collect(graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        for vi in (*graph.input, *graph.output, *graph.value_info):
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in tt.shape.dim]
        for init in graph.initializer:
            self.initializers[init.name] = init
            self.types[init.name] = init.data_type
            self.shapes[init.name] = list(init.dims)
        for node in graph.node:
            self.nodes.append(node)
            self.producers.update((o, node) for o in node.output if o)
            for a in node.attribute:
                if node.op_type == "Constant" and a.name == "value":
                    self.types[node.output[0]] = a.t.data_type
                    self.shapes[node.output[0]] = list(a.t.dims)
                for sub in (*([a.g] if a.HasField("g") else []), *a.graphs):
                    self._collect(sub)

    def is_constant(self, name: str) -> bool:
        """An initializer or a Constant output, possibly through Identity: known at build time."""
        if name in self.initializers:
            return True
        node = self.producers.get(name)
        if node is not None and node.op_type == "Identity" and node.domain in STANDARD_DOMAINS:
            return self.is_constant(node.input[0])
        return node is not None and node.op_type == "Constant" and node.domain in STANDARD_DOMAINS

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant input, or None when it is not a constant or cannot be read."""
        try:
            if name in self.initializers:
                return numpy_helper.to_array(self.initializers[name])
            node = self.producers.get(name)
            if node is None or node.domain not in STANDARD_DOMAINS:
                return None
            if node.op_type == "Identity":
                return self.value(node.input[0])
            if node.op_type == "Constant" and node.attribute:
                return constant_value(node)
        except Exception:  # noqa: BLE001 - external data not loaded, odd encodings
            return None
        return None

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)


def _node_issues(node: onnx.NodeProto, opset: int | None, matrix: OpMatrix,
                 graph: _GraphInfo) -> Iterator[str]:
    if node.domain not in STANDARD_DOMAINS:
        yield f"not an ONNX standard op (domain {node.domain})"
        return
    row = matrix.ops.get(node.op_type)
    if row is None:
        yield f"not in the TensorRT {matrix.tensorrt_version} operator matrix"
        return
    if not row.supported:
        yield "not supported"
        return
    yield from _type_issues(node, row, opset, graph)
    text = row.restrictions.lower()
    for phrase, check in _PHRASE_CHECKS:
        if phrase in text:
            yield from check(node, row, graph)
    if node.op_type in _OP_CHECKS:
        yield from _OP_CHECKS[node.op_type](node, row, graph)


def _data_inputs(node: onnx.NodeProto, opset: int | None) -> list[int]:
    """Positions of the inputs the matrix's 'types' column describes: those bound to the op
    schema's first type variable that has a choice of types (so not Reshape's int64 shape,
    Gather's indices or Where's bool condition)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version(), "")
    except onnx.defs.SchemaError:
        return []
    choices = {c.type_param_str: len(c.allowed_type_strs) for c in schema.type_constraints}
    formals = list(schema.inputs)
    data = next((f.type_str for f in formals if choices.get(f.type_str, 1) > 1), None)
    if data is None:
        return []
    if formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        formals += [formals[-1]] * max(0, len(node.input) - len(formals))  # Concat, Sum, ...
    return [i for i, formal in zip(range(len(node.input)), formals) if formal.type_str == data]


def _type_issues(node: onnx.NodeProto, row: OpSupport, opset: int | None,
                 graph: _GraphInfo) -> Iterator[str]:
    if not row.types:
        return
    found = {type_name(graph.types[node.input[i]]) for i in _data_inputs(node, opset)
             if node.input[i] and node.input[i] in graph.types}
    for t in sorted(found - set(row.types)):
        if t in QUANTIZED_TYPES:
            yield (f"{t} input outside Q/DQ: TensorRT takes {t} only through "
                   "QuantizeLinear/DequantizeLinear")
        else:
            yield f"{t} input not supported (types: {', '.join(row.types)})"


def _axes_initializer(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    # deploy: Reduce* from opset 18 take axes as an input; TensorRT needs it at build time.
    if len(node.input) > 1 and node.input[1] and not graph.is_constant(node.input[1]):
        yield "axes is a run-time tensor; TensorRT needs an initializer"


def _zero_point_zero(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    zp = node.input[2] if len(node.input) > 2 else ""
    value = graph.value(zp) if zp else None
    if value is not None and np.any(value.astype(np.float64) != 0):
        yield "zero point must be 0 (TensorRT quantization is symmetric)"


def _rank_4(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    rank = graph.rank(node.input[0])
    if rank is not None and rank != 4:
        yield f"input must be 4-D (rank {rank})"


def _pool_rank(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    rank = graph.rank(node.input[0])
    if rank is not None and rank not in (4, 5):
        yield f"2-D or 3-D pooling only (input rank {rank})"


def _dilations_one(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    dilations = attr(node, "dilations", [])
    if any(d != 1 for d in dilations):
        yield f"dilations must be all ones ({list(dilations)})"


def _first_output_only(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    if any(node.output[1:]):
        yield "only the first output is supported"


def _dropout_inference(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    training = node.input[2] if len(node.input) > 2 else ""
    if training:
        value = graph.value(training)
        if value is None or bool(np.any(value)):
            yield "training_mode must be an initializer that is False"


def _constant_attrs(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    for a in node.attribute:
        if a.name in ("sparse_value", "value_string", "value_strings"):
            yield f"{a.name} attribute unsupported"


def _resize(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    # The allowed attribute values are the ones the matrix lists ("Supported resize modes: ...").
    listed = _listed_values(row.restrictions)
    mode = attr(node, "mode", "nearest")
    checks = [("resize modes", "mode", mode),
              ("resize transformation modes", "coordinate_transformation_mode",
               attr(node, "coordinate_transformation_mode", "half_pixel")),
              ("aspect ratio policy", "keep_aspect_ratio_policy",
               attr(node, "keep_aspect_ratio_policy", "stretch"))]
    if mode == "nearest":
        checks.append(("nearest modes", "nearest_mode",
                       attr(node, "nearest_mode", "round_prefer_floor")))
    for label, key, value in checks:
        if label in listed and value not in listed[label]:
            yield f"{key} {value!r} unsupported (supported: {', '.join(listed[label])})"
    if "antialiasing is not supported" in row.restrictions.lower() and attr(node, "antialias", 0):
        yield "antialias unsupported"
    axes = attr(node, "axes", None)
    scales = node.input[2] if len(node.input) > 2 else ""
    rank = graph.rank(node.input[0])
    if axes is not None and scales and not graph.is_constant(scales) and rank is not None:
        if sorted(a % rank for a in axes) != list(range(rank)) or len(axes) != rank:
            yield f"axes {list(axes)} with run-time scales must be 0..{rank - 1}"


_PHRASE_CHECKS: tuple[tuple[str, Callable[..., Iterator[str]]], ...] = (
    ("`axes` must be an initializer", _axes_initializer),
    ("_zero_point` must be", _zero_point_zero),
    ("must be 4d input", _rank_4),
    ("2d or 3d pooling only", _pool_rank),
    ("`dilations` must be empty or all ones", _dilations_one),
    ("`indices` output tensor unsupported", _first_output_only),
    ("only the first output", _first_output_only),
    ("`is_training` must be an initializer", _dropout_inference),
    ("`sparse_value`", _constant_attrs),
    ("supported resize modes", _resize),
)


def _qdq(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    """Q/DQ as TensorRT takes it (docs/TENSORRT.md): quantized type INT8/FP8/INT4/FP4 (the
    DequantizeLinear input type is checked against the matrix's types), constant positive
    scales, an explicit axis for per-channel scales."""
    scale = node.input[1] if len(node.input) > 1 else ""
    zp = node.input[2] if len(node.input) > 2 else ""
    if node.op_type == "QuantizeLinear":
        if zp:
            qtype = graph.types.get(zp)
        else:
            qtype = attr(node, "output_dtype", 0) or TensorProto.UINT8
        if qtype is not None and type_name(qtype) not in QUANTIZED_TYPES:
            why = (" (ONNX's default without y_zero_point; give an INT8 zero point of 0)"
                   if not zp and not attr(node, "output_dtype", 0) else "")
            yield (f"quantizes to {type_name(qtype)}{why}; TensorRT quantizes to "
                   f"{'/'.join(QUANTIZED_TYPES)} only")
    if not scale:
        return
    if not graph.is_constant(scale):
        yield "scale is a run-time tensor; TensorRT Q/DQ needs constant scales"
        return
    value = graph.value(scale)
    if value is not None and not np.all(value.astype(np.float64) > 0):
        yield "scales must be positive"
    size = value.size if value is not None else int(np.prod(graph.shapes.get(scale) or [1]))
    if size > 1 and not any(a.name == "axis" for a in node.attribute):
        yield "per-channel scales need an explicit axis"


def _group_norm(node: onnx.NodeProto, row: OpSupport, graph: _GraphInfo) -> Iterator[str]:
    shape = graph.shapes.get(node.input[0])
    groups = attr(node, "num_groups", None)
    if shape and len(shape) > 1 and shape[1] and groups and shape[1] % groups:
        yield f"num_groups {groups} does not divide {shape[1]} channels"


_OP_CHECKS: dict[str, Callable[..., Iterator[str]]] = {
    "QuantizeLinear": _qdq, "DequantizeLinear": _qdq, "GroupNormalization": _group_norm,
}


def _listed_values(restrictions: str) -> dict[str, tuple[str, ...]]:
    """'Supported resize modes: `nearest`, `linear`.<br />...' -> {'resize modes': (...)}."""
    listed = {}
    for part in restrictions.split("<br />"):
        m = re.match(r"\s*Supported ([^:]+):(.*)", part)
        if m:
            listed[m.group(1).strip().lower()] = tuple(re.findall(r"`([^`]+)`", m.group(2)))
    return listed
