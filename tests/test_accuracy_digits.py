"""Accuracy parity on real labelled data, through ``deploy-attn accuracy``'s own code.
Random weights make parity easy to fake, so registered backbones with attention are
trained on scikit-learn's handwritten digits (written as an ImageFolder, and as images +
masks for segmentation), exported through the real job (FP32, FP16, both INT8 forms,
calibrated on training images) and evaluated on the test images.

Four cases: mobilenetv2_ca classifies the digits (in the default suite, exported and
evaluated with the CLI); mobilenext_ca and resnet50_se classify them and unet_cbam
segments them (per pixel: background or the digit's class), marked slow (about 1, 3 and 2
minutes)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploy_attn import cli, open_export
from deploy_attn.commands.accuracy import evaluate
from deploy_attn.commands.labelled import dataset_arrays, load_dataset
from deploy_attn.datasets import TrainConfig
from deploy_attn.exportdir.layout import ACCURACY_FILE
from deploy_attn.runtime.backends import TARGET_PREFIXES
from deploy_attn.runtime.openvino import openvino_missing
from deploy_attn.runtime.pytorch import torch_outputs
from deploy_attn.sources import default_preprocess

from .conftest import DIGITS_SIZE, DIGITS_WORKER, one_thread

pytestmark = DIGITS_WORKER

SIZE = DIGITS_SIZE
CALIB_COUNT = 128
# every CPU target: OpenVINO's too where it is installed (CI installs it)
FORMATS = ("ort", "onnx-cpu") + (() if openvino_missing() else ("openvino",))
TARGET_PREFIX = {fmt: prefix for prefix, fmt in TARGET_PREFIXES.items()}
PRE = default_preprocess("backbone", (1, 1, *SIZE))  # the export's, for 1-channel images


@dataclass(frozen=True)
class Case:
    name: str
    segment: bool  # per-pixel labels: 0 background, 1 + digit on the digit's strokes
    train: TrainConfig
    min_accuracy: float  # percent (top-1, or mIoU): below this the parity figures prove little
    refused: tuple[tuple[str, str], ...] = ()  # (format, precision) targets expected refused
    portable_drop: float = 0.5  # points the portable refit may cost the CPU INT8 targets
    # (against the same precision's TensorRT-form file)

    @property
    def classes(self) -> int:
        return 11 if self.segment else 10


CASES = [
    pytest.param(Case("mobilenetv2_ca", False, TrainConfig(3, 0.05), 90.0), id="mobilenetv2_ca"),
    # MobileNeXt's sandglass blocks with CA after the first depthwise conv (about 1 minute)
    pytest.param(Case("mobilenext_ca", False, TrainConfig(4, 0.05), 85.0), id="mobilenext_ca",
                 marks=pytest.mark.slow),
    pytest.param(Case("resnet50_se", False, TrainConfig(3, 0.05), 90.0), id="resnet50_se",
                 marks=pytest.mark.slow),
    # Per-pixel digit classes need the bridge's global context; SGD left the UNet near
    # chance; AdamW learns them (mIoU over background + 10 digit classes; chance ~ 10).
    # OpenVINO's INT8 IRs need the max_after_qdq form (CBAM's quantized channel max: 0.96
    # without it, where ONNX Runtime gives 0.9994). One-thread training is reproducible on
    # one machine, not across ISAs: mIoU 92.87 on Zen 4, 72.05 on Sapphire Rapids (AMX), so
    # the floor is "it learned". The portable refit costs this UNet more than 0.5 points
    # (AMX machine: its exact graph 71.32 -> 68.72, spread over 55 layers at <= 0.9 each;
    # README, "CPUs"): the measured cost is the expectation until a form removes it.
    pytest.param(Case("unet_cbam", True, TrainConfig(10, 3e-3, "adamw"), 60.0,
                      portable_drop=4.0),
                 id="unet_cbam", marks=pytest.mark.slow),
]


@pytest.fixture(scope="session", params=CASES)
def case(request) -> Case:
    return request.param


def _data(case: Case, digit_sets, split: str) -> Path:
    return digit_sets[split].seg if case.segment else digit_sets[split].folder


@pytest.fixture(scope="session")
def checkpoint(case, digits_checkpoint) -> Path:
    """The case's model trained on the training split (once per session)."""
    return digits_checkpoint(case.name, case.train, case.segment)


