"""Deploy passes: ONNX -> ONNX rewrites that work on any model's export.

The module swap table (``swaps.py``) only knows the classes it was written for; these
passes find the same constructs in the exported graph, whoever wrote the module. Each is
exact (the same function up to float rounding) and the export's parity check confirms
it on every model:

* ``hard_sigmoid``: ``Add(x, 3) -> Clip(0, 6) -> Div(6) | Mul(1/6)`` (``ReLU6(x + 3) / 6``)
  -> one ``HardSigmoid(alpha=1/6, beta=0.5)``;
* ``hard_swish``: ``Mul(x, HardSigmoid(x))`` in either order, and ``x * ReLU6(x + 3) / 6``
  written as ``Div(Mul(x, Clip(Add(x, 3))), 6)`` -> one ``HardSwish``;
* ``static_shapes``: Reshape / Expand / Tile targets computed at run time through
  ``Shape -> Gather/Slice -> Concat`` become constants when every other dimension is
  fixed; a dynamic batch becomes 0 (Reshape: copy the input's) or 1 (Expand: keep it);
* ``expand_before_broadcast``: an ``Expand`` whose only consumers are broadcasting
  elementwise ops that produce the expanded shape anyway is removed (ECA's
  ``expand_as``, the official CA code's ``x_h.expand(-1, -1, h, w)``).

An intermediate value is only folded into a fused op when nothing else reads it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from ..core.files import atomic_path
from ..core.onnx_io import attrs, load_onnx
from .view import AppliedPass, Dim, Graph, GraphPass, unique_name


# --- hard activations ---------------------------------------------------------------------
def _is(value: float | None, target: float, tol: float = 1e-6) -> bool:
    return value is not None and abs(value - target) <= tol * max(1.0, abs(target))


def _clip_bounds(g: Graph, clip: onnx.NodeProto) -> tuple[float | None, float | None]:
    if len(clip.input) > 1:  # opset >= 11: bounds are inputs ("" for none)
        lo = g.scalar(clip.input[1]) if clip.input[1] else None
        hi = g.scalar(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
        return lo, hi
    values = attrs(clip)
    return values.get("min"), values.get("max")


def _other(g: Graph, node: onnx.NodeProto, value: float) -> str | None:
    """The input of a binary ``node`` that is not the constant ``value``."""
    a, b = node.input
    if _is(g.scalar(b), value):
        return a
    if _is(g.scalar(a), value):
        return b
    return None


def _relu6_plus_3(g: Graph, name: str, reader: onnx.NodeProto
                  ) -> tuple[str, list[onnx.NodeProto]] | None:
    """``x`` and the nodes of ``Clip(Add(x, 3), 0, 6)`` producing ``name``, read by
    ``reader`` alone."""
    clip = g.producer.get(name)
    if clip is None or clip.op_type != "Clip" or not g.private(name, reader):
        return None
    lo, hi = _clip_bounds(g, clip)
    if not (_is(lo, 0.0) and _is(hi, 6.0)):
        return None
    add = g.producer.get(clip.input[0])
    if add is None or add.op_type != "Add" or not g.private(clip.input[0], clip):
        return None
    x = _other(g, add, 3.0)
    return (x, [add, clip]) if x is not None and g.const(x) is None else None


def _divided_by_6(g: Graph, node: onnx.NodeProto) -> str | None:
    """The dividend of ``Div(y, 6)`` or ``Mul(y, 1/6)``, else None."""
    if node.op_type == "Div" and _is(g.scalar(node.input[1]), 6.0):
        return node.input[0]
    if node.op_type == "Mul":
        return _other(g, node, 1.0 / 6.0)
    return None


def _rewrite(g: Graph, find: Callable[[onnx.NodeProto], tuple | None],
             make: Callable[[tuple], onnx.NodeProto]) -> int:
    """Replace every non-overlapping match of ``find`` (a tuple ending with the matched
    nodes) by ``make(match)``; the number replaced."""
    used: set[str] = set()
    swaps = []
    for node in g.graph.node:
        m = find(node)
        if m is None or any(n.name in used for n in m[-1]):
            continue
        used.update(n.name for n in m[-1])
        swaps.append((m[-1], make(m)))
    if swaps:
        g.replace_all(swaps)
    return len(swaps)


def _relu6_plus_3_over_6(g: Graph, node: onnx.NodeProto
                         ) -> tuple[str, list[onnx.NodeProto]] | None:
    """``x`` and the nodes of ``ReLU6(x + 3) / 6`` ending at ``node`` (Div or Mul)."""
    y = _divided_by_6(g, node)
    inner = _relu6_plus_3(g, y, node) if y is not None else None
    return (inner[0], [*inner[1], node]) if inner else None


def _hard_sigmoid_of(g: Graph, name: str, reader: onnx.NodeProto
                     ) -> tuple[str, list[onnx.NodeProto]] | None:
    """``x`` and the nodes computing ``name`` = h_sigmoid(x), read by ``reader`` alone:
    a HardSigmoid op (alpha 1/6, beta 0.5) or ``ReLU6(x + 3) / 6``."""
    node = g.producer.get(name)
    if node is None or not g.private(name, reader):
        return None
    if node.op_type == "HardSigmoid":
        values = attrs(node)
        ok = _is(values.get("alpha", 0.2), 1 / 6) and _is(values.get("beta", 0.5), 0.5)
        return (node.input[0], [node]) if ok else None
    return _relu6_plus_3_over_6(g, node)


def hard_sigmoid(g: Graph) -> int:
    def find(node):
        m = _relu6_plus_3_over_6(g, node)
        return (m[0], node.output[0], m[1]) if m else None

    return _rewrite(g, find, lambda m: helper.make_node(
        "HardSigmoid", [m[0]], [m[1]], name=unique_name(g, f"{m[1]}_hardsigmoid"),
        alpha=1.0 / 6.0, beta=0.5))


def hard_swish(g: Graph) -> int:
    def find(node):
        if node.op_type == "Mul":  # x * h_sigmoid(x), in either order
            for x, h in (node.input, node.input[::-1]):
                inner = _hard_sigmoid_of(g, h, node)
                if inner and inner[0] == x:
                    return (x, node.output[0], [*inner[1], node])
        y = _divided_by_6(g, node)  # (x * ReLU6(x + 3)) / 6
        mul = g.producer.get(y) if y is not None else None
        if mul is None or mul.op_type != "Mul" or not g.private(y, node):
            return None
        for x, r in (mul.input, mul.input[::-1]):
            inner = _relu6_plus_3(g, r, mul)
            if inner and inner[0] == x:
                return (x, node.output[0], [*inner[1], mul, node])
        return None

    return _rewrite(g, find, lambda m: helper.make_node(
        "HardSwish", [m[0]], [m[1]], name=unique_name(g, f"{m[1]}_hardswish")))


# --- shapes -------------------------------------------------------------------------------
ShapeValue = list[Dim]


def _shape_values(g: Graph) -> dict[str, ShapeValue | Dim]:
    """1-D (or scalar) integer tensors that shape arithmetic computes, evaluated with the
    graph's symbolic dimensions: elements are ints, dim_param strings, or None."""
    values: dict[str, ShapeValue | Dim] = {}

    def get(name: str):
        if name in values:
            return values[name]
        c = g.const(name)
        if c is not None and np.issubdtype(c.dtype, np.integer) and c.ndim <= 1:
            return [int(v) for v in c] if c.ndim else int(c)
        return None

    for node in g.graph.node:
        op, ins = node.op_type, [get(i) if i else None for i in node.input]
        node_attrs = attrs(node)
        out = None
        if op == "Shape" and node.input[0] in g.dims:
            dims = g.dims[node.input[0]]
            start, end = node_attrs.get("start", 0), node_attrs.get("end", len(dims))
            out = dims[start:end]
        elif op in ("Cast", "Identity") and ins[0] is not None:
            out = ins[0]
        elif op == "Gather" and isinstance(ins[0], list) and ins[1] is not None \
                and node_attrs.get("axis", 0) == 0:
            idx = ins[1]
            out = [ins[0][i] for i in idx] if isinstance(idx, list) else ins[0][idx]
        elif op == "Slice" and isinstance(ins[0], list) and all(
                isinstance(v, list) and len(v) == 1 for v in ins[1:3]) and \
                (len(ins) < 4 or ins[3] in (None, [0])) and \
                (len(ins) < 5 or ins[4] is None or ins[4] == [1]):
            out = ins[0][ins[1][0]:ins[2][0]]
        elif op == "Concat" and ins and all(isinstance(v, list) for v in ins):
            out = [d for v in ins for d in v]
        elif op == "Unsqueeze" and ins[0] is not None and not isinstance(ins[0], list):
            out = [ins[0]]
        elif op == "Squeeze" and isinstance(ins[0], list) and len(ins[0]) == 1:
            out = ins[0][0]
        elif op in ("Mul", "Add", "Sub", "Div") and len(ins) == 2 and \
                all(v is not None for v in ins):
            out = _arith(op, ins[0], ins[1])
        if out is not None:
            values[node.output[0]] = out
    return values


