"""bench (latency per backend, TensorRT skipped with its reason), the CPU-tuned INT8
variant, and the deployment report, rendered in a real headless browser."""
import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from deploy_attn import export
from deploy_attn.commands.bench import bench
from deploy_attn.commands.latency import latency_table
from deploy_attn.commands.report import write_report
from deploy_attn.core.console import progress_bar
from deploy_attn.core.errors import ConfigError
from deploy_attn.core.numerics import INT8, compare, seeded_inputs
from deploy_attn.models import create_model
from deploy_attn.precision.calib import calibration_data
from deploy_attn.precision.cpu_int8 import quantize_int8_cpu
from deploy_attn.registry import get_spec
from deploy_attn.runtime.backends import DEFAULT_BACKENDS
from deploy_attn.runtime.ort import ort_outputs, ort_session
from deploy_attn.runtime.pytorch import torch_outputs
from deploy_attn.runtime.tensorrt import TensorRTUnavailable, require_tensorrt
from deploy_attn.runtime.timing import interleaved_times
from deploy_attn.targets.cpu import TARGET_FORMS

from .conftest import TRT_MISSING



@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An export root with two modules at every precision, one of them benchmarked and
    its attention maps drawn."""
    from deploy_attn.commands.maps import maps_job

    root = tmp_path_factory.mktemp("export")
    for name in ("se", "eca"):
        export(name, out_dir=root / name, precisions=("fp16", "int8"),
                                calib_count=8)
    result = bench(root / "se", runs=5, warmup=1, save=True)
    maps_job(root / "se", count=2)
    return root, result


def test_bench_numbers_and_skipped_tensorrt(exports):
    root, result = exports
    data = json.loads(json.dumps(result.as_dict()))  # JSON-serialisable as it is
    assert data == json.loads((root / "se" / "bench.json").read_text())
    assert [b["backend"] for b in data["backends"]] == list(DEFAULT_BACKENDS)
    for b in data["backends"]:
        if b["backend"].startswith("trt-") and TRT_MISSING:
            assert b["status"] == "skipped" and b["latency"] is None
            with pytest.raises(TensorRTUnavailable) as exc:
                require_tensorrt("se", b["precision"])
            assert b["reason"] == str(exc.value)  # the reason itself, never a number
            continue
        lat = b["latency"]
        assert b["status"] == "ok" and b["reason"] is None, b
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"]
        assert lat["throughput"] == pytest.approx(1e3 / lat["median_ms"])
    assert data["ort_options"] == {"provider": "CPUExecutionProvider",
                                   "graph_optimization_level": "ORT_ENABLE_ALL",
                                   "intra_op_num_threads": 2, "inter_op_num_threads": 1,
                                   "execution_mode": "ORT_SEQUENTIAL", "allow_spinning": "0"}
    env = data["environment"]
    assert env["cpu"] and env["cores"] >= 1 and "onnxruntime" in env["versions"]
    table = result.table()
    for b in DEFAULT_BACKENDS:
        assert re.search(rf"^{b}\s", table, re.M), table
    if TRT_MISSING:
        assert re.search(r"^trt-fp16\s+skipped\s+cannot build", table, re.M), table
        header, rows = latency_table(data)
        assert all(r[1] == "skipped" and not any(c[0].isdigit() for c in r[2:6] if c)
                   for r in rows if r[0].startswith("trt-"))


def test_bench_rejects_bad_requests(exports):
    root, _ = exports
    with pytest.raises(ConfigError, match="unknown backend ort-int4; choose from torch"):
        bench(root / "se", backends=["ort-int4"])
    with pytest.raises(ConfigError, match=r"fixed-batch export .* --dynamic-batch"):
        bench(root / "se", backends=["ort-fp32"], batch=4)
    with pytest.raises(ConfigError, match="--runs 0 must be an integer >= 1"):
        bench(root / "se", runs=0)


def test_bench_exports_a_dynamic_batch_when_missing(tmp_path, capsys):
    result = bench(tmp_path / "eca", backends=["torch", "ort-fp32"], batch=3, runs=3,
                   warmup=0, progress=True)
    assert result.input_shape[0] == 3
    report = json.loads((tmp_path / "eca" / "report.json").read_text())
    assert report["dynamic_axes"], "batch > 1 with no export: exported with a dynamic batch"
    assert all(b.latency.throughput == pytest.approx(3e3 / b.latency.median_ms)
               for b in result.backends)
    err = capsys.readouterr().err
    assert "bench eca" in err and "6/6" in err  # the progress bar reached its end


def test_interleaved_times_alternates_peers():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "ab"}
    times = interleaved_times(fns, runs=7, warmup=1, block=3, settle_s=0)
    assert {k: len(v) for k, v in times.items()} == {"a": 7, "b": 7}
    # warm-up, then rounds of (settle + up to 3 timed) per peer: a b | a*4 b*4 | a*4 b*4 | a*2 b*2
    assert "".join(calls) == "ab" + "aaaabbbb" * 2 + "aabb"


def test_progress_bar_reaches_its_total():
    out = io.StringIO()
    bar = progress_bar(4, "bench x", stream=out)
    for _ in range(4):
        bar.set_postfix_str("ort-fp32")
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "bench x" in text and "4/4" in text and "ort-fp32" in text, text


@pytest.mark.parametrize("name", ["ca", "cbam"])
def test_cpu_int8_passes_where_the_tensorrt_form_does(tmp_path, name):
    export(name, out_dir=tmp_path, precisions=("int8",), calib_count=8)
    spec = get_spec(name)
    calib = calibration_data(None, spec.input_shape(), None, 8)
    art = quantize_int8_cpu(tmp_path / "model.onnx", tmp_path / "model.int8-cpu.onnx", calib,
                            forms=TARGET_FORMS["onnx-cpu"])
    model = onnx.load(str(art.path))
    ops = {n.op_type for n in model.graph.node}
    if name == "ca":  # quantized in the CPU forms: its pooled halves never concatenated
        assert art.details["forms"]["unsplit"] > 0 and art.details["forms"]["axis_pool"] > 0
        assert not ops & {"Concat", "Split", "ReduceMean"}, ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["deploy_attn.precision"]) == "int8-cpu"
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.data_type == TensorProto.UINT8 for z in zero_points)
    assert "Conv" in art.details["quantized_op_types"]
    x = seeded_inputs((8,) + spec.input_shape()[1:])
    ref = torch_outputs(create_model(name), x)
    for file in ("model.int8.onnx", "model.int8-cpu.onnx"):
        r = compare(ort_outputs(ort_session(tmp_path / file), x), ref, INT8)
        assert r.ok, f"{name} {file}: cosine {r.cosine}"


def _pngs(html_text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in
            re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html_text)]


def test_report_md_and_self_contained_html(exports, tmp_path):
    from PIL import Image

    root, _ = exports
    md, page = write_report(None, root, tmp_path / "out")
    text, html_text = md.read_text(), page.read_text()
    for name in ("se", "eca"):
        assert f"## {name}" in text and f"<h2>{name}</h2>" in html_text
    assert "ort-fp32" in text and "No latency: run 'deploy-attn bench eca --save'" in text
    assert re.search(r"\| int8 \| pass \| cos >= 0.99 \|", text), text
    assert "ok: all" in text  # the TensorRT operator check summary
    assert "![Latency by backend](latency.png)" in text and (md.parent / "latency.png").is_file()
    # se's attention maps: the section, its table, and the figure of its one site
    assert "### Attention maps" in text and "<h3>Attention maps</h3>" in html_text
    assert "![Attention maps of se: 01-_root_](maps-se-01.png)" in text
    pngs = _pngs(html_text)
    assert len(pngs) == 3
    for png in pngs:
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.width > 300
    # self-contained: nothing loaded from elsewhere
    assert not re.search(r"(src|href)=['\"](?!data:)", html_text)
    assert "<script" not in html_text
    assert not list(md.parent.glob(".*.partial"))  # atomic writes leave no temporaries


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(apt-get install -y chromium); the report is not rendered")
def test_report_renders_in_headless_chromium(exports, tmp_path):
    from PIL import Image

    root, _ = exports
    _, page = write_report(["se", "eca"], root, tmp_path / "out")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as img:
        rgb = np.asarray(img.convert("RGB"))
    assert rgb.shape[:2] == (2000, 1200)
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"only {len(colours)} colours: a blank page?"
    # the header bar colour of the tables (#2b6cb0) is on the page: the CSS applied
    assert np.any(np.all(rgb == (0x2b, 0x6c, 0xb0), axis=-1))
    assert "<h3>Attention maps</h3>" in page.read_text()  # the maps section is on the page


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT and a GPU are present here")
def test_bench_tensorrt_only_exports_nothing_without_tensorrt(tmp_path):
    result = bench(tmp_path / "se", backends=["trt-fp16", "trt-int8"])
    assert [b.status for b in result.backends] == ["skipped", "skipped"]
    assert all(b.latency is None and "TensorRT" in b.reason for b in result.backends)
    assert not (tmp_path / "se").exists()
