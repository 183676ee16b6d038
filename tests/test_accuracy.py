"""`deploy-attn accuracy`: datasets in each layout, the statistics, the report section,
and bad input (one line, non-zero exit, nothing written)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import deploy_attn
from deploy_attn import cli
from deploy_attn.commands import accuracy
from deploy_attn.commands.accuracy import Predictions, compare_forms
from deploy_attn.commands.labelled import Dataset
from deploy_attn.exportdir.layout import ACCURACY_FILE

SIZE = 16


def _rgb(path, seed):
    arr = np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A 5-class classifier and a 3-class segmenter (user modules), each exported with
    FP16 and INT8, and an attention module export (no image head)."""
    root = tmp_path_factory.mktemp("acc")
    cls = deploy_attn.export("tests.foreign_models:SmallNet", out_dir=root / "cls",
                             input_size=(SIZE, SIZE), precisions=("fp16", "int8"),
                             calib_count=8)
    seg = deploy_attn.export("tests.foreign_models:TinySegmenter", out_dir=root / "seg",
                             input_size=(SIZE, SIZE), precisions=("fp16",), calib_count=4,
                             task="segmentation")  # 3 classes from 3 channels: say so
    feat = deploy_attn.export("se", out_dir=root / "feat")
    return cls.directory, seg.directory, feat.directory


def _image_folder(root, classes=5, per_class=4, empty=None):
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        if c != empty:
            for i in range(per_class):
                _rgb(root / f"c{c}" / f"{i}.png", 10 * c + i)
    return root


