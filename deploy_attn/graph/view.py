"""One view of an ONNX graph for every pass: producers, consumers, constants, edits."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

Dim = int | str | None  # a fixed size, a symbolic one (dim_param) or unknown


@dataclass(frozen=True)
class GraphPass:
    name: str
    run: Callable[["Graph"], int]  # rewrites the graph in place; returns the rewrites made
    exact: bool
    note: str


@dataclass(frozen=True)
class AppliedPass:
    name: str
    count: int
    exact: bool
    note: str

    def as_dict(self) -> dict:
        return asdict(self)


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value a Constant node holds (``value``, or one of the numeric ``value_*``
    attributes), else None."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.array(helper.get_attribute_value(a))
    return None


class Graph:
    """An ONNX graph with producer/consumer indexes, constants and symbolic shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.outputs = {o.name for o in self.graph.output}
        self._fresh = 0
        self.names: set[str] = set()  # every node name given out (new ones: unique_name)
        for i, node in enumerate(self.graph.node):  # nodes are told apart by name
            if not node.name or node.name in self.names:
                node.name = f"{node.op_type}_{i}"
                while node.name in self.names:
                    node.name += "_"
            self.names.add(node.name)
        self.reindex()

    def reindex(self) -> None:
        self.producer = {o: n for n in self.graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in (*n.input, *_outer_names(n)):  # If/Loop bodies read outer names too
                self.consumers.setdefault(i, []).append(n)
        self.dims: dict[str, list[Dim]] = {}
        for v in (*self.graph.input, *self.graph.value_info, *self.graph.output):
            t = v.type.tensor_type
            if t.HasField("shape"):
                # shape inference names sizes it could not work out "unk__N": unknown
                self.dims[v.name] = [d.dim_value if d.HasField("dim_value") else
                                     None if d.dim_param.startswith("unk__") else
                                     d.dim_param or None for d in t.shape.dim]
        for name, init in self.inits.items():
            self.dims[name] = list(init.dims)

    # --- values ----------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        return constant_value(node) if node is not None and node.op_type == "Constant" else None

    def scalar(self, name: str) -> float | None:
        value = self.const(name)
        if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.number):
            return None
        return float(value.reshape(()))

    def private(self, name: str, reader: onnx.NodeProto) -> bool:
        """Whether ``reader`` is the only user of ``name`` (so it may be folded away)."""
        users = self.consumers.get(name, [])
        return name not in self.outputs and len(users) == 1 and users[0].name == reader.name

    def add_const(self, value: np.ndarray, hint: str) -> str:
        self._fresh += 1
        name = f"{hint}_const_{self._fresh}"
        while name in self.inits or name in self.producer:
            self._fresh += 1
            name = f"{hint}_const_{self._fresh}"
        init = numpy_helper.from_array(value, name)
        self.graph.initializer.append(init)
        self.inits[name] = init
        return name

    def replace_all(self, swaps: list[tuple[list[onnx.NodeProto], onnx.NodeProto]]) -> None:
        """For each (old nodes, new node): put ``new`` where the last of ``old`` was and
        drop ``old``; one rebuild of the node list (protobuf's extend copies nodes, so
        nodes are identified by their unique names)."""
        anchor = {old[-1].name: new for old, new in swaps}
        gone = {n.name for old, _ in swaps for n in old}
        nodes = [anchor[n.name] if n.name in anchor else n for n in self.graph.node
                 if n.name in anchor or n.name not in gone]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.reindex()

    def prune(self) -> None:
        """Remove nodes nothing reads (the shape chains a rewrite left behind), unused
        initializers and the shapes of tensors that no longer exist."""
        while True:
            self.reindex()
            dead = [n for n in self.graph.node if not any(
                o in self.outputs or self.consumers.get(o) for o in n.output)]
            if not dead:
                break
            names = {n.name for n in dead}
            kept = [n for n in self.graph.node if n.name not in names]
            del self.graph.node[:]
            self.graph.node.extend(kept)
        used = set(self.consumers) | self.outputs
        inits = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(inits)
        self.inits = {i.name: i for i in inits}
        live = set(self.producer) | {i.name for i in self.graph.input}
        infos = [v for v in self.graph.value_info if v.name in live]
        del self.graph.value_info[:]
        self.graph.value_info.extend(infos)
        self.reindex()


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read, their own outputs excepted."""
    names: set[str] = set()
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                    list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
            made = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | \
                {i.name for i in sub.initializer}
            for n in sub.node:
                names |= {i for i in (*n.input, *_outer_names(n)) if i and i not in made}
    return names


def unique_name(graph: Graph, base: str) -> str:
    """A node name no node has had in this Graph, reserved for the caller's new node."""
    name, k = base, 0
    while name in graph.names:
        k += 1
        name = f"{base}_{k}"
    graph.names.add(name)
    return name
