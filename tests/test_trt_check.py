"""Static TensorRT operator check against the ONNX-TensorRT 10.16 matrix."""
import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy_attn.checks.trt_support import MATRIX_FILE, check_trt_support, load_matrix
from deploy_attn.core.errors import ArtifactError

from .conftest import ATTENTION_NAMES, SHARED, by_module

F, I8, U8, I64 = TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8, TensorProto.INT64


def make_model(nodes, inputs, outputs, initializers=(), opset=18, extra_opsets=()):
    """A model from (name, elem_type, shape) inputs/outputs and numpy initializers."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in initializers])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def reasons(result, node):
    return [i.reason for i in result.issues if i.node == node]


def test_clean_conv_graph_passes():
    w = np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], "relu"),
         helper.make_node("ReduceMean", ["r", "axes"], ["m"], "pool", keepdims=1),
         helper.make_node("Sigmoid", ["m"], ["s"], "gate"),
         helper.make_node("Mul", ["r", "s"], ["g"], "scale"),
         helper.make_node("HardSwish", ["g"], ["y"], "act")],
        [("x", F, [1, 8, 16, 16])], [("y", F, [1, 8, 16, 16])],
        [("w", w), ("axes", np.array([2, 3], np.int64))])
    result = check_trt_support(model)
    assert result.ok, result.summary()
    assert result.summary() == "TensorRT 10.16 operator check: all 6 nodes supported"
    assert result.op_counts["Conv"] == 1 and result.nodes == 6 and result.rejected == 0
    assert json.loads(json.dumps(result.as_dict()))["ok"] is True


def test_multinomial_rejected_with_node_name():
    model = make_model([helper.make_node("Relu", ["x"], ["r"], "n0"),
                        helper.make_node("Multinomial", ["r"], ["y"], "n3", sample_size=1)],
                       [("x", F, [1, 10])], [("y", TensorProto.INT32, [1, 1])])
    result = check_trt_support(model)
    assert not result.ok and result.rejected == 1
    assert reasons(result, "n3") == ["not supported"]
    assert result.summary() == ("TensorRT 10.16 operator check: 1 of 2 nodes rejected: "
                                "Multinomial 'n3' (not supported)")


@pytest.mark.parametrize("op", ["Unique", "Bernoulli", "SequenceConstruct",
                                "DynamicQuantizeLinear", "QLinearConv", "ConvInteger",
                                "MatMulInteger"])
def test_unsupported_ops_rejected(op):
    model = make_model([helper.make_node(op, ["x", "z"], ["y"], "bad")],
                       [("x", F, [4, 4]), ("z", F, [4, 4])], [("y", F, None)])
    assert reasons(check_trt_support(model), "bad") == ["not supported"]


def test_summary_names_a_few_then_counts_the_rest():
    nodes = [helper.make_node("Relu", ["x"], ["r"], "r")]
    nodes += [helper.make_node("Bernoulli", ["r"], [f"b{i}"], f"b{i}") for i in range(5)]
    model = make_model(nodes, [("x", F, [4])], [(f"b{i}", F, [4]) for i in range(5)])
    summary = check_trt_support(model).summary()
    assert summary.startswith("TensorRT 10.16 operator check: 5 of 6 nodes rejected: "
                              "Bernoulli 'b0' (not supported), ")
    assert summary.endswith("+2 more")


def test_reduce_axes_runtime_tensor_rejected():
    model = make_model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], "mean")],
                       [("x", F, [1, 4, 8, 8]), ("axes", I64, [2])], [("y", F, None)])
    assert reasons(check_trt_support(model), "mean") == [
        "axes is a run-time tensor; TensorRT needs an initializer"]


def test_reduce_axes_from_constant_node_accepted():
    axes = helper.make_tensor("a", I64, [2], [2, 3])
    model = make_model([helper.make_node("Constant", [], ["axes"], "c", value=axes),
                        helper.make_node("ReduceMax", ["x", "axes"], ["y"], "max")],
                       [("x", F, [1, 4, 8, 8])], [("y", F, None)])
    assert check_trt_support(model).ok


def qdq_model(zero_point=None, scale=0.05):
    """x -> QuantizeLinear -> DequantizeLinear -> y, per tensor."""
    inits = [("s", np.float32(scale))]
    qins = ["x", "s"]
    if zero_point is not None:
        inits.append(("zp", zero_point))
        qins.append("zp")
    return make_model([helper.make_node("QuantizeLinear", qins, ["q"], "quant"),
                       helper.make_node("DequantizeLinear", ["q"] + qins[1:], ["y"], "dequant")],
                      [("x", F, [1, 4, 8, 8])], [("y", F, [1, 4, 8, 8])], inits)


def test_qdq_symmetric_int8_accepted():
    result = check_trt_support(qdq_model(np.int8(0)))
    assert result.ok, result.summary()


def test_qdq_nonzero_zero_point_rejected():
    result = check_trt_support(qdq_model(np.int8(3)))
    for node in ("quant", "dequant"):
        assert "zero point must be 0 (TensorRT quantization is symmetric)" in reasons(result, node)


def test_qdq_uint8_rejected():
    result = check_trt_support(qdq_model(np.uint8(0)))
    assert any("quantizes to UINT8" in r for r in reasons(result, "quant"))
    assert any(r.startswith("UINT8 input not supported") for r in reasons(result, "dequant"))


def test_quantize_without_zero_point_is_uint8():
    # ONNX's default quantized type is UINT8: ONNX Runtime would clamp to [0, 255] while
    # TensorRT quantizes to INT8, so the two would disagree.
    result = check_trt_support(qdq_model(None))
    assert any("ONNX's default without y_zero_point" in r for r in reasons(result, "quant"))


def test_qdq_negative_or_runtime_scale_rejected():
    assert "scales must be positive" in reasons(
        check_trt_support(qdq_model(np.int8(0), scale=-0.1)), "quant")
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], "quant")],
                       [("x", F, [4]), ("s", F, [])], [("y", I8, [4])], [("zp", np.int8(0))])
    assert reasons(check_trt_support(model), "quant") == [
        "scale is a run-time tensor; TensorRT Q/DQ needs constant scales"]


def weight_qdq_model(axis: int | None):
    """Per-channel symmetric INT8 weights (axis 0) and per-tensor INT8 activations -> Conv."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    kw = {} if axis is None else {"axis": axis}
    inits = [("w", w), ("ws", np.abs(w).reshape(4, -1).max(1) / 127),
             ("wzp", np.zeros(4, np.int8)), ("xs", np.float32(0.02)), ("xzp", np.int8(0))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"], "xq"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xzp"], ["xd"], "xd"),
             helper.make_node("QuantizeLinear", ["w", "ws", "wzp"], ["wq"], "wq", **kw),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["wd"], "wd", **kw),
             helper.make_node("Conv", ["xd", "wd"], ["y"], "conv")]
    return make_model(nodes, [("x", F, [1, 3, 8, 8])], [("y", F, [1, 4, 6, 6])], inits)


