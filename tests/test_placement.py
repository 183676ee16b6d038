"""INT8 placement rules (placement.py) on small graphs: each rule, and a near miss it
must leave alone."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy_attn.precision.calib import CalibData
from deploy_attn.precision.int8 import quantize_int8
from deploy_attn.precision.placement import int8_placement

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.2).astype(np.float32), name)


def _model(nodes, inits, shape=(1, 16, 8, 8), output="y") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, list(shape))],
                              [helper.make_tensor_value_info(output, FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model)


def conv(name, x, y, w, group=1, kernel=1):
    return helper.make_node("Conv", [x, w], [y], name=name, group=group,
                            kernel_shape=[kernel, kernel] if isinstance(kernel, int) else kernel,
                            pads=[(kernel - 1) // 2] * 4 if isinstance(kernel, int) else [0] * 4)


def test_small_channel_convs_stay_unquantized():
    """12 -> 12 and 4 -> 4 channels (under 16 and not a multiple of 8) and ECA's 1 -> 1
    (3, 1) conv are left out."""
    nodes = [conv("squeeze", "x", "a", "w1"), conv("twelve", "a", "b", "w2"),
             conv("four", "b", "c", "w3"), conv("eca_like", "c", "y", "w4", kernel=[3, 1])]
    inits = [_w("w1", 12, 16, 1, 1), _w("w2", 12, 12, 1, 1), _w("w3", 1, 12, 1, 1),
             _w("w4", 1, 1, 3, 1)]
    placement = int8_placement(_model(nodes, inits))
    assert placement.small_channels == ["twelve", "four", "eca_like"]
    assert placement.quantized() == ["squeeze"]  # 16 -> 12: the input side is a multiple of 8


def test_convs_tensorrt_quantizes_well_are_kept():
    """Near misses: 32 -> 8 (a multiple of 8, the other side >= 16, square kernel, as in
    CA's squeeze), 8 -> 64, a 3x3 depthwise conv over 32 channels, and the first layer
    (3 -> 32 on the graph input)."""
    nodes = [conv("stem", "x", "a", "w0", kernel=3), conv("dw", "a", "b", "w1", group=32, kernel=3),
             conv("squeeze", "b", "c", "w2"), conv("expand", "c", "y", "w3")]
    inits = [_w("w0", 32, 3, 3, 3), _w("w1", 32, 1, 3, 3), _w("w2", 8, 32, 1, 1),
             _w("w3", 64, 8, 1, 1)]
    placement = int8_placement(_model(nodes, inits, (1, 3, 8, 8)))
    assert placement.small_channels == [] and placement.quantized() == ["stem", "dw", "squeeze",
                                                                        "expand"]


def _gemm_model(batch: int, out: int = 32) -> onnx.ModelProto:
    return _model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                  [_w("w", out, 64)], (batch, 64))


def test_batch1_matrix_vector_gemm_stays_unquantized():
    assert int8_placement(_gemm_model(1)).gemv == ["fc"]


def test_gemm_near_misses():
    """At batch 4 the Gemm is a matrix product (quantized); with 8 outputs it is a small
    Gemm (the channel rule, not GEMV)."""
    assert int8_placement(_gemm_model(4)).quantized() == ["fc"]
    small = int8_placement(_gemm_model(4, out=8))
    assert small.small_channels == ["fc"] and small.gemv == []


def test_matrix_vector_matmul_of_two_activations():
    nodes = [helper.make_node("MatMul", ["x", "v"], ["y"], name="mv"),
             helper.make_node("MatMul", ["x", "m"], ["z"], name="mm")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", FLOAT, [2, 4, 16]),
                     helper.make_tensor_value_info("v", FLOAT, [2, 16, 1]),
                     helper.make_tensor_value_info("m", FLOAT, [2, 16, 8])],
        [helper.make_tensor_value_info("y", FLOAT, None),
         helper.make_tensor_value_info("z", FLOAT, None)])
    placement = int8_placement(onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])))
    assert placement.gemv == ["mv"] and placement.quantized() == ["mm"]


def _block(kind: str) -> onnx.ModelProto:
    """A residual block: identity skip, downsample conv shortcut, SE-gated main branch
    (resnet50_se's downsample Adds), or an Add of two plain tensors."""
    nodes = [helper.make_node("Relu", ["x"], ["xr"]),  # the block input (not the graph's)
             conv("c1", "xr", "a", "w1", kernel=3), helper.make_node("Relu", ["a"], ["r"]),
             conv("c2", "r", "m", "w2", kernel=3)]
    inits = [_w("w1", 16, 16, 3, 3), _w("w2", 16, 16, 3, 3)]
    if kind == "identity":
        nodes.append(helper.make_node("Add", ["m", "xr"], ["y"], name="add"))
    elif kind == "downsample":
        nodes += [conv("down", "xr", "s", "w3"), helper.make_node("Add", ["m", "s"], ["y"],
                                                                  name="add")]
        inits.append(_w("w3", 16, 16, 1, 1))
    elif kind == "se":
        nodes += [helper.make_node("ReduceMean", ["m", "axes"], ["p"], keepdims=1),
                  helper.make_node("Sigmoid", ["p"], ["g"]),
                  helper.make_node("Mul", ["m", "g"], ["gated"]),
                  conv("down", "xr", "s", "w3"),
                  helper.make_node("Add", ["gated", "s"], ["y"], name="add")]
        inits += [_w("w3", 16, 16, 1, 1),
                  numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    else:  # no conv on either side
        nodes += [helper.make_node("Neg", ["m"], ["n"]), helper.make_node("Abs", ["xr"], ["b"]),
                  helper.make_node("Add", ["n", "b"], ["y"], name="add")]
    return _model(nodes, inits)


@pytest.mark.parametrize("kind,residual", [("identity", "xr"), ("downsample", "s"),
                                           ("se", "gated")])
def test_residual_add_input(kind, residual):
    assert int8_placement(_block(kind)).residual == {"add": residual}


def test_add_without_a_conv_side_is_not_a_residual_add():
    assert int8_placement(_block("plain")).residual == {}


def test_quantized_graph_puts_qdq_on_the_residual_input_only(tmp_path):
    """End to end (ONNX Runtime's quantizer, then the placement edit): the SE-gated Add
    reads its non-conv input through Q/DQ, the shortcut conv's output directly."""
    src = tmp_path / "block.onnx"
    onnx.save(_block("se"), str(src))
    calib = CalibData(RNG.standard_normal((8, 16, 8, 8)).astype(np.float32), "test", None)
    artifact = quantize_int8(src, tmp_path / "q.onnx", calib)
    q = onnx.load(str(tmp_path / "q.onnx"))
    producers = {o: n for n in q.graph.node for o in n.output}
    add = next(n for n in q.graph.node if n.name == "add")
    kinds = {producers[i].op_type for i in add.input}
    assert kinds == {"DequantizeLinear", "Conv"}, kinds
    assert artifact.details["residual_adds_quantized"] == 1
    assert artifact.details["placement"]["residual_add"]["nodes"] == [{"add": "add",
                                                                       "input": "gated"}]
