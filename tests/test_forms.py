"""CPU graph forms (deploy_attn.graph.cpu_forms): each rewrite on the graph it is written
for computes what the graph computed (ONNX Runtime, same inputs), and near misses are
left alone."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deploy_attn.attention.coord import CoordAtt
from deploy_attn.core.cpu import cpu_isa, isa_line
from deploy_attn.core.onnx_io import op_counts
from deploy_attn.graph.cpu_forms import FORM_NAMES, apply_forms
from deploy_attn.graph.export import export_onnx
from deploy_attn.graph.passes import rewrite_onnx
from deploy_attn.graph.simplify import simplify_onnx
from deploy_attn.precision.saturation import portable_weights, saturation_report
from deploy_attn.swaps import patch_for_deploy

from .test_saturation import AVX2, X86, emulation, openvino_run

RNG = np.random.default_rng(0)
ATOL = 1e-5  # FP32: a pool sums in another order than a reduction


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def same_function(before: onnx.ModelProto, forms, x) -> tuple[onnx.ModelProto, dict]:
    after = onnx.ModelProto()
    after.CopyFrom(before)
    counts = apply_forms(after, forms)
    onnx.checker.check_model(after, full_check=True)
    err = float(np.abs(run(after, x) - run(before, x)).max())
    assert err <= ATOL, f"{forms}: max abs {err:.3g} > {ATOL}"
    return after, counts


def graph(nodes, x_shape, y_shape=None, inits=()) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def reduce_graph(op, axes, shape=(2, 4, 6, 5), keepdims=1):
    return graph([helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)], shape,
                 inits=[("axes", np.array(axes, np.int64))])


@pytest.mark.parametrize("op,axes,form,made", [
    ("ReduceMean", [2], "axis_pool", "AveragePool"),
    ("ReduceMean", [-1], "axis_pool", "AveragePool"),
    ("ReduceMax", [3], "axis_pool", "MaxPool"),
    ("ReduceMean", [2, 3], "global_pool", "GlobalAveragePool"),
    ("ReduceMax", [-2, -1], "global_pool", "GlobalMaxPool"),
])
def test_pool_forms(op, axes, form, made):
    x = RNG.standard_normal((2, 4, 6, 5), dtype=np.float32)
    after, counts = same_function(reduce_graph(op, axes), [form], x)
    assert counts[form] == 1 and op_counts(after) == {made: 1}


@pytest.mark.parametrize("model,form", [
    (reduce_graph("ReduceMean", [1]), "axis_pool"),  # the channel axis: no pool for it
    (reduce_graph("ReduceMean", [2], keepdims=0), "axis_pool"),  # drops the axis
    (reduce_graph("ReduceMean", [2, 3]), "axis_pool"),  # a global pool is another form
    (reduce_graph("ReduceMean", [2]), "global_pool"),
    (reduce_graph("ReduceMean", [2], shape=(2, 4, "h", 5)), "axis_pool"),  # size unknown
    (reduce_graph("ReduceMean", [1], shape=(2, 4, 6)), "axis_pool"),  # not 4-D
])
def test_pool_forms_leave_near_misses(model, form):
    assert apply_forms(model, [form])[form] == 0
    assert op_counts(model)["ReduceMean"] == 1


def ca_graph(tmp_path, channels=16, size=(12, 10)) -> onnx.ModelProto:
    """Our Coordinate Attention's deploy graph as the export writes it (ReduceMean pools,
    Concat -> 1x1 conv -> HardSwish -> Split, H/W transposes, x * a_w * a_h)."""
    torch.manual_seed(0)
    module = CoordAtt(channels, reduction=4)
    for bn in (module.bn1,):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    model = patch_for_deploy(module.eval())[0]
    export_onnx(model, (1, channels, *size), tmp_path / "raw.onnx")
    rewrite_onnx(tmp_path / "raw.onnx", tmp_path / "passes.onnx")  # as the export does
    simplify_onnx(tmp_path / "passes.onnx", tmp_path / "ca.onnx")
    return onnx.load(str(tmp_path / "ca.onnx"))


def test_unsplit_removes_the_concat_split_round_trip_and_the_transposes(tmp_path):
    before = ca_graph(tmp_path)
    assert {"Concat", "Split", "Transpose"} <= set(op_counts(before))
    x = RNG.standard_normal((1, 16, 12, 10), dtype=np.float32)
    after, counts = same_function(before, ["unsplit"], x)
    ops = op_counts(after)
    assert not {"Concat", "Split", "Transpose"} & set(ops), ops
    assert counts["unsplit"] == 2  # one round trip, one transpose pair
    assert ops["Conv"] == op_counts(before)["Conv"] + 1  # the shared 1x1 conv, twice
    assert ops["HardSwish"] == 2


def test_all_forms_on_coordinate_attention(tmp_path):
    before = ca_graph(tmp_path)
    x = RNG.standard_normal((1, 16, 12, 10), dtype=np.float32)
    after, counts = same_function(before, FORM_NAMES, x)
    assert counts == {"max_after_qdq": 0, "quantized_concat": 0, "axis_pool": 2, "global_pool": 0, "unsplit": 2,
                      "gate_product": 1}
    ops = op_counts(after)
    assert ops["AveragePool"] == 2 and "ReduceMean" not in ops
    muls = [n for n in after.graph.node if n.op_type == "Mul"]
    # x * (a_w * a_h): the gates multiply each other first, the input once
    x_name = after.graph.input[0].name
    assert len(muls) == 2 and [x_name in n.input for n in muls] == [False, True], muls


def test_unsplit_near_misses(tmp_path):
    x = RNG.standard_normal((1, 4, 6, 6), dtype=np.float32)
    w1 = RNG.standard_normal((4, 4, 1, 1), dtype=np.float32)
    w3 = RNG.standard_normal((4, 4, 3, 3), dtype=np.float32)

    def round_trip(conv_w, split=(6, 6), axis=2, extra_reader=False):
        nodes = [helper.make_node("Relu", ["x"], ["a"]),
                 helper.make_node("Sigmoid", ["x"], ["b"]),
                 helper.make_node("Concat", ["a", "b"], ["c"], axis=axis),
                 helper.make_node("Conv", ["c", "w"], ["d"],
                                  pads=[1, 1, 1, 1] if conv_w.shape[2] == 3 else [0] * 4),
                 helper.make_node("Split", ["d", "sizes"], ["s0", "s1"], axis=axis),
                 helper.make_node("Add", ["s0", "s1"], ["y" if not extra_reader else "e"])]
        if extra_reader:  # the conv's output is read outside the round trip as well
            nodes += [helper.make_node("ReduceMean", ["d", "ax"], ["m"]),
                      helper.make_node("Add", ["e", "m"], ["y"])]
        return graph(nodes, (1, 4, 6, 6), inits=[("w", conv_w), ("sizes",
                     np.array(split, np.int64)), ("ax", np.array([2], np.int64))])

    after, counts = same_function(round_trip(w1), ["unsplit"], x)  # the hit, for contrast
    assert counts["unsplit"] == 1 and "Concat" not in op_counts(after)
    for model in (round_trip(w3), round_trip(w1, split=(4, 8)),
                  round_trip(w1, extra_reader=True)):
        assert apply_forms(model, ["unsplit"])["unsplit"] == 0


def test_unsplit_passes_per_tensor_quantization():
    """Q/DQ with one scale act on each position alone: the round trip still unsplits."""
    nodes = [helper.make_node("Concat", ["x", "x"], ["c"], axis=3),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Split", ["dq", "sizes"], ["s0", "s1"], axis=3),
             helper.make_node("Mul", ["s0", "s1"], ["y"])]
    model = graph(nodes, (1, 2, 3, 4), inits=[
        ("s", np.float32(0.05)), ("z", np.int8(0)), ("sizes", np.array([4, 4], np.int64))])
    x = RNG.standard_normal((1, 2, 3, 4), dtype=np.float32)
    after, counts = same_function(model, ["unsplit"], x)
    assert counts["unsplit"] == 1 and op_counts(after)["QuantizeLinear"] == 2


def test_gate_product_needs_two_broadcast_gates():
    def mul_graph(b_shape):
        nodes = [helper.make_node("Sigmoid", ["x"], ["sx"]),
                 helper.make_node("ReduceMean", ["x", "ax3"], ["a"]),
                 helper.make_node("ReduceMean", ["x", "ax2"], ["b0"]) if b_shape == "gate"
                 else helper.make_node("Relu", ["x"], ["b0"]),
                 helper.make_node("Mul", ["sx", "a"], ["m"]),
                 helper.make_node("Mul", ["m", "b0"], ["y"])]
        return graph(nodes, (1, 3, 5, 4), inits=[("ax3", np.array([3], np.int64)),
                                                 ("ax2", np.array([2], np.int64))])

    x = RNG.standard_normal((1, 3, 5, 4), dtype=np.float32)
    after, counts = same_function(mul_graph("gate"), ["gate_product"], x)
    assert counts["gate_product"] == 1
    assert apply_forms(mul_graph("full"), ["gate_product"])["gate_product"] == 0


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="unknown graph form"):
        apply_forms(reduce_graph("ReduceMean", [2]), ["averagepool"])


def test_unsplit_keeps_graph_outputs_where_they_were():
    """A Split output that is a graph output, and an H/W transpose pair whose second
    Transpose makes one: the round trip still unsplits, both outputs keep their names and
    values, and that transpose pair stays (a graph output is never renamed)."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Transpose", ["x"], ["b"], perm=[0, 1, 3, 2]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=2),
             helper.make_node("Sigmoid", ["c"], ["d"]),
             helper.make_node("Split", ["d", "sizes"], ["y0", "s1"], axis=2),
             helper.make_node("Transpose", ["s1"], ["y1"], perm=[0, 1, 3, 2])]
    value = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, (1, 2, 4, 4))],
                          [value("y0", TensorProto.FLOAT, None),
                           value("y1", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array([4, 4], np.int64), "sizes")])
    before = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    counts = apply_forms(after, ["unsplit"])
    onnx.checker.check_model(after, full_check=True)
    assert counts["unsplit"] == 1 and op_counts(after)["Transpose"] == 2, op_counts(after)
    x = RNG.standard_normal((1, 2, 4, 4), dtype=np.float32)

    def outputs(model):
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return session.run(["y0", "y1"], {"x": x})

    for want, got in zip(outputs(before), outputs(after)):
        np.testing.assert_array_equal(got, want)


