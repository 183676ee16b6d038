"""Graph forms for CPU runtimes: exact ONNX -> ONNX rewrites that a CPU target's graph may
take where the TensorRT graph (``model.onnx``) keeps its own form. Which of them a target
gets is chosen by timing them on that target's runtime (``choose_forms``).

* ``axis_pool``: a one-axis ``ReduceMean`` / ``ReduceMax`` over H or W of a 4-D tensor of
  fixed size -> ``AveragePool`` / ``MaxPool`` with kernel [H, 1] or [1, W]. CPU runtimes
  run pooling in their blocked layouts and a one-axis reduction in plain NCHW; the pool
  kernel holds at the exported spatial size only, the ReduceMean at any.
* ``global_pool``: ``ReduceMean`` / ``ReduceMax`` over [2, 3] -> ``GlobalAveragePool`` /
  ``GlobalMaxPool``.
* ``unsplit``: ``Concat(a, b, ...)`` -> ops that act on each position of the concatenated
  axis alone (1x1 convolutions, BatchNorm, activations, per-channel constants) ->
  ``Split`` at the same boundaries becomes one copy of those ops per input, and a
  ``Transpose`` of H and W that the copy brings next to its inverse cancels out
  (Coordinate Attention's pool -> concat -> conv -> split -> permute round trip).
* ``gate_product``: ``x * a * b`` with two broadcast gates (CA's ``x * a_w * a_h``) ->
  ``x * (a * b)``.
* ``max_after_qdq``: ``ReduceMax -> QuantizeLinear -> DequantizeLinear`` (per-tensor) ->
  ``QuantizeLinear -> DequantizeLinear -> ReduceMax``: the max of the quantized values is
  the quantized max (rounding and clipping are monotone), so it is exact to the bit. Not a
  speed form: OpenVINO 2026.4's CPU plugin computes the first order wrongly (CBAM's
  channel max, quantized, came out rounded to whole units: unet_cbam cosine 0.986, and
  0.96 on the digits), and the second as ONNX Runtime does.

Each is the same function up to float rounding; the export checks every target file
against PyTorch.
"""
from __future__ import annotations

from typing import Callable

import onnx
from onnx import helper

from ..core.onnx_io import attrs
from .passes import apply_passes
from .view import Graph, GraphPass, unique_name

POOLS = {"ReduceMean": ("AveragePool", "GlobalAveragePool"),
         "ReduceMax": ("MaxPool", "GlobalMaxPool")}
# ops that compute each element from the same position of their (first) input alone
UNARY = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu",
         "Elu", "Selu", "Softplus", "Mish", "Gelu", "Neg", "Abs", "Exp", "Identity", "Cast"}
BINARY = {"Add", "Sub", "Mul", "Div"}


def _reduce_axes(g: Graph, node: onnx.NodeProto) -> list[int] | None:
    """The normalised axes of a keepdims ReduceMean/ReduceMax of a 4-D input, or None."""
    if node.op_type not in POOLS or attrs(node).get("keepdims", 1) != 1:
        return None
    axes = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    axes = axes.tolist() if axes is not None else attrs(node).get("axes")
    dims = g.dims.get(node.input[0])
    if axes is None or dims is None or len(dims) != 4:
        return None
    return sorted(a % 4 for a in axes)


def _pools(g: Graph, pick: Callable[[onnx.NodeProto, list[int]], onnx.NodeProto | None]
           ) -> int:
    swaps = []
    for node in g.graph.node:
        axes = _reduce_axes(g, node)
        new = pick(node, axes) if axes is not None else None
        if new is not None:
            swaps.append(([node], new))
    if swaps:
        g.replace_all(swaps)
        g.prune()
    return len(swaps)


def axis_pool(g: Graph) -> int:
    def pick(node, axes):
        size = g.dims[node.input[0]]
        if axes not in ([2], [3]) or not isinstance(size[axes[0]], int):
            return None
        kernel = [size[2], 1] if axes == [2] else [1, size[3]]
        return helper.make_node(POOLS[node.op_type][0], [node.input[0]], list(node.output),
                                name=unique_name(g, node.name + "_pool"),
                                kernel_shape=kernel)

    return _pools(g, pick)