@pytest.fixture(scope="session")
def exported(case, checkpoint, digit_sets, tmp_path_factory) -> Path:
    """``deploy-attn export NAME --weights CKPT`` with FP16 and both INT8 forms,
    calibrated on the training images (the ImageFolder: picks spread over the classes) and
    verified on 32 others; ``--exclude auto`` leaves the most sensitive nodes FP32 if
    INT8 misses its cosine threshold; ``--format`` adds every CPU target;
    ``--dynamic-batch`` lets the accuracy runs take 32 images at a time (2-core Zen 3: 27 s
    for the 17 forms against 63 s one image at a time, for 3 s more export). Each passes its
    parity check (exit 0), except where the case names a target it expects refused (exit
    1, status target-rejected, the ONNX files written)."""
    out = tmp_path_factory.mktemp("digits-export")
    calib = _data(case, digit_sets, "train")
    calib = calib / "images" if case.segment else calib
    t0 = time.perf_counter()
    with one_thread():
        code = cli.main(["export", case.name, "--channels", "1", "--input-size", *map(str, SIZE),
                         "--num-classes", str(case.classes), "--weights", str(checkpoint),
                         "--precision", "fp16,int8-fp32,int8", "--calib-dir", str(calib),
                         "--calib-count", str(CALIB_COUNT), "--exclude", "auto", "--format",
                         ",".join(FORMATS), "--dynamic-batch", "-o", str(out)])
    report = json.loads((out / "report.json").read_text())
    refused = {(fmt, p) for fmt, entries in report.get("targets", {}).items()
               for p, e in entries.items() if not e["ok"]}
    expected = set(case.refused) if "openvino" in FORMATS else set()
    assert refused == expected and code == (1 if expected else 0), (code, refused)
    print(f"[digits] export (fp32, fp16, int8-fp32, int8) in {time.perf_counter() - t0:.1f} s")
    return out


def test_digit_images_are_what_the_pipeline_reads(digit_sets):
    """The ImageFolder and the masks hold what the digits are: every class, 1-channel
    images at SIZE, masks 0 on the background and 1 + the digit on the stroke pixels."""
    from PIL import Image

    for split, count in (("train", 1257), ("test", 540)):
        dataset = load_dataset(digit_sets[split].folder, "classifier", 10)
        assert len(dataset.images) == count and dataset.classes == [str(k) for k in range(10)]
        assert {(im.mode, im.size) for im in map(Image.open, dataset.images[:20])} == \
            {("L", SIZE[::-1])}
        seg = load_dataset(digit_sets[split].seg, "segmentation", 11)
        x, masks = dataset_arrays(seg, PRE)
        stroke = x[:, 0] > 0.0  # pixel / 255 > 0.5 under the mean 0.5, std 0.5 preprocessing
        np.testing.assert_array_equal(masks > 0, stroke)
    # the last split read is the test split: its masks label each digit's own class
    label_of = {p.name: int(p.parent.name) for p in dataset.images}
    names = [p.name for p in seg.images]
    assert len(names) == 540
    assert all(set(np.unique(m)) <= {0, label_of[n] + 1} for m, n in zip(masks, names))


def _independent_metric(case: Case, directory: Path, digit_sets) -> float:
    """PyTorch's test accuracy (or mIoU) computed here without the accuracy module's
    metrics: the check that the command measures what it says."""
    model = open_export(directory).card().module
    dataset = load_dataset(_data(case, digit_sets, "test"),
                           "segmentation" if case.segment else "classifier", case.classes)
    x, y = dataset_arrays(dataset, PRE)
    with one_thread():
        pred = torch_outputs(model, x).argmax(1)
    if not case.segment:
        return 100.0 * float((pred == y).mean())
    ious = []
    for k in range(case.classes):
        inter, union = ((pred == k) & (y == k)).sum(), ((pred == k) | (y == k)).sum()
        if union:
            ious.append(inter / union)
    return 100.0 * float(np.mean(ious))


