"""FP16 and INT8 artifacts: thresholds on ONNX Runtime CPU, Q/DQ that TensorRT accepts,
measured FP32 islands, and the bad inputs of calibration."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from deploy_attn import cli, export
from deploy_attn.core.errors import ParityError
from deploy_attn.core.images import Preprocess
from deploy_attn.core.numerics import TOLERANCES, seeded_inputs
from deploy_attn.jobs.verify import verify_artifacts
from deploy_attn.precision.calib import image_folder

from .conftest import ATTENTION_NAMES, by_module

NO_WEIGHTED_OPS = {"sa"}  # Shuffle Attention has no Conv/Gemm/MatMul: nothing to quantize
# every Conv/Gemm of these is below the INT8 placement rules' channel or GEMV limits
QUANTIZE_NOTHING = {"eca", "ema", "se", "spatial_attention"}
PRECISE = dict(precisions=("fp16", "int8-fp32", "int8"), calib_count=16)
INT8_FORMS = ("int8-fp32", "int8")  # FP32 and FP16 remainders
GATES = {"Sigmoid", "HardSigmoid", "Softmax"}


def _qdq_problems(model: onnx.ModelProto) -> list[str]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    problems = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
                problems.append(f"{n.name}: zero point {zp!r} is not INT8 zeros")
            if np.any(inits[n.input[1]] <= 0):
                problems.append(f"{n.name}: non-positive scale")
            if inits[n.input[1]].size > 1 and not any(a.name == "axis" for a in n.attribute):
                problems.append(f"{n.name}: per-channel without an explicit axis")
        if n.op_type in GATES and any(producers.get(i) is not None and
                                      producers[i].op_type == "DequantizeLinear" for i in n.input):
            problems.append(f"{n.name}: {n.op_type} gate fed by a DequantizeLinear")
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            # an output is quantized only as the input of another quantized op, or as the
            # residual input of a skip Add (a shortcut conv, placement.py)
            for q in (m for m in model.graph.node if n.output[0] in m.input
                      and m.op_type == "QuantizeLinear"):
                dq = [m for m in model.graph.node if q.output[0] in m.input]
                users = {u.op_type for d in dq for u in model.graph.node if d.output[0] in u.input}
                if not users & {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}:
                    problems.append(f"{n.name}: {n.op_type} output quantized for {users}")
    return problems


@pytest.mark.parametrize("name", by_module(n for n in ATTENTION_NAMES if n not in NO_WEIGHTED_OPS))
def test_fp16_and_int8_meet_thresholds(export_cache, name):
    result = export_cache(name, **PRECISE)
    report = result.report
    directory = result.model_path.parent
    # recomputed from the files against a fresh reference (not the job's own figures)
    checked = verify_artifacts(directory)
    for precision in ("fp16",) + INT8_FORMS:
        r = checked[precision]
        assert r["finite"] and r["cosine"] >= TOLERANCES[precision].min_cosine, \
            f"{name} {precision}: cosine {r['cosine']:.6f}, max abs {r['max_abs']:.2e}"
        assert r["trt_check"]["ok"], r["trt_check"]["summary"]

    fp16 = onnx.load(str(directory / "model.fp16.onnx"))
    io_types = {v.type.tensor_type.elem_type
                for v in list(fp16.graph.input) + list(fp16.graph.output)}
    assert io_types == {TensorProto.FLOAT}, "FP16 artifacts keep FP32 inputs and outputs"
    assert any(i.data_type == TensorProto.FLOAT16 for i in fp16.graph.initializer)

    for precision in INT8_FORMS:
        entry = report["precisions"][precision]
        assert (entry["quantized_nodes"] > 0) == (name not in QUANTIZE_NOTHING), \
            (precision, entry["quantized_nodes"], entry["placement"], entry.get("note"))
        model = onnx.load(str(directory / f"model.{precision}.onnx"))
        assert _qdq_problems(model) == []
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert bool(qdq) == (entry["quantized_nodes"] > 0), (precision, entry.get("note"))
    # the FP16 remainder's Q/DQ scales are FP16, except where the Q/DQ feeds an FP32
    # island (a measured overflow risk): there the pair stays FP32, with no Cast before
    # the op that reads the DQ
    int8 = onnx.load(str(directory / "model.int8.onnx"))
    inits = {i.name: i for i in int8.graph.initializer}
    kept = {k["name"] for k in report["precisions"]["int8"]["fp32_kept_nodes"]}
    users = {}
    for n in int8.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for n in int8.graph.node:
        if n.op_type == "DequantizeLinear" and inits[n.input[1]].data_type != TensorProto.FLOAT16:
            assert all(u.name in kept for u in users[n.output[0]]), (name, n.name)
    assert next(o.version for o in int8.opset_import if o.domain == "") >= 19
    assert "graph optimisations off" in checked["int8"]["runtime"]


@pytest.mark.parametrize("name", by_module(["cbam", "ca"]))
def test_verification_runtime_computes_each_op_as_stated(export_cache, tmp_path, name):
    """The runtime the INT8 + FP16 checks trust (ONNX Runtime, no graph optimisation):
    every FP16 Conv's output equals the convolution of its own inputs computed in float64,
    to two FP16 rounding steps at the magnitude of its terms (sum of |w| |x| + |b|: the
    kernel rounds its partial result and the output): the op as the graph states it. The
    miscompute of the optimised session (a garbage bias) is many steps off."""
    from deploy_attn.runtime.ort import ort_session

    result = export_cache(name, **PRECISE)
    model = onnx.load(str(result.model_path.parent / "model.int8.onnx"))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"
             and types.get(n.output[0]) == TensorProto.FLOAT16]
    assert convs, "no FP16 convs to check"
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = sorted({t for n in convs for t in (*n.input, n.output[0]) if t and t not in inits})
    for t in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(t, types[t], None))
    path = tmp_path / "probe.int8.onnx"
    onnx.save(probe, str(path))
    session = ort_session(path, verify=True)
    x = seeded_inputs(tuple(result.report["input_shape"]))
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))
    worst = 0.0
    for n in convs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        get = lambda t: values[t] if t in values else inits[t]  # noqa: E731
        w = torch.from_numpy(get(n.input[1]).astype(np.float64))
        b = torch.from_numpy(get(n.input[2]).astype(np.float64)) if len(n.input) > 2 else None
        pads = attrs.get("pads", [0] * 4)
        xin = torch.from_numpy(get(n.input[0]).astype(np.float64))
        conv = lambda a, k, c: torch.nn.functional.conv2d(  # noqa: E731
            a, k, c, stride=attrs.get("strides", [1, 1]), padding=pads[:2],
            dilation=attrs.get("dilations", [1, 1]), groups=attrs.get("group", 1)).numpy()
        exact = conv(xin, w, b)
        magnitude = conv(xin.abs(), w.abs(), None if b is None else b.abs())
        allowed = np.spacing(magnitude.astype(np.float16)).astype(np.float64)
        err = np.abs(values[n.output[0]].astype(np.float64) - exact) / allowed
        worst = max(worst, float(err.max()))
    assert worst <= 2.0, f"{name}: a Conv is off by {worst:.2f} FP16 steps"


@pytest.mark.parametrize("name", by_module(["cam", "danet"]))
def test_fp16_keeps_measured_attention_energies_in_fp32(export_cache, name):
    """CAM's C x C energies exceed 512 on standard-normal inputs (docs/TENSORRT.md, section 4)."""
    kept = export_cache(name, **PRECISE).report["precisions"]["fp16"]["fp32_kept_nodes"]
    ops = {k["op_type"] for k in kept}
    assert {"MatMul", "Softmax"} <= ops, kept
    assert all("activation magnitude" in k["reason"] for k in kept)
    model = onnx.load(str(export_cache(name, **PRECISE).model_path.parent / "model.fp16.onnx"))
    softmax = next(n for n in model.graph.node if n.name == next(
        k["name"] for k in kept if k["op_type"] == "Softmax"))
    vi = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert vi[softmax.output[0]].type.tensor_type.elem_type == TensorProto.FLOAT


