"""CPU targets: OpenVINO IR and ONNX Runtime's mobile (ORT) format beside every artifact,
each checked against PyTorch; OpenVINO as a second runtime in ``check``; their ``bench``
backends. The OpenVINO parts skip with the reason where it is not installed."""
import re
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from deploy_attn import export
from deploy_attn.commands.bench import bench
from deploy_attn.core.cpu import cpu_isa
from deploy_attn.core.errors import ArtifactError, ConfigError
from deploy_attn.core.numerics import TOLERANCES, compare
from deploy_attn.core.onnx_io import op_counts
from deploy_attn.exportdir.reader import open_export, read_report
from deploy_attn.exportdir.transaction import STAGING_PREFIX
from deploy_attn.jobs import export as jobs_export, stages
from deploy_attn.jobs.verify import verify_artifacts
from deploy_attn.runtime import openvino
from deploy_attn.runtime.backends import run_target
from deploy_attn.runtime.openvino import OpenVINOUnavailable, openvino_missing
from deploy_attn.runtime.pytorch import torch_outputs
from deploy_attn.targets import cpu as targets

from .test_cli import run_cli

OV_MISSING = openvino_missing()
needs_openvino = pytest.mark.skipif(OV_MISSING is not None, reason=OV_MISSING or "")
FORMS = ("fp16", "int8-fp32", "int8")
FORMATS = ("ort", "onnx-cpu") if OV_MISSING else ("openvino", "ort", "onnx-cpu")


@pytest.fixture(scope="module")
def ca_targets(tmp_path_factory):
    """Coordinate Attention at every precision with every CPU target."""
    out = tmp_path_factory.mktemp("ca")
    return export("ca", out_dir=out, precisions=FORMS, calib_count=8, formats=FORMATS)


def test_every_artifact_has_its_targets_and_they_match_pytorch(ca_targets):
    report, directory = ca_targets.report, ca_targets.directory
    assert report["status"] == "ok"
    exp = open_export(directory)
    x = exp.verify_inputs(exp.cfg.verify_count)
    ref = torch_outputs(exp.card().module, x)
    for fmt in FORMATS:
        assert set(report["targets"][fmt]) == {"fp32", *FORMS}
        for precision, entry in report["targets"][fmt].items():
            assert entry["ok"] and all((directory / f).is_file() for f in entry["files"])
            # recomputed from the written file, not the job's figures
            out = run_target(fmt, directory / entry["files"][0], x)
            tol = TOLERANCES[precision] if precision != "fp32" else None
            r = compare(out, ref, tol or TOLERANCES["fp16"])
            assert r.ok, f"{fmt} {precision}: cosine {r.cosine:.8f}, max abs {r.max_abs:.3g}"
            if precision == "fp32":  # elementwise, at the export's measured FP32 tolerance
                atol = report["targets"][fmt]["fp32"]["tolerance"]["atol"]
                assert r.max_abs <= atol + 1e-3 * float(np.abs(ref).max()), r.max_abs


def one_axis_reductions(model: onnx.ModelProto) -> int:
    axes = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in model.graph.initializer}
    return sum(n.op_type == "ReduceMean" and axes.get(n.input[1]) in ([2], [3])
               for n in model.graph.node)