def test_digits_accuracy_parity(case, exported, digit_sets, capfd):
    test_data = _data(case, digit_sets, "test")
    if case.name == "mobilenetv2_ca":  # the command itself, as a user runs it
        with one_thread():
            code = cli.main(["accuracy", str(exported), "--dataset", str(test_data)])
        out = capfd.readouterr().out
        assert code == 0 and "pytorch" in out and "int8-fp32" in out, out
        print(out)
        result = json.loads((exported / ACCURACY_FILE).read_text())
    else:
        with one_thread():
            result = evaluate(exported, test_data).as_dict()
    forms = {f["form"]: f for f in result["forms"]}
    onnx_forms = ("fp32", "fp16", "int8-fp32", "int8")
    target_forms = {f"{TARGET_PREFIX[fmt]}{p}" for fmt in FORMATS for p in onnx_forms}
    assert set(forms) == {"pytorch", *onnx_forms} | target_forms, sorted(forms)
    metric = "miou" if case.segment else "top1"
    scored = {k: f for k, f in forms.items() if f["status"] == "ok"}
    figures = {k: round(f["metrics"][metric], 2) for k, f in scored.items()}
    drops = [(k, round(f["drop"], 2), f["drop_ci95"]) for k, f in scored.items() if k != "pytorch"]
    print(f"[digits] {case.name} {metric} on {result['dataset']['images']} test images: "
          f"{figures}; drops {drops}")

    independent = _independent_metric(case, exported, digit_sets)
    assert abs(forms["pytorch"]["metrics"][metric] - independent) < 1e-6, (independent, figures)
    assert forms["pytorch"]["metrics"][metric] >= case.min_accuracy, figures
    fp32 = forms["fp32"]
    assert fp32["agreement"] >= (99.99 if case.segment else 100.0), fp32
    refused = {f"{TARGET_PREFIX[fmt]}{p}" for fmt, p in case.refused}
    for form in refused & set(forms):  # not written: listed, with the reason, not scored
        assert forms[form]["status"] == "skipped" and "outside" in forms[form]["reason"]
    # each form within its accuracy threshold, except a portable CPU INT8 target, whose
    # refit's cost is held to the case's portable_drop in test_digits_portable_... (the
    # UNet's is above the threshold: README)
    portable = {f"{TARGET_PREFIX[fmt]}{p}" for fmt in FORMATS for p in ("int8-fp32", "int8")}
    for form in ("fp16", "int8-fp32", "int8", *(target_forms - refused)):  # the drop checks
        assert forms[form]["status"] == "ok", (form, forms[form])
        assert forms[form]["ok"] or form in portable, (form, forms[form])
        lo, hi = forms[form]["drop_ci95"]
        assert lo <= forms[form]["drop"] <= hi


# cosine: an INT8 file on integer kernels vs its graph computed exactly. Integer kernels
# requantize each layer's output where the exact graph keeps FP32 until the next Q. The graph
# must be the one the runtime computes: ORT's converter rounds FP32-scale Conv biases to their
# accumulator's grid (WeightBiasQuantization), OpenVINO's CPU plugin computes an FP16
# remainder in FP32. Against the ONNX graph instead, a model sensitive to sub-LSB changes
# (digits mobilenetv2_ca trained on 2 threads on Zen 4: a BatchNorm-folded depthwise channel
# at weight scale 5.8) was 1.4e-3 off on the .ort file and 1.3e-3 on the OpenVINO int8 IR;
# against the graph each runtime computes, 6e-9 and 7e-5. Saturation is caught apart from
# this, exactly (the saturation report asserted above, tests/test_saturation.py).
INTEGER_KERNELS = 1e-3