def test_fp16_islands_prevent_overflow(tmp_path):
    """At 256x256, CAM's energy diagonal (sum of x^2 over 65536 positions) passes FP16's
    65504: converted without FP32 islands the output is Inf/NaN and the export fails with
    no artifact; with the measured islands it passes."""
    from onnx.reference import ReferenceEvaluator

    common = dict(channels=16, input_size=(256, 256), precisions=("fp16",),
                  calib_count=4, verify_count=2)
    with pytest.raises(ParityError, match="beyond the FP16 range"):
        export("cam", out_dir=tmp_path / "none", fp16_threshold=1e9, **common)
    assert not (tmp_path / "none" / "model.fp16.onnx").exists()
    result = export("cam", out_dir=tmp_path / "kept", **common)
    entry = result.report["precisions"]["fp16"]
    assert {"MatMul", "Softmax"} <= {k["op_type"] for k in entry["fp32_kept_nodes"]}
    # numpy computes FP16 ops in FP16 (ONNX Runtime's CPU provider may not): still finite
    x = seeded_inputs((1, 16, 256, 256))
    model = onnx.load(str(result.model_path.parent / "model.fp16.onnx"))
    assert np.isfinite(ReferenceEvaluator(model).run(None, {"input": x})[0]).all()


@pytest.mark.slow  # 30 s on AVX2; the digits test checks mobilenetv2_ca's FP16 on real data
def test_backbone_fp16(export_cache):
    result = export_cache("mobilenetv2_ca", precisions=("fp16",), calib_count=8)
    r = verify_artifacts(result.model_path.parent)["fp16"]
    assert r["cosine"] >= 0.9999 and r["top1_agreement"] == 1.0, r