def _seg_folder(root, n=6, bad_value=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        _rgb(root / "images" / f"{i}.png", i)
        mask = np.random.default_rng(i).integers(0, 3, (SIZE, SIZE), dtype=np.uint8)
        if bad_value is not None and i == 2:
            mask[0, 0] = bad_value
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def test_classification_through_the_cli_and_the_report(exports, tmp_path, capfd):
    cls, _, _ = exports
    data = _image_folder(tmp_path / "data")
    code = cli.main(["accuracy", str(cls), "--dataset", str(data), "--max-drop", "100"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    for form in ("pytorch", "fp32", "fp16", "int8"):
        assert any(line.startswith(form + " ") for line in captured.out.splitlines()), form
    # the progress bar: 20 images for each of the 4 forms
    assert "accuracy foreign_models.SmallNet" in captured.err and "80/80" in captured.err
    result = json.loads((cls / ACCURACY_FILE).read_text())
    forms = {f["form"]: f for f in result["forms"]}
    assert forms["fp32"]["agreement"] == 100.0 and forms["fp32"]["drop"] == 0.0
    assert set(forms["pytorch"]["metrics"]) == {"top1", "top5"}  # 5 classes: top-5 too
    assert forms["pytorch"]["metrics"]["top5"] == 100.0
    out = tmp_path / "report"
    assert cli.main(["report", str(cls), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "### Accuracy" in md and "(accuracy-foreign_models.SmallNet.png)" in md
    assert (out / "accuracy-foreign_models.SmallNet.png").stat().st_size > 1000


def test_labels_csv_and_names(exports, tmp_path):
    cls, _, _ = exports
    data = tmp_path / "csv"
    data.mkdir()
    rows = ["file,label"]
    for i in range(10):
        _rgb(data / f"{i}.png", i)
        rows.append(f"{i}.png,{i % 5}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    result = accuracy.evaluate(cls, data, save=False)
    assert result.dataset["layout"] == "labels.csv" and result.dataset["images"] == 10
    direct = accuracy.evaluate(cls, _image_folder(tmp_path / "folder"), save=False)
    assert direct.dataset["layout"] == "ImageFolder"


def test_segmentation_miou(exports, tmp_path):
    _, seg, _ = exports
    result = accuracy.evaluate(seg, _seg_folder(tmp_path / "seg"), save=False)
    forms = {f["form"]: f for f in result.forms}
    assert set(forms["pytorch"]["metrics"]) == {"pixel_accuracy", "miou"}
    assert forms["fp32"]["agreement"] > 99.9 and forms["fp32"]["mcnemar_p"] is None
    with_void = accuracy.evaluate(seg, _seg_folder(tmp_path / "void", bad_value=255),
                                  ignore_index=255, save=False)
    assert with_void.dataset["ignore_index"] == 255


def test_statistics_on_known_predictions():
    """A form wrong on 6 of 40 images of class 2 where the reference is right: a 15-point
    drop, McNemar's exact p = 2 * 0.5^6, an interval around it, class 2 named."""
    from scipy.stats import binomtest

    labels = np.repeat(np.arange(4), 10)
    ref = np.eye(4)[labels] * 5.0
    test = ref.copy()
    wrong = np.flatnonzero(labels == 2)[:6]
    test[wrong] = np.eye(4)[(labels[wrong] + 1) % 4] * 5.0
    dataset = Dataset(None, "classification", [None] * 40, ["a", "b", "c", "d"], labels)
    entry = compare_forms(Predictions(logits=[ref]), Predictions(logits=[test]), dataset)
    assert entry["drop"] == pytest.approx(15.0) and entry["agreement"] == pytest.approx(85.0)
    assert entry["mcnemar_p"] == pytest.approx(binomtest(6, 6, 0.5).pvalue) == 2 * 0.5 ** 6
    lo, hi = entry["drop_ci95"]
    assert 0 < lo < 15 < hi
    assert entry["worst_classes"] == [{"class": "c", "drop": pytest.approx(60.0)}]


def test_a_drop_beyond_max_drop_exits_1(exports, tmp_path, capfd, monkeypatch):
    cls, _, _ = exports
    real = accuracy.compare_forms

    def worse(*args, **kwargs):
        return {**real(*args, **kwargs), "drop": 5.0}

    monkeypatch.setattr(accuracy, "compare_forms", worse)
    code = cli.main(["accuracy", str(cls), "--dataset", str(_image_folder(tmp_path / "d"))])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("deploy-attn: error:") and "by 5.00 points" in err[-1]


@pytest.mark.parametrize("case", ["missing", "no-layout", "empty-class", "fewer", "more",
                                  "unreadable", "mask-values", "no-masks", "features",
                                  "unknown-precision"])
def test_bad_datasets_are_one_line(exports, tmp_path, capfd, case):
    cls, seg, feat = exports
    target, data = cls, tmp_path / "data"
    message = {"missing": "dataset folder does not exist", "no-layout": "no class subfolders",
               "empty-class": "hold no", "fewer": "4 class folders", "more": "6 class folders",
               "unreadable": "not a readable image", "mask-values": "mask values 7",
               "no-masks": "needs images/ and masks/", "features": "feature maps",
               "unknown-precision": "has no int8-cpu artifact"}[case]
    extra = []
    if case == "no-layout":
        data.mkdir()
        _rgb(data / "a.png", 0)
    elif case == "empty-class":
        _image_folder(data, empty=3)
    elif case in ("fewer", "more"):
        _image_folder(data, classes=4 if case == "fewer" else 6)
    elif case == "unreadable":
        _image_folder(data)
        (data / "c1" / "0.png").write_bytes(b"not a png")
    elif case == "mask-values":
        target = seg
        _seg_folder(data, bad_value=7)
    elif case == "no-masks":
        target = seg
        _image_folder(data)
    elif case == "features":
        target = feat
        _image_folder(data)
    elif case == "unknown-precision":
        _image_folder(data)
        extra = ["--precisions", "int8-cpu"]
    before = sorted(p.name for p in target.iterdir())
    code = cli.main(["accuracy", str(target), "--dataset", str(data), *extra])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("deploy-attn: error:"), err
    assert message in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in target.iterdir()) == before  # nothing written


def test_cpu_target_files_are_scored_on_their_runtimes(tmp_path):
    from deploy_attn.runtime.openvino import openvino_missing

    formats = ("onnx-cpu", "ort") + (() if openvino_missing() else ("openvino",))
    cls = deploy_attn.export("tests.foreign_models:SmallNet", out_dir=tmp_path / "cls",
                             input_size=(SIZE, SIZE), precisions=("fp16",),
                             formats=formats).directory
    result = accuracy.evaluate(cls, _image_folder(tmp_path / "data"), save=False)
    forms = {f["form"]: f for f in result.forms}
    prefixes = {"onnx-cpu": "ortcpu", "ort": "ortmobile", "openvino": "ov"}
    for fmt in formats:
        for precision in ("fp32", "fp16"):
            f = forms[f"{prefixes[fmt]}-{precision}"]
            assert f["status"] == "ok" and f["ok"], f
            # an FP32 target scores as PyTorch does: same predictions on all 20 images
            if precision == "fp32":
                assert f["agreement"] == 100.0 and f["drop"] == 0.0, f
    assert forms["ortcpu-fp16"]["artifact"] == "model.fp16.cpu.onnx"