def _exact(model, x):
    """A graph's output on ``x`` with each op as the graph states it (the TensorRT
    emulation: exact integer products, the same on every CPU); ``model`` a ModelProto or a
    file (an ORT-format file: the graph it stores)."""
    from deploy_attn.runtime.ort import exact_session, ort_outputs

    return ort_outputs(exact_session(model), x)


def _widened(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every FP16 initializer, constant, cast and value FP32, in place: an FP16
    remainder as OpenVINO's CPU plugin computes it at FP32 inference precision."""
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for t in model.graph.initializer:
        if t.data_type == f16:
            t.CopyFrom(onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(t).astype(np.float32), t.name))
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "to" and a.i == f16:
                a.i = f32
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f16:
                a.t.CopyFrom(onnx.numpy_helper.from_array(
                    onnx.numpy_helper.to_array(a.t).astype(np.float32)))
    g = model.graph
    for v in (*g.value_info, *g.input, *g.output):
        if v.type.tensor_type.elem_type == f16:
            v.type.tensor_type.elem_type = f32
    return model


def _own_graph_cosine(exported: Path, fmt: str, precision: str, x, ref) -> float:
    """The cosine of the graph a target file was made from (its forms and the portable
    weights), computed exactly as its runtime reads it (OpenVINO: FP16 as FP32): what the
    file must give on any CPU."""
    from deploy_attn.core.numerics import compare
    from deploy_attn.targets.cpu import target_graph

    model, _ = target_graph(fmt, exported / f"model.{precision}.onnx", "portable")
    return compare(_exact(_widened(model) if fmt == "openvino" else model, x), ref).cosine


def test_digits_portable_cpu_targets_keep_their_accuracy(case, exported, digit_sets):
    """Done-when: the portable CPU INT8 targets stay within the case's portable_drop points
    of the test set's metric on every CPU (their integer kernels cannot saturate), and the
    export's saturation report says so while predicting it for the TensorRT files. Within
    portable_drop of PyTorch, or, where the calibration itself lost more, of the same
    precision's TensorRT-form file (the graph unrefitted, computed exactly; its own drop is
    held to the accuracy check's threshold by test_digits_accuracy_parity). Each machine
    trains its own model and one image is 0.19 points, so either reference alone fails by
    chance: an AMX Xeon's int8-fp32 file lost 0.74 points and its portable OpenVINO IR 0.56
    (a refit cost of -0.19); a Zen 4's int8-fp32 file gained 0.93 and its portable .ort
    file lost 0.19 (a cost of 1.11, within 0.5 of PyTorch)."""
    report = json.loads((exported / "report.json").read_text())
    for precision in ("int8-fp32", "int8"):
        assert "saturation" in report["precisions"][precision], precision
        for fmt, entries in report["targets"].items():
            sat = entries[precision]["saturation"]
            assert sat["saturating_layers"] == 0 and sat["layers"], (fmt, precision, sat)
    result = json.loads((exported / ACCURACY_FILE).read_text()) if (
        exported / ACCURACY_FILE).is_file() else None
    if result is None:
        with one_thread():
            result = evaluate(exported, _data(case, digit_sets, "test")).as_dict()
    refused = {f"{TARGET_PREFIX[fmt]}{p}" for fmt, p in case.refused}
    drops = {f["form"]: f["drop"] for f in result["forms"]
             if f["status"] == "ok" and f.get("drop") is not None}
    for fmt in FORMATS:
        for precision in ("int8-fp32", "int8"):
            form = f"{TARGET_PREFIX[fmt]}{precision}"
            if form not in refused:
                drop, cost = drops[form], drops[form] - drops[precision]
                assert min(drop, cost) <= case.portable_drop, (form, drop, precision,
                                                              drops[precision])
    print(f"[digits] {case.name} INT8 drops (points) against PyTorch: "
          f"{ {k: round(v, 2) for k, v in drops.items() if 'int8' in k} }")


