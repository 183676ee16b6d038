"""Graph passes on hand-built ONNX graphs: each pattern is rewritten (and computes the
same on ONNX Runtime), and each near miss is left alone."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy_attn.core.onnx_io import shape_ops
from deploy_attn.graph.passes import apply_passes

FLOAT = TensorProto.FLOAT


def _const(name: str, value) -> onnx.TensorProto:
    arr = np.asarray(value)
    return numpy_helper.from_array(arr.astype(np.int64 if arr.dtype.kind == "i" else np.float32),
                                   name)


def _model(nodes, inputs, inits=(), output="y") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output, FLOAT, None)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _rewrite(model: onnx.ModelProto, feeds: list[dict]):
    """The rewritten copy, the passes applied, op counts before/after; checks the copy is
    a valid model computing the same outputs (max abs error reported)."""
    before = onnx.ModelProto()
    before.CopyFrom(model)
    applied = {p.name: p.count for p in apply_passes(model)}
    onnx.checker.check_model(model, full_check=True)
    for feed in feeds:
        ref, out = _run(before, feed), _run(model, feed)
        err = float(np.abs(ref - out).max())
        assert ref.shape == out.shape and err <= 1e-6, f"max abs {err:.2e}: {applied}"
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return applied, ops


X = np.linspace(-5, 5, 2 * 4 * 3 * 3, dtype=np.float32).reshape(2, 4, 3, 3)  # covers both knees
SHAPE = [2, 4, 3, 3]
HARD_CONSTS = [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0),
               _const("sixth", 1 / 6), _const("five", 5.0), _const("two", 2.0)]


def _hsig(x: str, out: str, add="three", hi="six", div=("Div", "six"), tag="") -> list:
    op, const = div
    return [helper.make_node("Add", [x, add], [f"a{tag}"]),
            helper.make_node("Clip", [f"a{tag}", "zero", hi], [f"c{tag}"]),
            helper.make_node(op, [f"c{tag}", const], [out])]


@pytest.mark.parametrize("div", [("Div", "six"), ("Mul", "sixth")], ids=["div6", "mul1/6"])
def test_hard_sigmoid(div):
    model = _model(_hsig("x", "y", div=div), [("x", SHAPE)], HARD_CONSTS)
    applied, ops = _rewrite(model, [{"x": X}])
    assert applied == {"hard_sigmoid": 1} and ops == {"HardSigmoid": 1}
    attrs = {a.name: a.f for a in model.graph.node[0].attribute}
    assert attrs["alpha"] == pytest.approx(1 / 6) and attrs["beta"] == 0.5
    assert not model.graph.initializer, "the pattern's constants are pruned"


@pytest.mark.parametrize("form", ["x*hsig(x)", "hsig(x)*x", "x*relu6(x+3)/6", "torch_hardsigmoid"])
def test_hard_swish(form):
    if form == "x*relu6(x+3)/6":
        nodes = [helper.make_node("Add", ["three", "x"], ["a"]),  # constant on the left
                 helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                 helper.make_node("Mul", ["x", "c"], ["m"]),
                 helper.make_node("Div", ["m", "six"], ["y"])]
    elif form == "torch_hardsigmoid":
        nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5),
                 helper.make_node("Mul", ["h", "x"], ["y"])]
    else:
        order = ["x", "h"] if form == "x*hsig(x)" else ["h", "x"]
        nodes = _hsig("x", "h") + [helper.make_node("Mul", order, ["y"])]
    model = _model(nodes, [("x", SHAPE)], HARD_CONSTS)
    applied, ops = _rewrite(model, [{"x": X}])
    assert applied == {"hard_swish": 1} and ops == {"HardSwish": 1}, (applied, ops)


@pytest.mark.parametrize("miss", ["div5", "clip0-5", "add2", "clip_read_twice",
                                  "gate_of_other_tensor", "onnx_default_alpha"])
def test_hard_activation_near_misses_are_left_alone(miss):
    inputs = [("x", SHAPE)]
    if miss == "div5":  # Add 3 -> Clip(0, 6) -> Div 5: not h_sigmoid
        nodes = _hsig("x", "y", div=("Div", "five"))
    elif miss == "clip0-5":
        nodes = _hsig("x", "y", hi="five")
    elif miss == "add2":
        nodes = _hsig("x", "y", add="two")
    elif miss == "clip_read_twice":  # the Clip's output is also used elsewhere
        nodes = _hsig("x", "h") + [helper.make_node("Add", ["h", "c"], ["y"])]
    elif miss == "gate_of_other_tensor":  # z * h_sigmoid(x) is a gate, not h_swish
        inputs.append(("z", SHAPE))
        nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5),
                 helper.make_node("Mul", ["z", "h"], ["y"])]
    else:  # ONNX's default HardSigmoid (alpha 0.2) times x is not HardSwish
        nodes = [helper.make_node("HardSigmoid", ["x"], ["h"]),
                 helper.make_node("Mul", ["x", "h"], ["y"])]
    model = _model(nodes, inputs, HARD_CONSTS)
    before = collections.Counter(n.op_type for n in model.graph.node)
    feeds = {"x": X, "z": X[::-1].copy()} if miss == "gate_of_other_tensor" else {"x": X}
    applied, ops = _rewrite(model, [feeds])
    assert applied == {} and ops == before, (applied, ops)


def _dynamic_gate_graph(expand_other: str = "x"):
    """ECA's pattern with a dynamic batch: a [N, 4, 1, 1] gate expanded to x's shape
    (read at run time with Shape -> Concat), multiplied with ``expand_other``."""
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["g"], keepdims=1),
             helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("Shape", ["x"], ["n"], start=0, end=1),
             helper.make_node("Concat", ["n", "c", "hw", "hw"], ["target"], axis=0),
             helper.make_node("Expand", ["s", "target"], ["e"]),
             helper.make_node("Mul", [expand_other, "e"], ["y"])]
    inits = [_const("axes", [2, 3]), _const("c", [4]), _const("hw", [3])]
    return nodes, inits


def test_static_shapes_and_expand_before_broadcast():
    nodes, inits = _dynamic_gate_graph()
    model = _model(nodes, [("x", ["batch", 4, 3, 3])], inits)
    assert shape_ops(model)
    feeds = [{"x": np.random.default_rng(b).standard_normal((b, 4, 3, 3), np.float32)}
             for b in (1, 3)]
    applied, ops = _rewrite(model, feeds)
    assert applied == {"static_shapes": 1, "expand_before_broadcast": 1}
    assert shape_ops(model) == [] and "Expand" not in ops and "Shape" not in ops


def test_expand_is_kept_where_the_broadcast_needs_it():
    """Mul(e, s) with s [N, 4, 1, 1]: without the Expand the product would be [N, 4, 1, 1]."""
    nodes, inits = _dynamic_gate_graph(expand_other="s")
    model = _model(nodes, [("x", ["batch", 4, 3, 3])], inits)
    feeds = [{"x": np.random.default_rng(b).standard_normal((b, 4, 3, 3), np.float32)}
             for b in (1, 2)]
    applied, ops = _rewrite(model, feeds)
    assert applied == {"static_shapes": 1} and ops["Expand"] == 1
    target = next(n for n in model.graph.node if n.op_type == "Expand").input[1]
    init = next(i for i in model.graph.initializer if i.name == target)
    assert numpy_helper.to_array(init).tolist() == [1, 4, 3, 3]  # batch kept by broadcasting


RESHAPE_TARGETS = {
    # GroupNorm's export: g's batch is unknown (the -1 of the first Reshape), not Shape(x)'s
    # "batch", so the constant target infers it
    "infers": ([helper.make_node("Reshape", ["x", "flat"], ["f"], allowzero=1),
                helper.make_node("Neg", ["f"], ["g"]),
                helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Reshape", ["g", "s"], ["y"])],
               [_const("flat", [-1, 4, 9])], [-1, 4, 3, 3]),
    # the data has x's symbolic batch: the target copies it (0), which is a copy only with
    # allowzero 0 (with 1 it would be a literal 0 and the Reshape would fail)
    "copies": ([helper.make_node("Neg", ["x"], ["g"]),
                helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Reshape", ["g", "s"], ["y"], allowzero=1)],
               [], [0, 4, 3, 3]),
}


@pytest.mark.parametrize("case", list(RESHAPE_TARGETS))
def test_reshape_target_from_shape_keeps_a_dynamic_batch(case):
    """Reshape(data, Shape(x)) becomes a constant target whose batch entry copies (0, with
    allowzero 0) or infers (-1) the dynamic batch; ONNX Runtime runs it at batch 1 and 5."""
    nodes, inits, expected = RESHAPE_TARGETS[case]
    model = _model(nodes, [("x", ["batch", 4, 3, 3])], inits)
    feeds = [{"x": np.random.default_rng(b).standard_normal((b, 4, 3, 3), np.float32)}
             for b in (1, 5)]
    applied, _ = _rewrite(model, feeds)
    assert applied == {"static_shapes": 1} and shape_ops(model) == []
    last = model.graph.node[-1]
    target = next(i for i in model.graph.initializer if i.name == last.input[1])
    assert numpy_helper.to_array(target).tolist() == expected
    assert [a.i for a in last.attribute if a.name == "allowzero"] in ([], [0])


def test_shape_of_an_unknown_size_is_left_alone():
    """A target read from a tensor whose size only the data decides (NonZero) stays."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]),
             helper.make_node("Shape", ["nz"], ["s"], start=1, end=2),
             helper.make_node("Concat", ["s", "one"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "flat"], ["f"]),
             helper.make_node("Slice", ["f", "zero", "s", "zero"], ["sl"]),
             helper.make_node("Reshape", ["sl", "target"], ["y"])]
    model = _model(nodes, [("x", [1, 4, 3, 3])],
                   [_const("one", [1]), _const("zero", [0]), _const("flat", [-1])])
    applied, ops = _rewrite(model, [{"x": X[:1]}])
    assert applied == {} and ops["Shape"] == 1
