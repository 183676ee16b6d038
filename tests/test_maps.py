"""Attention maps: declared per module, captured by hooks, found in every artifact by the
exporter's scopes, compared with PyTorch's, drawn, and used to localise an INT8 loss."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import deploy_attn
from deploy_attn import cli
from deploy_attn.checks.drift import drifting_site
from deploy_attn.commands.maps import evaluate_maps, maps_job
from deploy_attn.exportdir.layout import MAPS_FILE
from deploy_attn.exportdir.reader import open_export
from deploy_attn.map_capture import capture, declared_maps
from deploy_attn.models import create_model

from .conftest import ATTENTION_NAMES, DIGITS_SIZE, DIGITS_WORKER, by_module, module_group

OPENVINO = importlib.util.find_spec("openvino") is not None


def _png_ok(path: Path) -> tuple[int, int]:
    """A figure that rendered: its size, after checking its pixels are not all one colour."""
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 5, f"{path} is (nearly) one colour"
    return img.size


def test_every_attention_module_declares_maps():
    for name in ATTENTION_NAMES:
        sites = declared_maps(create_model(name))
        assert sites, f"{name} declares no attention map"


def test_hooks_capture_without_touching_the_model():
    model = create_model("mobilenetv2_ca", input_size=(32, 32))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = capture(model, np.random.default_rng(0).standard_normal((2, 3, 32, 32), np.float32))
    sites = declared_maps(model)
    assert len(sites) == 2 * 16 and set(got.maps) == {s.key for s in sites}
    a_h = got.maps["features.2.conv.2:a_h"]
    assert a_h.shape[0] == 2 and a_h.shape[-1] == 1 and 0 < a_h.min() <= a_h.max() < 1
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", by_module(ATTENTION_NAMES))
def test_fp32_maps_of_every_module_match_pytorch(name, export_cache):
    """Every declared map of every module is found in the exported graph by its scope, and
    its FP32 value (ONNX Runtime, and OpenVINO where installed) is within 1e-4 of PyTorch's."""
    directory = export_cache(name).directory
    exp = open_export(directory)
    result = evaluate_maps(exp, exp.verify_inputs(2), {"source": "seeded", "count": 2})
    assert not result.skipped, result.skipped
    assert len(result.sites) == len(declared_maps(create_model(name)))
    assert result.runtimes == (["onnxruntime", "openvino"] if OPENVINO else ["onnxruntime"])
    for site in result.sites:
        for runtime, by_precision in site["results"].items():
            r = by_precision["fp32"]
            assert r["ok"] and r["max_abs"] <= 1e-4, (name, site["map"], runtime, r)
    # the deployable artifact is untouched: only its graph output
    assert [o.name for o in onnx.load(directory / "model.onnx").graph.output] == ["output"]