def max_qdq_graph(scale=np.float32(0.05), extra_reader=False) -> onnx.ModelProto:
    """CBAM's channel gate in Q/DQ: ReduceMax over H, W -> Q -> DQ -> Conv (a DQ weight)."""
    w = RNG.integers(-127, 128, (4, 6, 1, 1)).astype(np.int8)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ReduceMax", ["r", "axes"], ["m"], keepdims=1),
             helper.make_node("QuantizeLinear", ["m", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], axis=1),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0),
             helper.make_node("Conv", ["dq", "w"], ["y"])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["m"], ["m2"]))
    return graph(nodes, (2, 6, 5, 5), inits=[
        ("axes", np.array([2, 3], np.int64)), ("s", scale), ("z", np.zeros_like(scale, np.int8)),
        ("wq", w), ("ws", np.full(4, 0.01, np.float32))])


def test_max_after_qdq_is_exact_and_what_openvino_computes():
    """Q/DQ moved before ReduceMax: the same values to the bit on ONNX Runtime, and
    OpenVINO's CPU plugin computes the rewritten graph as ONNX Runtime does (the first order
    came out rounded to whole units on unet_cbam). OpenVINO still runs the Conv behind
    ``DQ -> ReduceMax`` on its integer kernels: as the emulation predicts for this CPU (its
    full-range weights saturate without VNNI), and with portable weights, which the
    portable form now finds behind the ReduceMax, exactly on every CPU."""
    x = 3 * RNG.standard_normal((2, 6, 5, 5), dtype=np.float32)
    model = max_qdq_graph()
    after, counts = same_function(model, ["max_after_qdq"], x)
    assert counts["max_after_qdq"] == 1
    assert [n.op_type for n in after.graph.node][:4] == \
        ["Relu", "QuantizeLinear", "DequantizeLinear", "ReduceMax"]
    np.testing.assert_array_equal(run(after, x), run(model, x))
    portable = onnx.ModelProto()
    portable.CopyFrom(after)
    assert portable_weights(portable)["layers"] == 1
    assert saturation_report(portable, x)["saturating_layers"] == 0
    from deploy_attn.runtime.openvino import openvino_missing
    if openvino_missing():
        return  # the ONNX Runtime half above is the part that holds everywhere
    import openvino as ov

    core = ov.Core()

    def openvino(m: onnx.ModelProto) -> np.ndarray:
        compiled = core.compile_model(core.read_model(m.SerializeToString(), b""), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        return np.asarray(compiled(x)[0])

    saturating = cpu_isa()["openvino_int8_dot"] == "saturating"
    predicted = emulation(after, x, True, spatial=(1, 1)) if saturating else run(after, x)
    err = float(np.abs(openvino(after) - predicted).max())
    print(f"[forms] {isa_line()}: OpenVINO vs the prediction {err:.3g} (saturating "
          f"{saturating}); vs exact {float(np.abs(openvino(after) - run(after, x)).max()):.3g}")
    assert err <= ATOL, f"OpenVINO vs the prediction for this CPU: max abs {err:.3g}"
    err = float(np.abs(openvino(portable) - run(portable, x)).max())
    assert err <= ATOL, f"OpenVINO vs ONNX Runtime on the portable graph: max abs {err:.3g}"


@pytest.mark.parametrize("model", [max_qdq_graph(np.full(6, 0.05, np.float32)),
                                   max_qdq_graph(extra_reader=True)],
                         ids=["per-channel scale", "max read twice"])
def test_max_after_qdq_leaves_near_misses(model):
    assert apply_forms(model, ["max_after_qdq"])["max_after_qdq"] == 0


def concat_qdq_graph(scale=np.float32(0.05), extra_reader=False) -> onnx.ModelProto:
    """A UNet decoder's skip join in Q/DQ: Concat(upsampled, skip) -> Q -> DQ -> Conv 3x3
    (a DQ weight within 64 in |w|, so no pair sum can saturate on any CPU)."""
    w = RNG.integers(-64, 65, (4, 12, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Neg", ["x"], ["n"]),
             helper.make_node("Concat", ["r", "n"], ["c"], axis=1),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0),
             helper.make_node("Conv", ["dq", "w"], ["y"], pads=[1, 1, 1, 1])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["c"], ["c2"]))
    return graph(nodes, (2, 6, 5, 5), inits=[
        ("s", scale), ("z", np.zeros_like(scale, np.int8)), ("wq", w),
        ("ws", np.full(4, 0.01, np.float32))])