def test_digits_ort_format_files_compute_as_their_graph(case, exported):
    """Trained weights are where FP16 Q/DQ meets ORT's WeightBiasQuantization (its bias /
    scale quotient overflows FP16): the converter must leave it out, so the ORT-format file
    computes what its graph states: FP32/FP16 files the ONNX file's cosine, the INT8 + FP16
    one its portable graph's exact cosine, the INT8 + FP32 one that of the graph it stores
    (their integer kernels, on any CPU)."""
    from deploy_attn.core.numerics import compare

    report = json.loads((exported / "report.json").read_text())
    ort = report["targets"]["ort"]
    assert set(ort) == {"fp32", "fp16", "int8-fp32", "int8"}, sorted(ort)
    exp = open_export(exported)
    x = exp.verify_inputs(exp.cfg.verify_count)
    ref = torch_outputs(exp.card().module, x)
    for precision, entry in ort.items():
        cosine = entry["results"][0]["cosine"]
        if precision == "int8-fp32":
            # the graph the converter stored: WeightBiasQuantization's INT32 biases (a
            # rounding the graph states), on integer kernels where the replayed fusions run
            own = compare(_exact(exported / entry["files"][0], x), ref).cosine
            allowed = INTEGER_KERNELS
        elif precision == "int8":  # FP16 scales: stored without WeightBiasQuantization
            own, allowed = _own_graph_cosine(exported, "ort", precision, x, ref), 1e-4
        else:
            own, allowed = report["precisions"][precision]["results"][0]["cosine"], 1e-4
        assert entry["ok"] and abs(cosine - own) < allowed, (precision, cosine, own)


@pytest.mark.skipif(openvino_missing() is not None, reason=openvino_missing() or "")
def test_digits_openvino_int8_computes_as_its_graph(case, exported):
    """OpenVINO's low-precision transformations ran CA's pool Concat in U8 and put the
    TensorRT-form Q/DQ graph at cosine 0.989 on the trained mobilenetv2_ca (refused at the
    0.99 threshold); the OpenVINO target's graph has no Concat there (``unsplit``), and its
    IR computes as that graph states, on any CPU (portable weights: no saturation)."""
    from deploy_attn.core.numerics import compare
    from deploy_attn.precision.saturation import portable_weights
    from deploy_attn.runtime.openvino import ov_compile, ov_outputs

    report = json.loads((exported / "report.json").read_text())
    exp = open_export(exported)
    x = exp.verify_inputs(exp.cfg.verify_count)
    ref = torch_outputs(exp.card().module, x)
    for precision in ("int8-fp32", "int8"):
        entry = report["targets"]["openvino"][precision]
        if ("openvino", precision) in case.refused:
            continue
        own = _own_graph_cosine(exported, "openvino", precision, x, ref)
        cosine = entry["results"][0]["cosine"]
        trt = onnx.load(str(exported / f"model.{precision}.onnx"))
        portable_weights(trt)  # the TensorRT form with the same weights: only the forms differ
        path = exported.parent / f"trt-form-{precision}.onnx"
        path.write_bytes(trt.SerializeToString())
        trt_form = compare(ov_outputs(ov_compile(path), x), ref).cosine
        print(f"[digits] {case.name} {precision} on OpenVINO: TensorRT-form graph "
              f"{trt_form:.5f}, target ({entry['forms']}) {cosine:.5f}, its graph exactly "
              f"{own:.5f}")
        assert entry["ok"] and abs(cosine - own) < INTEGER_KERNELS, (precision, cosine, own)
        # how far below the TensorRT form falls is the CPU's: 0.9965 against the target's
        # 0.9990 with OpenVINO limited to AVX512_CORE_VNNI, the two equal (0.99872) on AMX
        # kernels; the target is never the worse one
        if case.name == "mobilenetv2_ca":
            assert entry["forms"].get("unsplit") and trt_form < cosine + 1e-4, (trt_form,
                                                                               cosine)