def global_pool(g: Graph) -> int:
    def pick(node, axes):
        if axes != [2, 3]:
            return None
        return helper.make_node(POOLS[node.op_type][1], [node.input[0]], list(node.output),
                                name=unique_name(g, node.name + "_pool"))

    return _pools(g, pick)


def _positionwise(g: Graph, node: onnx.NodeProto, value: str) -> bool:
    """Whether ``node`` computes each spatial position of ``value`` from that position
    alone (so it commutes with a Concat/Split along H or W and with an H/W Transpose)."""
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):  # per tensor or per channel
        scale = g.const(node.input[1])
        return (node.input[0] == value and scale is not None and
                (scale.size == 1 or attrs(node).get("axis", 1) % 4 == 1))
    if node.op_type in UNARY:
        return node.input[0] == value and all(g.const(i) is not None for i in node.input[1:]
                                              if i)
    if node.op_type == "BatchNormalization":
        return node.input[0] == value and len(node.output) == 1
    if node.op_type == "Conv":
        a = attrs(node)
        weight = g.dims.get(node.input[1])
        return (node.input[0] == value and weight is not None and weight[2:] == [1, 1]
                and set(a.get("strides", [1, 1])) == {1} and not any(a.get("pads", [0]))
                and a.get("auto_pad", "NOTSET") == "NOTSET")
    if node.op_type in BINARY and value in node.input:
        other = [i for i in node.input if i != value]
        const = g.const(other[0]) if len(other) == 1 else None
        # a constant the same at every spatial position: a scalar or per channel
        return const is not None and (const.size == 1 or (
            const.ndim == 4 and const.shape[2] == const.shape[3] == 1) or (
            const.ndim == 3 and const.shape[1] == const.shape[2] == 1))
    return False


def _chain(g: Graph, start: str, stop: Callable[[onnx.NodeProto], bool]
           ) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The position-wise nodes reading ``start`` one after the other, each read by the next
    alone, up to the first node ``stop`` accepts: (chain, that node), else None."""
    nodes, value = [], start
    while True:
        users = g.consumers.get(value, [])
        if len(users) != 1 or value in g.outputs:
            return None
        node = users[0]
        if stop(node):
            return nodes, node
        if not _positionwise(g, node, value):
            return None
        nodes.append(node)
        value = node.output[0]


def _copy(g: Graph, node: onnx.NodeProto, source: str, old: str, tag: str
          ) -> onnx.NodeProto:
    """``node`` reading ``source`` where it read ``old``, with fresh output names."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.name = unique_name(g, f"{node.name}_{tag}")
    del new.input[:]
    new.input.extend(source if i == old else i for i in node.input)
    del new.output[:]
    new.output.append(unique_name(g, f"{node.output[0]}_{tag}"))
    return new


def _split_sizes(g: Graph, split: onnx.NodeProto) -> list[int] | None:
    sizes = g.const(split.input[1]) if len(split.input) > 1 and split.input[1] else None
    sizes = sizes.tolist() if sizes is not None else attrs(split).get("split")
    return [int(s) for s in sizes] if sizes is not None else None


def unsplit(g: Graph) -> int:
    count = 0
    for concat in list(g.graph.node):
        if concat.op_type != "Concat":  # only the matched Concat goes, never a later one
            continue
        inputs, out = list(concat.input), concat.output[0]
        shapes = [g.dims.get(i) for i in inputs]
        if len(inputs) < 2 or any(s is None or len(s) != 4 for s in shapes):
            continue
        axis = attrs(concat)["axis"] % 4
        sizes = [s[axis] for s in shapes]
        found = _chain(g, out, lambda n: n.op_type == "Split")
        if axis not in (2, 3) or found is None or not all(isinstance(s, int) for s in sizes):
            continue
        chain, split = found
        if attrs(split).get("axis", 0) % 4 != axis or _split_sizes(g, split) != sizes:
            continue
        new_nodes = []
        for k, (src, dst) in enumerate(zip(inputs, split.output)):
            value, old = src, out
            for node in chain:
                copy = _copy(g, node, value, old, f"u{k}")
                new_nodes.append(copy)
                value, old = copy.output[0], node.output[0]
            for user in g.consumers.get(dst, []):  # Split's readers read the copy's end
                user.input[:] = [value if i == dst else i for i in user.input]
            if dst in g.outputs:
                new_nodes.append(helper.make_node("Identity", [value], [dst],
                                                  name=unique_name(g, dst + "_out")))
        gone = {concat.name, split.name, *(n.name for n in chain)}
        index = min(i for i, n in enumerate(g.graph.node) if n.name in gone)
        kept = [n for n in g.graph.node if n.name not in gone]
        del g.graph.node[:]
        g.graph.node.extend(kept[:index] + new_nodes + kept[index:])
        g.reindex()
        count += 1
    if count:
        count += _cancel_transposes(g)
        _infer(g)
    return count