def test_each_target_takes_its_runtimes_graph_forms(ca_targets):
    """model.onnx keeps the TensorRT form (one-axis ReduceMean, Concat/Split); each target
    file is made from the forms TARGET_FORMS names for its runtime, and says so."""
    directory, report = ca_targets.directory, ca_targets.report
    trt = onnx.load(str(directory / "model.onnx"))
    assert one_axis_reductions(trt) == 2 and {"Concat", "Split"} <= set(op_counts(trt))
    cpu = onnx.load(str(directory / "model.cpu.onnx"))
    ops = op_counts(cpu)
    assert one_axis_reductions(cpu) == 0 and ops["AveragePool"] == 2, ops
    assert not {"Concat", "Split", "Transpose"} & set(ops), ops
    for fmt in FORMATS:
        wanted = set(targets.TARGET_FORMS[fmt])
        for precision, entry in report["targets"][fmt].items():
            # the portable CPU refits INT8 weights in every target, and only INT8 ones
            portable = {targets.PORTABLE_FORM} if precision.startswith("int8") else set()
            assert set(entry["forms"]) <= wanted | portable, (fmt, precision, entry["forms"])
            assert portable <= set(entry["forms"]) and entry["cpu"] == "portable", entry
            assert entry["forms"].get("gate_product") == (1 if "gate_product" in wanted
                                                          else None), (fmt, precision)
            if "axis_pool" in wanted:  # every precision's graph, Q/DQ and FP16 ones too
                assert entry["forms"]["axis_pool"] == 2, (fmt, precision, entry["forms"])
    fp16 = onnx.load(str(directory / "model.fp16.cpu.onnx"))
    assert one_axis_reductions(fp16) == 0


def test_ort_files_load_in_a_plain_session_with_their_operator_config(ca_targets):
    directory = ca_targets.directory
    for precision, entry in ca_targets.report["targets"]["ort"].items():
        ort_file, config = (directory / f for f in entry["files"])
        assert ort_file.suffix == ".ort" and ort_file.read_bytes()[4:8] == b"ORTM"
        session = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
        x = np.zeros(session.get_inputs()[0].shape, np.float32)
        assert np.isfinite(session.run(None, {session.get_inputs()[0].name: x})[0]).all()
        text = config.read_text()
        assert STAGING_PREFIX not in text and ort_file.name in text  # no temporary paths
        ops = {op for line in text.splitlines() if line and not line.startswith("#")
               for op in line.split(";")[2].split(",")}
        onnx_ops = {n.op_type for n in onnx.load(str(directory / ca_targets.report["files"][
            precision])).graph.node}
        # the minimal build needs every compute op of the graph (basic optimisations may
        # fold the Constant/Identity/Shape kind away)
        assert {"Conv", "HardSigmoid"} & onnx_ops <= ops, (precision, sorted(ops))
        if "QuantizeLinear" in onnx_ops:
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@needs_openvino
def test_ir_keeps_the_weights_as_the_onnx_has_them(ca_targets):
    directory = ca_targets.directory
    entries = ca_targets.report["targets"]["openvino"]

    def const_types(name):
        root = ET.parse(directory / name).getroot()
        return {layer.find("data").get("element_type") for layer in root.iter("layer")
                if layer.get("type") == "Const"}

    fp32, fp16 = const_types(entries["fp32"]["files"][0]), const_types(
        entries["fp16"]["files"][0])
    assert "f16" not in fp32, fp32  # no silent FP16 compression of an FP32 artifact
    assert "f16" in fp16, fp16
    assert "i8" in const_types(entries["int8-fp32"]["files"][0])  # INT8 weights stay INT8


@needs_openvino
def test_check_confirms_each_artifact_on_a_second_runtime(ca_targets, capsys):
    checked = verify_artifacts(ca_targets.directory)
    for precision, r in checked.items():
        runtimes = {s["runtime"] for s in r["second"]}
        own = {targets.RUNTIMES[f] for f in FORMATS}
        if precision.startswith("int8"):  # a Q/DQ TensorRT file: its integer-kernel views
            isa = {cpu_isa()["int8_dot"], cpu_isa()["openvino_int8_dot"]}
            views = runtimes - own - {targets.RUNTIMES["openvino"]}
            assert len(views) == 2 and all("integer kernels on" in v for v in views), views
            assert all(any(f"({d} 8-bit" in v for d in isa) for v in views), views
        else:
            assert runtimes == own, runtimes
        # the targets are claims on every CPU; views of FP32/FP16 graphs hold on every CPU
        assert all(s["ok"] for s in r["second"]
                   if s["target"] or not precision.startswith("int8")), (precision, r["second"])
    code, out, _ = run_cli(capsys, "check", str(ca_targets.directory))
    assert code == 0
    assert len(re.findall(r"^  model\S*\.xml: cosine .* -> ok; OpenVINO", out, re.M)) == 4, out
    assert out.splitlines()[0].startswith("CPU ") and "8-bit dot products" in out, out