def test_int8_sensitivity_and_exclusions(tmp_path):
    report = export("cpca", out_dir=tmp_path, precisions=("int8-fp32",),
                    calib_count=8, sensitivity=True).report
    rows = report["precisions"]["int8-fp32"]["sensitivity"]
    assert len(rows) == report["precisions"]["int8-fp32"]["quantized_nodes"]
    worst = rows[0]["node"]
    assert rows[0]["gain"] > 0, rows[:3]  # leaving the worst node FP32 helps
    excluded = export("cpca", out_dir=tmp_path / "x", precisions=("int8-fp32",),
                      calib_count=8, exclude=(worst,))

    def input_dequantized(path) -> bool:  # the node's activation comes through a DQ
        model = onnx.load(str(path))
        node = next(n for n in model.graph.node if n.name == worst)
        return any(n.op_type == "DequantizeLinear" and node.input[0] in n.output
                   for n in model.graph.node)

    # (a weight the excluded node shares with quantized nodes, as CPCA's multi-scale
    # convs do, stays quantized: ONNX Runtime's QDQ quantizer shares the DQ)
    assert input_dequantized(tmp_path / "model.int8-fp32.onnx")
    assert not input_dequantized(excluded.model_path.parent / "model.int8-fp32.onnx")


def test_auto_exclude_stops_at_the_target(tmp_path):
    """``--exclude auto`` leaves the fewest most-sensitive nodes FP32 that meet the target:
    none when the quantized graph already does, the top one when only it reaches it."""
    from deploy_attn.models import create_model
    from deploy_attn.precision.calib import calibration_data
    from deploy_attn.graph.export import export_onnx
    from deploy_attn.precision.int8 import quantize_int8
    from deploy_attn.precision.sensitivity import auto_exclude, cosine_scorer, int8_sensitivity
    from deploy_attn.registry import get_spec

    spec, model = get_spec("cpca"), create_model("cpca")
    shape = spec.input_shape(1)
    src, q = tmp_path / "model.onnx", tmp_path / "int8.onnx"
    export_onnx(model, shape, src)
    quantize_int8(src, q, calibration_data(None, shape, None, 8))
    x = seeded_inputs((4,) + tuple(shape[1:]))
    with torch.no_grad():
        score = cosine_scorer(model(torch.from_numpy(x)).numpy(), x)
    rows = int8_sensitivity(src, q, score)
    base = score(q)
    assert auto_exclude(src, q, rows, score, target=base, base=base) == []
    top = rows[0]["score_with_node_fp32"]
    assert top > base, rows[:3]
    assert auto_exclude(src, q, rows, score, target=top, base=base) == [rows[0]["node"]]


def test_exclude_auto_in_the_export_meets_a_raised_target(tmp_path, monkeypatch):
    """The export's ``--exclude auto``: with INT8's threshold raised above what the plain
    quantization gives, the most sensitive node stays FP32 in both INT8 forms, each then
    meets the raised threshold, and the report lists the node and the sensitivity."""
    import dataclasses

    plain = export("cpca", out_dir=tmp_path / "plain", precisions=("int8-fp32", "int8"),
                   calib_count=8)
    cosine = plain.report["precisions"]["int8-fp32"]["results"][0]["cosine"]
    raised = dataclasses.replace(TOLERANCES["int8"], min_cosine=(1 + cosine) / 2)
    monkeypatch.setitem(TOLERANCES, "int8", raised)
    monkeypatch.setitem(TOLERANCES, "int8-fp32", raised)
    auto = export("cpca", out_dir=tmp_path / "auto", precisions=("int8-fp32", "int8"),
                  calib_count=8, exclude=("auto",))
    for precision in ("int8-fp32", "int8"):
        entry = auto.report["precisions"][precision]
        assert entry["ok"] and entry["excluded_nodes"], entry["excluded_nodes"]
        assert entry["results"][0]["cosine"] >= raised.min_cosine, (precision, cosine, entry)
    rows = auto.report["precisions"]["int8-fp32"]["sensitivity"]
    assert auto.report["precisions"]["int8-fp32"]["excluded_nodes"][0] == rows[0]["node"]


