"""Loading and inspecting ONNX files with errors a user can act on."""
from __future__ import annotations

import collections
from pathlib import Path

import onnx
import onnx.inliner

from .errors import ArtifactError


def load_onnx(path: str | Path, check: bool = True) -> onnx.ModelProto:
    """Load and validate an ONNX file; a missing, corrupt or foreign file is an ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning or OSError
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ArtifactError(f"{path}: not an ONNX model (no graph nodes)")
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"{path}: invalid ONNX model: {first}") from None
    return model


def most_frequent_first(counts: collections.Counter) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node counts by op type, most frequent first."""
    return most_frequent_first(collections.Counter(n.op_type for n in model.graph.node))


SHAPE_OPS = ("Shape", "ConstantOfShape", "Size")


def shape_ops(model: onnx.ModelProto) -> list[str]:
    """Nodes that compute shapes at run time (Shape/Size/ConstantOfShape and Gather or
    Slice fed by them, or Slice with non-constant bounds): what a deploy graph must not have."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    shape_values: set[str] = set()
    found = []
    for n in model.graph.node:
        fed_by_shape = any(i in shape_values for i in n.input)
        if n.op_type in SHAPE_OPS or (fed_by_shape and n.op_type in ("Gather", "Slice", "Concat",
                                                                      "Unsqueeze", "Squeeze")):
            found.append(f"{n.op_type}:{n.name}")
            shape_values.update(n.output)
        elif n.op_type == "Slice" and any(i and i not in consts for i in n.input[1:]):
            found.append(f"{n.op_type}:{n.name}")
    return found


def input_shape(model: onnx.ModelProto) -> list[int | str]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else d.dim_value for d in dims]


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder the graph's nodes topologically (some converters append nodes at the end,
    which ONNX Runtime tolerates but onnx.checker and TensorRT's parser do not)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ArtifactError("graph has a cycle or an input nothing produces: "
                                + ", ".join(sorted({i for n in pending for i in n.input
                                                    if i not in available})[:3]))
        for n in ready:
            available.update(n.output)
        ordered += ready
        ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ids]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes by name (the one reader every module uses; strings decoded)."""
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def attr(node: onnx.NodeProto, name: str, default):
    """One attribute of a node, or ``default`` when it is not set."""
    return attrs(node).get(name, default)