def test_bench_runs_the_target_files(ca_targets):
    result = bench(ca_targets.directory, ["ortmobile-fp32", "ortmobile-int8", "ov-fp16"],
                   runs=3, warmup=1).as_dict()
    rows = {b["backend"]: b for b in result["backends"]}
    assert rows["ortmobile-int8"]["artifact"] == "model.int8.ort"
    assert rows["ortmobile-int8"]["latency"]["median_ms"] > 0
    if OV_MISSING:
        assert rows["ov-fp16"]["reason"] == OV_MISSING and rows["ov-fp16"]["latency"] is None
    else:
        assert rows["ov-fp16"]["artifact"] == "model.fp16.xml"
        assert result["ov_options"]["INFERENCE_NUM_THREADS"] == 2


def test_bench_adds_a_missing_target_to_the_export(tmp_path):
    export("se", out_dir=tmp_path, precisions=("fp16",))
    assert "targets" not in read_report(tmp_path)
    result = bench(tmp_path, ["ortmobile-fp16"], runs=2, warmup=1)
    assert result.backends[0].artifact == "model.fp16.ort" and result.backends[0].latency
    report = read_report(tmp_path)
    assert report["config"]["formats"] == ["ort"] and report["targets"]["ort"]["fp16"]["ok"]


def test_a_target_outside_tolerance_is_recorded_and_not_written(tmp_path, monkeypatch, capsys):
    run = stages.run_target

    def wrong_fp16(fmt, path, x):  # an ORT-format file that computes something else
        out = run(fmt, path, x)
        return -out if path.name == "model.fp16.ort" else out

    monkeypatch.setattr(stages, "run_target", wrong_fp16)
    code, _, err = run_cli(capsys, "export", "se", "-o", str(tmp_path), "--precision", "fp16",
                           "--format", "ort")
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1].startswith("deploy-attn: error: se: "), err
    assert [line for line in lines if "error" in line] == lines[-1:], err  # one error line
    assert re.search(r"the ort form of model\.fp16\.onnx: vs PyTorch cosine -1\.0+, .*not "
                     r"written.*the ONNX files are written", err), err
    report = read_report(tmp_path)
    assert report["status"] == "target-rejected"
    entry = report["targets"]["ort"]["fp16"]
    assert not entry["ok"] and entry["files"] == [] and "outside fp16's tolerance" in entry[
        "reason"]
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.onnx", "model.fp16.onnx", "model.ort"} <= names
    assert not names & {"model.fp16.ort", "model.fp16.required_operators.config"}, names
    assert not any(n.startswith(STAGING_PREFIX) for n in names)
    result = bench(tmp_path, ["ortmobile-fp16"], runs=2, warmup=1)
    assert result.backends[0].latency is None  # no latency for a file known wrong
    assert result.backends[0].reason == entry["reason"]