def test_maps_command_with_an_image_draws_every_site(tmp_path, capsys):
    """`deploy-attn maps NAME --image` on a model not exported yet: FP32/FP16/INT8 built in a
    scratch folder (generated weights: INT8 misses its threshold, and is still mapped), the
    figures and maps.json written, and nothing that looks like an export left. MobileNetV3
    small with CA (9 blocks, a_h and a_w each): 14.7 s against mobilenetv2_ca's 20.4 s for
    its 16 (the command on an AMX Xeon, one thread)."""
    from PIL import Image

    image = tmp_path / "digit.png"
    yy, xx = np.mgrid[0:48, 0:48]
    Image.fromarray(np.stack([(xx * 5) % 256, (yy * 5) % 256, (xx + yy) % 256], -1)
                    .astype(np.uint8)).save(image)
    out = tmp_path / "out"
    code = cli.main(["maps", "mobilenetv3_small_ca", "--input-size", "32", "32",
                     "--image", str(image), "-o", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "first map beyond its tolerance" in printed.out and "scratch folder" in printed.out
    data = json.loads((out / MAPS_FILE).read_text())
    assert data["precisions"] == ["fp32", "fp16", "int8"] and len(data["sites"]) == 2 * 9
    assert data["input"]["source"] == f"image {image}"
    for site in data["sites"]:
        assert site["results"]["onnxruntime"]["fp32"]["max_abs"] <= 1e-4, site
    figures = sorted((out / "maps").glob("*.png"))
    assert len(figures) == 9 and {s["figure"] for s in data["sites"]} == \
        {f"maps/{f.name}" for f in figures}
    width, height = _png_ok(figures[0])
    assert width > 400 and height > 200
    assert sorted(p.name for p in out.iterdir()) == ["maps", MAPS_FILE]


@module_group("ca")
def test_maps_bad_input_is_one_line(tmp_path, capsys, export_cache):
    directory = export_cache("ca").directory
    code = cli.main(["maps", str(directory), "--image", str(tmp_path / "none.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "feature maps, not images" in err[0], err
    code = cli.main(["maps", str(directory), "--precisions", "int8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "has no int8 artifact" in err[0], err


# --- localising an INT8 loss on a trained model ------------------------------------------------
@pytest.fixture(scope="module")
def digits_export(digit_sets, digits_checkpoint, tmp_path_factory):
    """mobilenetv2_ca trained on the digits (the accuracy test's checkpoint: trained once
    per session), exported with INT8 (FP32 remainder) calibrated on the training images."""
    from deploy_attn.datasets import TrainConfig

    ckpt = digits_checkpoint("mobilenetv2_ca", TrainConfig(3, 0.05))
    options = dict(channels=1, input_size=DIGITS_SIZE, num_classes=10, weights=ckpt,
                   precisions=("int8-fp32",), calib_dir=digit_sets["train"].folder,
                   calib_count=64)
    out = tmp_path_factory.mktemp("export")
    deploy_attn.export("mobilenetv2_ca", out_dir=out, **options)
    return out, digit_sets["test"].folder, options


def _coarsen_site(src: Path, dst: Path, tensor: str, factor: float) -> str:
    """A copy of a Q/DQ graph whose activation scale feeding the conv behind ``tensor`` (a
    gate's output) is multiplied by ``factor``: a bad calibration at that one site (below 1:
    a range too small, which clips). Returns the scale's name."""
    model = onnx.load(src)
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[tensor]
    while node.op_type != "Conv":  # the gate's activation -> the conv that feeds it
        node = producer[node.input[0]]
    dq = producer[node.input[0]]
    assert dq.op_type == "DequantizeLinear", dq.op_type
    q = producer[dq.input[0]]
    inits = {i.name: i for i in model.graph.initializer}
    for name in dict.fromkeys([q.input[1], dq.input[1]]):
        scale = numpy_helper.to_array(inits[name]) * factor
        inits[name].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), name))
    onnx.save(model, dst)
    return dq.input[1]


@DIGITS_WORKER
def test_int8_bad_scale_at_one_site_is_localised_to_it(digits_export, tmp_path):
    directory, _, _ = digits_export
    exp = open_export(directory)
    index = exp.report["attention_maps"]
    x = exp.verify_inputs(8)
    good = evaluate_maps(exp, x, {"source": "verification", "count": 8},
                         write=tmp_path / "good")
    order = [f"{s['site']}:{s['map']}" for s in good.sites]
    target = next(e for e in index if e["site"] == "features.9.conv.2" and e["map"] == "a_h")
    first_good = good.first_drift("int8-fp32")
    assert first_good is None or order.index(f"{first_good['site']}:{first_good['map']}") > \
        order.index("features.9.conv.2:a_h"), first_good

    bad_dir = tmp_path / "bad"
    shutil.copytree(directory, bad_dir)
    _coarsen_site(directory / "model.int8-fp32.onnx", bad_dir / "model.int8-fp32.onnx",
                  target["tensor"], 1 / 64)
    bad = evaluate_maps(open_export(bad_dir), x, {"source": "verification", "count": 8})
    drift = bad.first_drift("int8-fp32")
    assert drift is not None and drift["site"] == "features.9.conv.2", drift
    r = drift["results"]["onnxruntime"]["int8-fp32"]
    print(f"\n[maps] bad scale at features.9.conv.2: correlation {r['correlation']:.4f}, "
          f"cosine {r['cosine']:.4f}, max abs {r['max_abs']:.3g}")
    intact = drifting_site(directory / "model.int8-fp32.onnx", index, exp.card().module, x,
                           "int8-fp32")
    assert (intact and intact["site"]) == (first_good and first_good["site"])


@DIGITS_WORKER
def test_failed_int8_export_names_the_drifting_site(digits_export, tmp_path, monkeypatch):
    """The export job's own failure: the same bad scale, put in by the quantizer, and an
    INT8 threshold the artifact cannot meet; the one-line error names the site."""
    from deploy_attn.core import numerics
    from deploy_attn.jobs import stages
    from deploy_attn.core.errors import ParityError

    directory, _, options = digits_export
    tensor = next(e["tensor"] for e in open_export(directory).report["attention_maps"]
                  if e["site"] == "features.9.conv.2" and e["map"] == "a_h")
    real = stages.quantize_int8

    def bad_quantizer(src, dst, *args, **kwargs):
        artifact = real(src, dst, *args, **kwargs)
        _coarsen_site(Path(dst), Path(dst), tensor, 1 / 64)
        return artifact

    monkeypatch.setattr(stages, "quantize_int8", bad_quantizer)
    monkeypatch.setitem(numerics.TOLERANCES, "int8-fp32",
                        numerics.Tolerance(min_cosine=0.99999))
    with pytest.raises(ParityError) as failed:
        deploy_attn.export("mobilenetv2_ca", out_dir=tmp_path / "out", **options)
    message = str(failed.value)
    assert "the first attention site whose map drifts: features.9.conv.2 (CoordAtt) a_h" \
        in message and "deploy-attn maps" in message, message
    assert not (tmp_path / "out" / "model.onnx").exists()


@DIGITS_WORKER
def test_report_shows_the_maps_section(digits_export, tmp_path):
    from deploy_attn.commands.report import write_report

    directory, test_images, _ = digits_export
    maps_job(directory, calib_dir=test_images, count=2)
    md, page = write_report([str(directory)], tmp_path, tmp_path)
    text = md.read_text()
    assert "### Attention maps" in text and "features.2.conv.2" in text
    shown = sorted(tmp_path.glob("maps-*.png"))
    assert 1 <= len(shown) <= 6 and all(_png_ok(p) for p in shown)
    assert "data:image/png;base64" in page.read_text()