def test_qdq_per_channel_int8_accepted():
    result = check_trt_support(weight_qdq_model(axis=0))
    assert result.ok, result.summary()


def test_qdq_per_channel_without_axis_rejected():
    result = check_trt_support(weight_qdq_model(axis=None))
    assert reasons(result, "wq") == reasons(result, "wd") == [
        "per-channel scales need an explicit axis"]


def test_int8_tensor_outside_qdq_rejected():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], "relu")],
                       [("x", I8, [4])], [("y", I8, [4])])
    assert reasons(check_trt_support(model), "relu") == [
        "INT8 input outside Q/DQ: TensorRT takes INT8 only through QuantizeLinear/DequantizeLinear"]


def test_uint8_network_input_through_cast_accepted():
    model = make_model([helper.make_node("Cast", ["x"], ["y"], "cast", to=F)],
                       [("x", U8, [1, 3, 8, 8])], [("y", F, [1, 3, 8, 8])])
    assert check_trt_support(model).ok


def test_contrib_op_rejected():
    model = make_model([helper.make_node("FastGelu", ["x"], ["y"], "gelu", domain="com.microsoft")],
                       [("x", F, [4])], [("y", F, [4])], extra_opsets=[("com.microsoft", 1)])
    result = check_trt_support(model)
    assert reasons(result, "gelu") == ["not an ONNX standard op (domain com.microsoft)"]
    assert result.op_counts == {"com.microsoft:FastGelu": 1}