def test_quantized_concat_is_exact_and_what_openvino_computes(tmp_path):
    """Concat -> Q as one Q per input -> Concat of the integers: the same values to the bit
    on ONNX Runtime. OpenVINO 2026.4 without AMX miscomputed the first order on unet_cbam's
    decoder (cosine 0.88 on one Conv; exact on AMX): limited to AVX-512 VNNI it computes
    the rewritten graph exactly; limited to AVX2 it is closer than before, not exact (no
    pair sum saturates here: README, "CPUs", what is left)."""
    x = 2 * RNG.standard_normal((2, 6, 5, 5), dtype=np.float32)
    model = concat_qdq_graph()
    after, counts = same_function(model, ["quantized_concat"], x)
    assert counts["quantized_concat"] == 1
    assert [n.op_type for n in after.graph.node][:5] == \
        ["Relu", "Neg", "QuantizeLinear", "QuantizeLinear", "Concat"]
    exact = run(after, x)
    np.testing.assert_array_equal(exact, run(model, x))
    from deploy_attn.core.cpu import cpu_isa
    from deploy_attn.runtime.openvino import openvino_missing
    if openvino_missing() or not X86:
        return  # the ONNX Runtime half above is the part that holds everywhere
    paths = {"before": tmp_path / "before.onnx", "after": tmp_path / "after.onnx"}
    onnx.save(model, paths["before"])
    onnx.save(after, paths["after"])
    limits = {"AVX2": AVX2}
    if "avx512_vnni" in cpu_isa()["isa"]:  # a limit above the CPU would mean its own ISA
        limits["AVX512_CORE_VNNI"] = {k: "AVX512_CORE_VNNI" for k in AVX2}
    for isa, env in limits.items():
        err = {k: float(np.abs(openvino_run(p, x, env) - exact).max()) for k, p in paths.items()}
        print(f"[forms] quantized_concat, OpenVINO limited to {isa} vs exact: "
              f"{err['after']:.2e} (Concat -> Q: {err['before']:.2e})")
        assert err["after"] <= (ATOL if isa != "AVX2" else err["before"]), (isa, err)


@pytest.mark.parametrize("model", [concat_qdq_graph(np.full(12, 0.05, np.float32)),
                                   concat_qdq_graph(extra_reader=True)],
                         ids=["per-channel scale", "concat read twice"])
def test_quantized_concat_leaves_near_misses(model):
    assert apply_forms(model, ["quantized_concat"])["quantized_concat"] == 0