def _hw_swap(node: onnx.NodeProto) -> bool:
    return node.op_type == "Transpose" and attrs(node).get("perm") == [0, 1, 3, 2]


def _cancel_transposes(g: Graph) -> int:
    """Transpose(H<->W) -> position-wise ops -> Transpose(H<->W): both transposes go (the
    ops between them act on each position alone, so they commute with the swap)."""
    removed: set[str] = set()
    for first in list(g.graph.node):
        if not _hw_swap(first) or first.name in removed:
            continue
        found = _chain(g, first.output[0], _hw_swap)
        if found is None or found[1].output[0] in g.outputs:  # a graph output keeps its name
            continue
        chain, second = found
        end = chain[-1].output[0] if chain else first.input[0]
        if chain:
            chain[0].input[:] = [first.input[0] if i == first.output[0] else i
                                 for i in chain[0].input]
        for user in g.consumers.get(second.output[0], []):
            user.input[:] = [end if i == second.output[0] else i for i in user.input]
        removed |= {first.name, second.name}
        kept = [n for n in g.graph.node if n.name not in removed]
        del g.graph.node[:]
        g.graph.node.extend(kept)
        g.reindex()
    return len(removed) // 2


def _infer(g: Graph) -> None:
    inferred = onnx.shape_inference.infer_shapes(g.model)
    g.model.graph.ClearField("value_info")
    g.model.graph.value_info.extend(inferred.graph.value_info)
    g.reindex()


def _small(dims: list | None) -> bool:
    """A broadcast gate: a 4-D tensor with a 1 in H or W (or both)."""
    return dims is not None and len(dims) == 4 and (dims[2] == 1 or dims[3] == 1)


def gate_product(g: Graph) -> int:
    swaps = []
    used: set[str] = set()
    for outer in g.graph.node:
        if outer.op_type != "Mul" or outer.name in used:
            continue
        for inner_name, b in (outer.input, outer.input[::-1]):
            inner = g.producer.get(inner_name)
            if inner is None or inner.op_type != "Mul" or not g.private(inner_name, outer) \
                    or not _small(g.dims.get(b)) or inner.name in used:
                continue
            x, a = next(((x, a) for x, a in (inner.input, inner.input[::-1])
                         if _small(g.dims.get(a)) and not _small(g.dims.get(x))), (None, None))
            if x is None:
                continue
            gate = unique_name(g, inner_name + "_gates")
            swaps.append(([inner], helper.make_node("Mul", [a, b], [gate], name=gate)))
            outer.input[:] = [x, gate]
            used.update((inner.name, outer.name))
            break
    if swaps:
        g.replace_all(swaps)
        _infer(g)
    return len(swaps)


def _max_before_qdq(g: Graph) -> tuple[onnx.NodeProto, ...] | None:
    """The first ReduceMax read by one per-tensor Q alone, read by one DQ alone."""
    for reduce in g.graph.node:
        if reduce.op_type != "ReduceMax" or reduce.output[0] in g.outputs:
            continue
        users = g.consumers.get(reduce.output[0], [])
        q = users[0] if len(users) == 1 else None
        if q is None or q.op_type != "QuantizeLinear" or q.output[0] in g.outputs:
            continue
        scale, dqs = g.const(q.input[1]), g.consumers.get(q.output[0], [])
        if scale is not None and scale.size == 1 and len(dqs) == 1 \
                and dqs[0].op_type == "DequantizeLinear":
            return reduce, q, dqs[0]
    return None


