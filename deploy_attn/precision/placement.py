"""Where INT8 Q/DQ goes in the TensorRT forms: NVIDIA's placement guidance as TensorRT
Model Optimizer applies it (``modelopt/onnx/quantization/graph_utils.py``,
``int8.py``), each rule named with the nodes it touched.

* ``small_channels``: a Conv stays unquantized when it has fewer than 16 input or output
  channels (ModelOpt's ``find_nodes_from_convs_to_exclude``: kept anyway when it is a
  dense Conv with a square kernel whose channel counts TensorRT's INT8 kernels take (a
  multiple of 8, and the other side >= 16 or the graph input), or a grouped Conv with a
  multiple of 8 output channels and kernels of at least 3); a Gemm/MatMul with a
  constant weight of fewer than 16 input or output channels likewise. TensorRT runs
  such layers in FP16 anyway, so Q/DQ there only costs reformatting.
* ``gemv``: a Gemm/MatMul whose output is a matrix-vector product at batch 1 (an output
  dimension of 1 in its last two axes; a dynamic batch counts as the calibration
  batch, 1, as ModelOpt does): memory-bound, no faster in INT8.
* ``residual_add``: the residual input of every skip Add gets Q/DQ (the other, coming
  from a Conv, fuses with it): the input not produced by a Conv, or, when both are (a
  downsample shortcut), the one on the shorter path from their common ancestor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ..core.onnx_io import attr
from ..graph.view import Graph

MIN_CHANNELS = 16
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the weighted ops INT8 takes
CONV = ("Conv", "ConvTranspose")
THROUGH = ("BatchNormalization", "Relu", "LeakyRelu", "Clip")  # still fuse into the conv

RULES = {
    "small_channels": "Conv/Gemm with fewer than 16 input or output channels left "
                      "unquantized (ModelOpt's exceptions for dense convs with square "
                      "kernels and channel counts a multiple of 8, and grouped convs)",
    "gemv": "batch-1 matrix-vector Gemm/MatMul left unquantized",
    "residual_add": "the residual (non-conv, or shortcut) input of each skip Add quantized "
                    "so the Add fuses into the conv",
}


@dataclass
class Placement:
    candidates: list[str]  # every Conv/ConvTranspose/Gemm/MatMul
    small_channels: list[str] = field(default_factory=list)
    gemv: list[str] = field(default_factory=list)
    residual: dict[str, str] = field(default_factory=dict)  # Add name -> its residual input

    def quantized(self, exclude=()) -> list[str]:
        """The weighted nodes that get Q/DQ on their inputs."""
        skip = set(self.small_channels) | set(self.gemv) | set(exclude)
        return [n for n in self.candidates if n not in skip]

    def as_dict(self) -> dict:
        return {"small_channels": {"rule": RULES["small_channels"], "nodes": self.small_channels},
                "gemv": {"rule": RULES["gemv"], "nodes": self.gemv},
                "residual_add": {"rule": RULES["residual_add"],
                                 "nodes": [{"add": a, "input": t} for a, t in
                                           self.residual.items()]}}


def _small_conv(node: onnx.NodeProto, shape: list[int], graph_inputs: set[str]) -> bool:
    """ModelOpt's Conv rule on the weight ``shape`` ([OC, IC/group, kh, kw])."""
    oc, ic = shape[0], shape[1]
    if oc >= MIN_CHANNELS and ic >= MIN_CHANNELS:
        return False
    kernel = list(attr(node, "kernel_shape", shape[2:]))
    if attr(node, "group", 1) == 1:
        first = any(i in graph_inputs for i in node.input)
        return not ((oc % 8 == 0 or ic % 8 == 0) and (first or max(oc, ic) >= MIN_CHANNELS)
                    and len(set(kernel)) == 1)
    return not (oc % 8 == 0 and all(k >= 3 for k in kernel))


def _dims(value_info) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]