def test_nodes_in_subgraphs_checked():
    def branch(op, name):
        return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_y"], name)], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", F, [4])])
    model = make_model([helper.make_node("If", ["c"], ["y"], "if", then_branch=branch("Relu", "ok"),
                                         else_branch=branch("Bernoulli", "coin"))],
                       [("c", TensorProto.BOOL, []), ("x", F, [4])], [("y", F, [4])])
    result = check_trt_support(model)
    assert result.nodes == 3 and result.rejected == 1
    assert reasons(result, "coin") == ["not supported"]


def test_opset_outside_matrix_range_rejected():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], "relu")],
                       [("x", F, [4])], [("y", F, [4])], opset=8)
    assert [str(i) for i in check_trt_support(model).issues] == [
        "ai.onnx opset 8 outside TensorRT 10.16's 9-24"]


def resize_model(**attrs):
    scales = np.array([1, 1, 2, 2], np.float32)
    return make_model([helper.make_node("Resize", ["x", "", "scales"], ["y"], "up", **attrs)],
                      [("x", F, [1, 4, 8, 8])], [("y", F, [1, 4, 16, 16])], [("scales", scales)])


@pytest.mark.parametrize("attrs, expected", [
    ({"mode": "nearest"}, []),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, []),
    ({"mode": "cubic"}, ["mode 'cubic' unsupported (supported: nearest, linear)"]),
    ({"mode": "linear", "antialias": 1}, ["antialias unsupported"]),
    ({"coordinate_transformation_mode": "tf_crop_and_resize"},
     ["coordinate_transformation_mode 'tf_crop_and_resize' unsupported (supported: half_pixel, "
      "pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, align_corners)"]),
])
def test_resize_modes(attrs, expected):
    assert reasons(check_trt_support(resize_model(**attrs)), "up") == expected


@pytest.mark.parametrize("rank, ok", [(4, True), (5, False)])
def test_grid_sample_4d_only(rank, ok):
    shape = [1, 2] + [4] * (rank - 2)
    grid = [1] + [4] * (rank - 2) + [rank - 2]
    model = make_model([helper.make_node("GridSample", ["x", "grid"], ["y"], "gs")],
                       [("x", F, shape), ("grid", F, grid)], [("y", F, None)], opset=16)
    assert reasons(check_trt_support(model), "gs") == ([] if ok else ["input must be 4-D (rank 5)"])


@pytest.mark.parametrize("groups, ok", [(4, True), (3, False)])
def test_group_norm_groups_divide_channels(groups, ok):
    model = make_model(
        [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], "gn", num_groups=groups)],
        [("x", F, [1, 8, 4, 4])], [("y", F, [1, 8, 4, 4])],
        [("s", np.ones(8, np.float32)), ("b", np.zeros(8, np.float32))], opset=21)
    assert reasons(check_trt_support(model), "gn") == (
        [] if ok else ["num_groups 3 does not divide 8 channels"])


def test_runtime_shape_inputs_of_slice_and_reshape_accepted():
    model = make_model([helper.make_node("Slice", ["x", "start", "end"], ["s"], "slice"),
                        helper.make_node("Reshape", ["s", "shape"], ["y"], "reshape")],
                       [("x", F, [8, 8]), ("start", I64, [1]), ("end", I64, [1]),
                        ("shape", I64, [2])], [("y", F, None)])
    result = check_trt_support(model)
    assert result.ok, result.summary()