def max_after_qdq(g: Graph) -> int:
    count = 0
    while (site := _max_before_qdq(g)) is not None:
        reduce, q, dq = site
        quantized = unique_name(g, reduce.input[0] + "_quantized")
        rounded = unique_name(g, reduce.input[0] + "_rounded")
        q.input[0], q.output[0] = reduce.input[0], quantized
        dq.input[0], reduce.output[0], dq.output[0] = quantized, dq.output[0], rounded
        reduce.input[0] = rounded
        nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in g.graph.node]
        pair = [n for n in nodes if n.output[0] in (quantized, rounded)]
        order = [n for n in nodes if n.output[0] not in (quantized, rounded)]
        index = next(i for i, n in enumerate(order) if n.input and n.input[0] == rounded)
        del g.graph.node[:]
        g.graph.node.extend(order[:index] + pair + order[index:])
        g.reindex()
        count += 1
    if count:
        _infer(g)
    return count


def _concat_before_q(g: Graph) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """The first Concat read by one per-tensor QuantizeLinear alone (not a graph output)."""
    for concat in g.graph.node:
        if concat.op_type != "Concat" or concat.output[0] in g.outputs:
            continue
        users = g.consumers.get(concat.output[0], [])
        q = users[0] if len(users) == 1 else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] != concat.output[0]:
            continue
        scale = g.const(q.input[1])
        if scale is not None and scale.size == 1:
            return concat, q
    return None


def quantized_concat(g: Graph) -> int:
    """Concat -> Q becomes one Q per input (the same scale and zero point) -> Concat of
    the integers: Q is elementwise, so every value is the same to the bit."""
    count = 0
    while (site := _concat_before_q(g)) is not None:
        concat, q = site
        qs = []
        for i, name in enumerate(concat.input):
            out = unique_name(g, f"{name}_quantized")
            qs.append(helper.make_node("QuantizeLinear", [name, *q.input[1:]], [out],
                                       name=out, **attrs(q)))
            concat.input[i] = out
        old = concat.output[0]
        concat.output[0] = q.output[0]
        nodes = list(g.graph.node)
        at = nodes.index(concat)
        kept = [n for n in nodes[:at] + qs + nodes[at:] if n is not q]
        del g.graph.node[:]
        g.graph.node.extend(kept)
        kept_info = [v for v in g.graph.value_info if v.name not in (old, q.output[0])]
        g.graph.ClearField("value_info")
        g.graph.value_info.extend(kept_info)
        g.reindex()
        count += 1
    if count:
        _infer(g)
    return count


FORMS = (
    GraphPass("max_after_qdq", max_after_qdq, True,
              "ReduceMax -> Q -> DQ (per-tensor) -> Q -> DQ -> ReduceMax, exact to the bit "
              "(OpenVINO's CPU plugin miscomputes the first order)"),
    GraphPass("quantized_concat", quantized_concat, True,
              "Concat -> Q (per-tensor) -> one Q per input -> Concat of the integers, "
              "exact to the bit (OpenVINO's CPU plugin miscomputes the first order "
              "without AMX)"),
    GraphPass("axis_pool", axis_pool, True,
              "one-axis ReduceMean/ReduceMax over H or W at the exported size -> "
              "AveragePool/MaxPool"),
    GraphPass("global_pool", global_pool, True,
              "ReduceMean/ReduceMax over H and W -> GlobalAveragePool/GlobalMaxPool"),
    GraphPass("unsplit", unsplit, True,
              "Concat -> position-wise ops -> Split round trip -> one copy per input (and "
              "the H/W transposes it leaves back to back removed)"),
    GraphPass("gate_product", gate_product, True,
              "x * a * b with two broadcast gates -> x * (a * b)"),
)
FORM_NAMES = tuple(f.name for f in FORMS)


def apply_forms(model: onnx.ModelProto, names: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Apply the named forms to ``model`` (in place, in FORMS order); rewrites per form."""
    unknown = set(names) - set(FORM_NAMES)
    if unknown:
        raise ValueError(f"unknown graph form(s): {', '.join(sorted(unknown))}")
    model.CopyFrom(onnx.shape_inference.infer_shapes(model))  # the forms read shapes
    applied = apply_passes(model, tuple(f for f in FORMS if f.name in names))
    return {f: 0 for f in FORM_NAMES if f in names} | {a.name: a.count for a in applied}