def _arith(op: str, a, b):
    """Elementwise integer arithmetic on shape values; symbols survive only * 1 / + 0."""
    def one(x: Dim, y: Dim) -> Dim:
        if isinstance(x, int) and isinstance(y, int):
            return {"Mul": x * y, "Add": x + y, "Sub": x - y,
                    "Div": x // y if y else None}[op]
        if op in ("Mul", "Div") and y == 1 or op in ("Add", "Sub") and y == 0:
            return x
        if op in ("Mul", "Add") and (x == 1 if op == "Mul" else x == 0):
            return y
        return None

    if isinstance(a, list) or isinstance(b, list):
        a = a if isinstance(a, list) else [a] * len(b)
        b = b if isinstance(b, list) else [b] * len(a)
        return [one(x, y) for x, y in zip(a, b)] if len(a) == len(b) else None
    return one(a, b)


def _constant_target(op: str, target: ShapeValue, data: list[Dim] | None) -> list[int] | None:
    """A constant target for Reshape/Expand/Tile equal to the computed ``target`` (for
    Reshape, a 0 means "copy the input's dimension": the caller sets allowzero=0)."""
    if any(d is None for d in target):
        return None
    if all(isinstance(d, int) for d in target):
        return list(target)
    if data is None or op == "Tile":
        return None
    if op == "Reshape":
        if 0 in target:
            return None  # a 0 already there: literal or copy, leave it alone
        out = []
        for i, d in enumerate(target):
            if isinstance(d, int):
                out.append(d)
            elif i < len(data) and data[i] == d:
                out.append(0)  # copy the input's (symbolic) dimension
            else:
                out.append(-1)
        return out if out.count(-1) <= 1 else None
    # Expand: a symbolic size the input already has at that (right-aligned) axis stays
    offset = len(target) - len(data)
    out = []
    for i, d in enumerate(target):
        j = i - offset
        if isinstance(d, int):
            out.append(d)
        elif 0 <= j < len(data) and data[j] == d:
            out.append(1)
        else:
            return None
    return out


def static_shapes(g: Graph) -> int:
    values = _shape_values(g)
    count = 0
    for node in g.graph.node:
        if node.op_type not in ("Reshape", "Expand", "Tile") or len(node.input) < 2:
            continue
        name = node.input[1]
        target = values.get(name)
        if not isinstance(target, list) or g.const(name) is not None:
            continue
        new = _constant_target(node.op_type, target, g.dims.get(node.input[0]))
        if new is None:
            continue
        node.input[1] = g.add_const(np.array(new, np.int64), node.name or node.op_type)
        if 0 in new:  # deploy: 0 copies the (dynamic) batch only with allowzero=0
            for a in node.attribute:
                if a.name == "allowzero":
                    a.i = 0
        count += 1
    if count:
        g.prune()
    return count


ELEMENTWISE = ("Add", "Sub", "Mul", "Div")


def _broadcast(a: list[Dim], b: list[Dim]) -> list[Dim] | None:
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + list(a), [1] * (n - len(b)) + list(b)
    out: list[Dim] = []
    for x, y in zip(a, b):
        if x is None or y is None:
            return None
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return out


def expand_before_broadcast(g: Graph) -> int:
    count = 0
    for node in list(g.graph.node):
        if node.op_type != "Expand":
            continue
        src, out = node.input[0], node.output[0]
        users = g.consumers.get(out, [])
        target = g.const(node.input[1])
        expanded = g.dims.get(out)
        if target is not None and src in g.dims and (expanded is None or None in expanded):
            expanded = _broadcast(g.dims[src], [int(d) for d in target])
        if out in g.outputs or not users or src not in g.dims or expanded is None:
            continue
        ok = True
        for user in users:
            others = [i for i in user.input if i != out]
            if user.op_type not in ELEMENTWISE or len(others) != 1 or others[0] not in g.dims:
                ok = False
                break
            other = g.dims[others[0]]
            with_expand, without = _broadcast(other, expanded), _broadcast(other, g.dims[src])
            if with_expand is None or with_expand != without:
                ok = False
                break
        if not ok:
            continue
        for user in users:
            for k, name in enumerate(user.input):
                if name == out:
                    user.input[k] = src
        count += 1
    if count:
        g.prune()
    return count


PASSES = (  # hard_swish first, so each count is the number of ops made
    GraphPass("hard_swish", hard_swish, True,
              "x * ReLU6(x + 3) / 6 (or x * HardSigmoid(x)) -> one HardSwish op"),
    GraphPass("hard_sigmoid", hard_sigmoid, True,
              "ReLU6(x + 3) / 6 (Add, Clip, Div or Mul) -> one HardSigmoid op (alpha 1/6)"),
    GraphPass("static_shapes", static_shapes, True,
              "Reshape/Expand/Tile targets computed from Shape -> constants (batch kept "
              "dynamic as 0 / 1)"),
    GraphPass("expand_before_broadcast", expand_before_broadcast, True,
              "Expand feeding only broadcasting Add/Sub/Mul/Div that reach its shape anyway "
              "-> removed"),
)


def apply_passes(model: onnx.ModelProto,
                 passes: tuple[GraphPass, ...] = PASSES) -> list[AppliedPass]:
    """Run ``passes`` in order on ``model`` (in place); the passes that rewrote anything."""
    g = Graph(model)
    applied = []
    for p in passes:
        count = p.run(g)
        if count:
            applied.append(AppliedPass(p.name, count, p.exact, p.note))
    if applied:
        g.prune()  # the constants the fused patterns used
    return applied


def rewrite_onnx(src: str | Path, dst: str | Path) -> list[AppliedPass]:
    """``src`` with every graph pass applied, written to ``dst`` and validated."""
    model = load_onnx(src)
    applied = apply_passes(model)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
        load_onnx(tmp)
    return applied