def test_entropy_threshold_clips_outliers_not_the_distribution():
    """KL calibration on histograms of |x|: a uniform distribution keeps its full range,
    ten far outliers on a million normal samples are clipped (to about 5 sigma, not 50),
    and ReLU's spike of zeros does not drag the threshold of its tail down."""
    from deploy_attn.precision.int8 import entropy_threshold

    rng = np.random.default_rng(0)
    uniform = np.abs(rng.uniform(-1, 1, 200_000))
    assert entropy_threshold(*np.histogram(uniform, 2048)) > 0.99
    normal = np.abs(np.concatenate([rng.standard_normal(1_000_000), [50.0] * 10]))
    assert 3.5 < entropy_threshold(*np.histogram(normal, 2048)) < 8.0
    relu = np.maximum(rng.standard_normal(1_000_000), 0)
    assert entropy_threshold(*np.histogram(relu, 2048)) > 0.85 * relu.max()


def _activation_scales(path) -> dict[str, float]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_calibration_methods_set_different_ranges(tmp_path):
    """Each method calibrates every INT8 form (its scales differ from minmax's on the same
    inputs) and its artifacts still pass when checked again from the files."""
    precisions = ("int8-fp32", "int8", "int8-cpu")
    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        result = export("sk", out_dir=tmp_path / method, calib_count=8,
                        precisions=precisions, calib_method=method)
        checked = verify_artifacts(result.model_path.parent)
        for precision in precisions:
            calibration = result.report["precisions"][precision]["calibration"]
            assert "generated" in calibration["source"], (precision, calibration)
            r = checked[precision]
            assert r["cosine"] >= TOLERANCES[precision].min_cosine, (method, precision, r)
            scales[method, precision] = _activation_scales(
                result.model_path.parent / f"model.{precision}.onnx")
    for precision in precisions:
        minmax = scales["minmax", precision]
        for method in ("entropy", "percentile"):
            other = scales[method, precision]
            assert other.keys() == minmax.keys() and other != minmax, (method, precision)
            assert all(other[k] <= minmax[k] * (1 + 1e-6) for k in other), (method, precision)


# --- bad input: one line, non-zero exit, no partial artifact -------------------------
def _run(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def _png(path, mode, size=(40, 40)):
    from PIL import Image
    Image.new(mode, size, color=128 if mode == "L" else (10, 20, 30)).save(path)


@pytest.mark.parametrize("case", ["empty", "missing", "unreadable", "channels"])
def test_bad_calibration_folders(capsys, tmp_path, case):
    folder = tmp_path / "calib"
    if case != "missing":
        folder.mkdir()
    if case == "unreadable":
        (folder / "a.png").write_bytes(b"not a png")
    if case == "channels":
        _png(folder / "rgb.png", "RGB")
    out = tmp_path / "out"
    code, err = _run(capsys, "export", "unet", "--input-size", "32", "32", "--precision", "int8",
                     "--calib-dir", str(folder), "-o", str(out))
    assert code == 1 and err[-1].startswith("deploy-attn: error:"), err
    assert {"empty": "no .jpg", "missing": "does not exist", "unreadable": "not a readable image",
            "channels": "1-channel input"}[case] in err[-1]
    assert not (out / "model.int8.onnx").exists()


def test_calibration_images_are_preprocessed(tmp_path):
    _png(tmp_path / "a.png", "L", (16, 8))
    data = image_folder(tmp_path, Preprocess((4, 4), 1, (0.5,), (0.5,)), 8)
    assert data.inputs.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(data.inputs, (128 / 255 - 0.5) / 0.5, atol=1e-6)


def test_precision_the_model_cannot_take(capsys, tmp_path):
    code, err = _run(capsys, "export", "sa", "--precision", "int8", "-o", str(tmp_path))
    assert code == 1 and "no Conv/ConvTranspose/Gemm/MatMul nodes to quantize" in err[-1], err
    assert not (tmp_path / "model.int8.onnx").exists()
    code, err = _run(capsys, "export", "se", "--precision", "int4", "-o", str(tmp_path / "b"))
    assert code == 1 and "unknown precision int4" in err[-1]
    code, err = _run(capsys, "export", "se", "--calib-dir", str(tmp_path), "--precision", "int8",
                     "-o", str(tmp_path / "c"))
    assert code == 1 and "feature maps, not images" in err[-1]


def test_check_rejects_corrupt_and_foreign_files(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    code, err = _run(capsys, "check", str(bad), "--trt")
    assert code == 1 and "not a readable ONNX model" in err[-1]
    foreign = tmp_path / "foreign.onnx"
    node = onnx.helper.make_node("Multinomial", ["x"], ["y"], name="sampler", sample_size=1)
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
              str(foreign))
    code, err = _run(capsys, "check", str(foreign), "--trt")
    assert code == 1 and "sampler" in err[-1] and "Multinomial" in err[-1]