def test_packaged_matrix():
    matrix = load_matrix()
    assert matrix.tensorrt_version == "10.16"
    assert matrix.source.startswith("onnx/onnx-tensorrt:docs/operators.md@")
    assert (matrix.opset_min, matrix.opset_max) == (9, 24)
    assert not matrix.ops["Multinomial"].supported and matrix.ops["HardSwish"].supported


def test_packaged_matrix_equals_shared_copy():
    shared = SHARED / "data" / MATRIX_FILE
    if not SHARED.is_dir():  # a clone outside the workplace has no ../shared at all
        pytest.skip(f"no {SHARED} beside the repository to compare with")
    assert shared.is_file(), f"{SHARED} is here but holds no {MATRIX_FILE}"
    from importlib import resources
    text = (resources.files("deploy_attn") / "data" / MATRIX_FILE).read_text()
    assert json.loads(text) == json.loads(shared.read_text())


def test_bad_matrix_file_is_artifact_error(tmp_path):
    bad = tmp_path / "matrix.json"
    bad.write_text('{"ops": {}}')
    with pytest.raises(ArtifactError, match="not a TensorRT operator matrix"):
        load_matrix(bad)
    with pytest.raises(ArtifactError, match="no such TensorRT operator matrix"):
        load_matrix(tmp_path / "missing.json")


def test_corrupt_or_missing_onnx_is_artifact_error(tmp_path):
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(ArtifactError, match="model.onnx"):
        check_trt_support(corrupt)
    with pytest.raises(ArtifactError, match="no such ONNX file"):
        check_trt_support(str(tmp_path / "missing.onnx"))


@pytest.mark.parametrize("name", by_module(ATTENTION_NAMES))
def test_zoo_exports_pass(export_cache, name):
    path = export_cache(name, False).model_path
    result = check_trt_support(path)
    assert result.ok, f"{name}: {result.summary()}"
    assert result.nodes == len(onnx.load(str(path)).graph.node)


def test_local_function_bodies_checked():
    body = [helper.make_node("Relu", ["a"], ["r"], "inner_relu"),
            helper.make_node("Bernoulli", ["r"], ["b"], "inner_coin")]
    fn = helper.make_function("local", "Noisy", ["a"], ["b"], body, [helper.make_opsetid("", 18)])
    model = make_model([helper.make_node("Noisy", ["x"], ["y"], "call", domain="local")],
                       [("x", F, [4])], [("y", F, [4])], extra_opsets=[("local", 1)])
    model.functions.append(fn)
    result = check_trt_support(model)
    assert [(i.op_type, i.reason) for i in result.issues] == [("Bernoulli", "not supported")]
    assert result.nodes == 2


def test_export_fails_when_tensorrt_would_reject_a_node(capsys, tmp_path, monkeypatch):
    """The export runs the operator check on every artifact and exits non-zero naming the
    rejected nodes; the files stay (they are right for ONNX Runtime) and the report says
    why. The rejection is injected: no shipped module has one."""
    from deploy_attn import cli
    from deploy_attn.checks import trt_support
    from deploy_attn.jobs import stages

    real = trt_support.check_trt_support

    def rejecting(path):
        result = real(path)
        issue = trt_support.TrtIssue("node_Conv_0", "Conv", "injected by the test")
        return dataclasses.replace(result, rejected=1, issues=[issue])

    monkeypatch.setattr(stages, "check_trt_support", rejecting)
    code = cli.main(["export", "se", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
    assert code != 0 and err[-1].startswith("deploy-attn: error: se: model.onnx:"), err
    assert "Conv 'node_Conv_0' (injected by the test)" in err[-1], err
    assert "TensorRT would not build it" in err[-1], err
    assert not any("Traceback" in line for line in err), err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "trt-rejected" and (tmp_path / "model.onnx").is_file()