def test_unknown_format_and_missing_openvino_are_one_line_errors(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(capsys, "export", "se", "-o", str(tmp_path), "--format", "tflite")
    assert code == 1 and "unknown format tflite; choose from openvino, ort, onnx-cpu" in err
    with pytest.raises(ConfigError):
        export("se", out_dir=tmp_path, formats=("coreml",))

    def missing():
        raise OpenVINOUnavailable("OpenVINO is not installed (test): pip install "
                                  "'deploy-attn[openvino]'")

    # OpenVINO missing for the whole process: the export's check and every later probe
    monkeypatch.setattr(jobs_export, "require_openvino", missing)
    monkeypatch.setattr(openvino, "require_openvino", missing)
    code, _, err = run_cli(capsys, "export", "se", "-o", str(tmp_path / "ov"), "--format",
                           "openvino")
    assert code == 1 and err.strip().endswith("pip install 'deploy-attn[openvino]'"), err
    assert not (tmp_path / "ov" / "report.json").exists()  # refused before any work
    export("se", out_dir=tmp_path / "plain")
    checked = verify_artifacts(tmp_path / "plain")
    assert checked["fp32"]["second"] == [{"file": "model.onnx", "runtime": "OpenVINO",
                                          "skipped": openvino_missing()}]
    row = bench(tmp_path / "plain", ["ov-fp32"], runs=2, warmup=1).backends[0]
    assert row.latency is None and "not installed" in row.reason


def test_write_ort_refuses_a_file_it_cannot_convert(tmp_path):
    from onnx import TensorProto, helper

    bad = tmp_path / "model.onnx"
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                              [value("x", TensorProto.FLOAT, [1])],
                              [value("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(bad))
    with pytest.raises(ArtifactError, match="no ORT-format file.*NoSuchOp"):
        targets.write_ort(bad, tmp_path / "model.ort")
    with pytest.raises(ArtifactError, match="invalid ONNX model.*NoSuchOp"):
        targets.write_target("ort", bad)  # refused on reading, before its graph forms
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_target_forms_measured_here_decide_each_targets_graph(tmp_path, monkeypatch):
    """--target-forms measure: each speed form that changes the graph is timed on the
    target's runtime against the graph without it and kept where it is HELPS faster; the
    required forms stay whatever the timing. The timings are replaced (axis_pool 1.5x
    faster, every other form 2 % slower) so the choice is known; the files must follow it."""
    from deploy_attn.targets import measure as measure_forms

    timed = []

    def times(runners, runs, warmup):
        timed.append(sorted(runners))
        return {k: [1.0 / 1.5 if k == "axis_pool" else 1.0 if k == measure_forms.BASE
                    else 1.02] * runs for k in runners}

    monkeypatch.setattr(measure_forms, "interleaved_times", times)
    result = export("ca", out_dir=tmp_path, precisions=("int8-cpu",), calib_count=8,
                    formats=FORMATS, target_forms="measure")
    report, directory = result.report, result.directory
    assert report["status"] == "ok", report["status"]
    for fmt in FORMATS:
        measured = report["target_forms"][fmt]
        required = list(targets.REQUIRED_FORMS[fmt])
        assert measured["forms"] == required + ["axis_pool"], (fmt, measured)
        assert measured["speedup"]["axis_pool"] == 1.5 and set(measured["speedup"]) & \
            set(required) == set(), measured
        for precision, entry in report["targets"][fmt].items():
            assert set(entry["forms"]) - {targets.PORTABLE_FORM} <= set(measured["forms"])
            if precision != "int8-cpu":  # that one was quantized in its forms already
                assert entry["forms"]["axis_pool"] == 2, (fmt, entry["forms"])
    assert ["axis_pool", "gate_product", "unsplit", measure_forms.BASE] in timed  # onnx-cpu's
    cpu = op_counts(onnx.load(str(directory / "model.cpu.onnx")))
    assert cpu["AveragePool"] == 2 and {"Concat", "Split"} <= set(cpu), cpu  # unsplit dropped
    int8_cpu = op_counts(onnx.load(str(directory / "model.int8-cpu.onnx")))
    assert "Concat" in int8_cpu and "ReduceMean" not in int8_cpu, int8_cpu  # onnx-cpu's forms
    if "openvino" in FORMATS:  # unsplit is required there: CA's Concats gone
        assert report["targets"]["openvino"]["fp32"]["forms"]["unsplit"] > 0
    with pytest.raises(ConfigError, match="--target-forms does nothing without"):
        export("ca", out_dir=tmp_path / "none", target_forms="measure")