def int8_placement(model: onnx.ModelProto) -> Placement:
    """The rules of the module docstring applied to ``model`` (nodes named)."""
    g = Graph(model)
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: _dims(v) for v in (*inferred.value_info, *inferred.output,
                                         *inferred.input)}
    inits = {i.name: list(i.dims) for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    placement = Placement([n.name for n in graph.node if n.op_type in QUANTIZED_OPS])
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and weight is not None and len(weight) >= 3:
            if _small_conv(node, weight, graph_inputs):
                placement.small_channels.append(node.name)
            continue
        if node.op_type in ("Gemm", "MatMul") and weight is not None and len(weight) == 2:
            k, n = weight[::-1] if node.op_type == "Gemm" and attr(node, "transB", 0) else weight
            if min(k, n) < MIN_CHANNELS:
                placement.small_channels.append(node.name)
                continue
        if node.op_type in ("Gemm", "MatMul"):
            out = shapes.get(node.output[0])
            if out is not None:
                last = [1 if d is None else d for d in out[-2:]]  # dynamic: batch 1
                # two activations: any vector operand; a weight: a [1, N] (batch-1) product
                gemv = (len(out) < 2 or 1 in last) if weight is None else \
                    (len(out) < 3 and 1 in last)
                if gemv:
                    placement.gemv.append(node.name)
    placement.residual = _residual_adds(g, graph_inputs | set(inits))
    return placement


def _residual_adds(g: Graph, constants: set[str]) -> dict[str, str]:
    graph, producer = g.graph, g.producer
    constants = constants | {o for n in graph.node if n.op_type == "Constant" for o in n.output}

    def conv_fed(t: str) -> bool:
        node, hops = producer.get(t), 0
        while node is not None and node.op_type in THROUGH and hops < 2:
            node, hops = producer.get(node.input[0]), hops + 1
        return node is not None and node.op_type in CONV

    def depths(t: str) -> dict[str, int]:
        """Distance (in nodes) from ``t`` back to each of its ancestors."""
        seen, frontier, d = {t: 0}, [t], 0
        while frontier:
            d += 1
            nxt = []
            for name in frontier:
                node = producer.get(name)
                for i in node.input if node is not None else ():
                    if i and i not in constants and i not in seen:
                        seen[i] = d
                        nxt.append(i)
            frontier = nxt
        return seen

    residual = {}
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        a, b = node.input
        if a in constants or b in constants:
            continue
        ca, cb = conv_fed(a), conv_fed(b)
        if ca != cb:
            residual[node.name] = b if ca else a
        elif ca and cb:
            da, db = depths(a), depths(b)
            common = set(da) & set(db)
            if common:
                lca = min(common, key=lambda t: da[t] + db[t])
                residual[node.name] = a if da[lca] < db[lca] else b
    return residual


def finish_placement(model: onnx.ModelProto, placement: Placement,
                     quantized: list[str]) -> int:
    """Edit ONNX Runtime's Q/DQ graph into the placement: it feeds every consumer of a
    quantized tensor from its DequantizeLinear and puts Q/DQ on both inputs of the Adds,
    so the weighted nodes left unquantized (rules, --exclude) and each Add's non-residual
    input read the original tensor again (ModelOpt does the same:
    ``classify_partially_quantized_weighted_ops``, ``remove_partial_input_qdq``).
    Weights a quantized node shares stay shared. Returns how many Adds take their
    residual input through Q/DQ."""
    g = Graph(model)
    inits = {i.name for i in model.graph.initializer}

    def original(name: str) -> str | None:
        """The tensor a DQ(Q(tensor)) pair re-creates, for an activation."""
        dq = g.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
            return None
        q = g.producer.get(dq.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None

    keep = set(quantized)
    count = 0
    for node in model.graph.node:
        residual = placement.residual.get(node.name)
        for k, name in enumerate(node.input):
            source = original(name)
            if source is None:
                continue
            if node.op_type in QUANTIZED_OPS and node.name not in keep:
                node.input[k] = source
            elif residual is not None:
                if source == residual:
                    count += 1
                else:
                    node.input[k] = source
    g.prune()
    return count
