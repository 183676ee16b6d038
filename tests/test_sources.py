"""Model sources: registry names, FILE.py:CALLABLE, package.module:CALLABLE, timm:/
torchvision: names and Python objects, each exported by the one job and re-checked from
its directory alone in a new process."""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

import deploy_attn
from deploy_attn import cli
from deploy_attn.core.errors import ConfigError
from deploy_attn.core.numerics import compare, seeded_inputs
from deploy_attn.models import recalibrate_bn
from deploy_attn.runtime.ort import ort_outputs, ort_session
from deploy_attn.sources import SourceOptions, load_source, parse_model_args

from . import foreign_models as fm

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_model.py"


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def check_in_new_process(directory: Path, *extra_path: Path,
                         env: dict | None = None) -> subprocess.CompletedProcess:
    """``deploy-attn check DIR`` in a fresh interpreter: the reference is rebuilt from the
    directory's report alone (``env``: variables added, e.g. an ISA limit)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (REPO, *extra_path))),
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "deploy_attn.cli", "check", str(directory)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


def _assert_checked(proc: subprocess.CompletedProcess, files: int = 1, qdq: int = 0) -> None:
    """``check`` passed on ``files`` artifacts, ``qdq`` of them Q/DQ graphs: their primary
    figures ok; OpenVINO's view of each other file within tolerance where OpenVINO is
    installed; each Q/DQ file's integer-kernel views (ONNX Runtime, OpenVINO) labelled with
    the ISA they ran on, whatever their figures (they depend on the CPU)."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    first = [line for line in lines if not line.startswith(" ") and "-> ok" in line]
    assert len(first) == files, proc.stdout
    ov = importlib.util.find_spec("openvino") is not None
    views = [line for line in lines if "-> within tolerance; OpenVINO CPU, FP32" in line]
    assert len(views) == ((files - qdq) if ov else 0), proc.stdout
    kernels = [line for line in lines if re.search(r"-> (within|outside) tolerance; .* "
                                                   r"integer kernels on \w+ \((exact|"
                                                   r"saturating) 8-bit", line)]
    assert len(kernels) == qdq * (2 if ov else 1), proc.stdout
    assert "Traceback" not in proc.stderr


def test_parse_model_args():
    assert parse_model_args(["width=24", "name=se", "ratio=0.25", "sizes=(1, 2)", "x=None"]) == \
        {"width": 24, "name": "se", "ratio": 0.25, "sizes": (1, 2), "x": None}
    for bad in (["width"], ["2x=3"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError, match="--model-arg"):
            parse_model_args(bad)


def test_registry_card():
    card = load_source("mobilenetv2_ca")
    assert (card.kind, card.task, card.input_shape) == ("backbone", "classifier", (1, 3, 224, 224))
    assert card.preprocess.mean == (0.485, 0.456, 0.406) and card.generated
    assert load_source("ca").preprocess is None and load_source("ca").task == "features"
    assert load_source("unet").task == "segmentation"


def test_file_source_with_model_args_and_rebuild_in_a_new_process(tmp_path, capsys):
    src = tmp_path / "net.py"
    src.write_text(textwrap.dedent('''
        import torch.nn as nn
        print("importing net.py")  # user files may print; the CLI output stays clean

        class Net(nn.Module):
            def __init__(self, width=8, classes=3):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
                self.head = nn.Conv2d(width, classes, 1)

            def forward(self, x):
                return self.head(self.body(x))

        if __name__ == "__main__":
            raise SystemExit("the file is imported as a module, not run")
    '''))
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "export", f"{src}:Net", "--model-arg", "width=4",
                                "--model-arg", "classes=5", "--channels", "1",
                                "--input-size", "16", "16", "-o", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    model = report["model"]
    assert model["task"] == "segmentation" and report["input_shape"] == [1, 1, 16, 16]
    assert model["source"]["args"] == {"width": 4, "classes": 5}
    assert model["source"]["file_sha256"] and "importing" not in stdout
    _assert_checked(check_in_new_process(out))
    src.write_text(src.read_text() + "\n# edited\n")
    proc = check_in_new_process(out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "changed since the export" in proc.stderr.strip().splitlines()[-1]


def test_bad_sources_are_one_line(tmp_path, capsys):
    (tmp_path / "broken.py").write_text("raise RuntimeError('user code fails at import')\n")
    (tmp_path / "ok.py").write_text("import torch.nn as nn\ndef build(width):\n"
                                    "    return nn.Conv2d(3, width, 1)\nvalue = 3\n")
    cases = [
        (f"{tmp_path}/nothere.py:build", "no such Python file"),
        (f"{tmp_path}/broken.py:build", "importing it failed: RuntimeError"),
        (f"{tmp_path}/ok.py:bild", "has no 'bild'; did you mean build"),
        (f"{tmp_path}/ok.py:value", "not a class or function"),
        (f"{tmp_path}/ok.py:build", "build() failed: TypeError"),
        (f"{tmp_path}/ok.py", "name the callable"),
        ("no_such_package.models:build", "cannot import it"),
        ("torchvision:mobilenet_v2", "needs the torchvision package"),
    ]
    for source, message in cases:
        code, _, err = run_cli(capsys, "export", source, "-o", tmp_path / "out")
        lines = err.strip().splitlines()
        assert code == 1 and lines[-1].startswith("deploy-attn: error:"), (source, err)
        assert message in lines[-1] and "Traceback" not in err, (source, lines[-1])
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.fixture
def fake_timm(tmp_path, monkeypatch):
    """A stand-in ``timm`` package (the real one needs torchvision): records the
    arguments create_model is called with."""
    root = tmp_path / "site"
    (root / "timm").mkdir(parents=True)
    (root / "timm" / "__init__.py").write_text(textwrap.dedent('''
        import torch.nn as nn
        __version__ = "0.0.test"
        CALLS = []

        def list_models():
            return ["tiny_se"]

        def create_model(name, pretrained=False, num_classes=4, **kwargs):
            CALLS.append({"name": name, "pretrained": pretrained, **kwargs})
            return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, num_classes))
    '''))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    return root


def test_hub_source_never_downloads(fake_timm, tmp_path, capsys):
    import timm

    code, _, err = run_cli(capsys, "export", "timm:tiny_se", "--input-size", "32", "32",
                           "--num-classes", "6", "-o", tmp_path / "out")
    assert code == 0, err
    assert timm.CALLS == [{"name": "tiny_se", "pretrained": False}]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["source"]["version"] == "0.0.test"
    assert report["model"]["task"] == "classifier"
    _assert_checked(check_in_new_process(tmp_path / "out", fake_timm))
    code, _, err = run_cli(capsys, "export", "timm:tiny_sx", "-o", tmp_path / "x")
    assert code == 1 and "has no model 'tiny_sx'; did you mean tiny_se" in err
    code, _, err = run_cli(capsys, "export", "timm:tiny_se", "--model-arg", "pretrained=True",
                           "-o", tmp_path / "x")
    assert code == 1 and "would download weights" in err


def test_python_object_same_artifacts_as_the_cli_and_caller_untouched(tmp_path, capsys):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the weights the CLI's seeded call builds
        mine = fm.SmallNet(width=8)
    mine.train()  # a caller mid-training: its mode and weights must stay as they are
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    api = deploy_attn.export(mine, input_shape=(1, 3, 32, 32), out_dir=tmp_path / "api",
                             model_args={"width": 8})
    assert mine.training and all(torch.equal(before[k], v) for k, v in mine.state_dict().items())

    code, _, err = run_cli(capsys, "export", "tests.foreign_models:SmallNet", "--model-arg",
                           "width=8", "--input-size", "32", "32", "-o", tmp_path / "cli")
    assert code == 0, err
    same = (tmp_path / "api" / "model.onnx").read_bytes() == \
        (tmp_path / "cli" / "model.onnx").read_bytes()
    assert same, "the API and the CLI wrote different graphs for the same module"
    source = api.report["model"]["source"]
    assert source["kind"] == "object" and source["target"] == "tests.foreign_models:SmallNet"
    assert (tmp_path / "api" / "reference.safetensors").is_file()
    _assert_checked(check_in_new_process(tmp_path / "api"))
    _assert_checked(check_in_new_process(tmp_path / "cli"))


def test_object_of_a_local_class_says_why_it_cannot_be_rechecked(tmp_path):
    class Local(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    deploy_attn.export(Local(), input_shape=(1, 3, 8, 8), out_dir=tmp_path)
    proc = check_in_new_process(tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot be rebuilt in a new process" in proc.stderr
    assert "inside a function" in proc.stderr


def test_official_ca_checkpoint_exports_with_parity_against_that_module(tmp_path, capsys):
    """Done-when of the own-model issue: mbv2_ca.py's state_dict through --weights, and the
    ONNX output compared with the official module itself."""
    official = fm.randomize(fm.OfficialMBV2CA())
    weights = tmp_path / "mbv2_ca.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.state_dict().items()}},
               weights)
    code, out, err = run_cli(capsys, "export", "mobilenetv2_ca", "--weights", weights,
                             "-o", tmp_path / "out")
    assert code == 0, err
    assert "layout houqb/CoordAttention mbv2_ca.py" in out.splitlines()[-1]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["weights"]["layout"] == "houqb/CoordAttention mbv2_ca.py"
    x = seeded_inputs((4, 3, 224, 224), seed=5)
    with torch.no_grad():
        ref = official(torch.from_numpy(x)).numpy()
    r = compare(ort_outputs(ort_session(tmp_path / "out" / "model.onnx"), x), ref,
                classifier=True)
    assert r.ok and r.top1_agreement == 1.0, f"vs the official module: {r}"
    print(f"official mbv2_ca vs ONNX: max abs {r.max_abs:.2e}, cosine {r.cosine:.8f}")
    _assert_checked(check_in_new_process(tmp_path / "out"))


def test_plain_export_of_the_official_code_gets_the_graph_passes(tmp_path):
    """The official mbv2_ca.py module itself (no registry, no swap table): its 16
    hand-written h_swish become HardSwish ops and its view/expand leave no shape ops, also
    with a dynamic batch."""
    result = deploy_attn.export(fm.OfficialMBV2CA(), input_shape=(1, 3, 224, 224),
                                out_dir=tmp_path, dynamic_batch=True)
    ops = collections.Counter(n.op_type for n in onnx.load(str(result.model_path)).graph.node)
    # the 35 ReLU6 of the network stay Clips; the 16 h_swish Clips (and Divs) are gone
    assert ops["HardSwish"] == 16 and ops["Clip"] == 35 and "Div" not in ops, ops
    assert "Expand" not in ops and result.report["shape_ops"] == []
    passes = {p["name"]: p["count"] for p in result.report["rewrites"]["graph"]}
    assert passes["hard_swish"] == 16 and passes["expand_before_broadcast"] == 32, passes


def _example_weights(path: Path, shape=(8, 3, 224, 224)) -> Path:
    """Weights with realistic activations for the example model (what training gives):
    BatchNorm statistics estimated on seeded batches, logits centred, so the output
    depends on the input and parity on it means something."""
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import my_model
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = my_model.build()
    recalibrate_bn(model, shape, seed=0, classifier=True)
    torch.save(model.state_dict(), path)
    return path


def _cosines(proc: subprocess.CompletedProcess) -> dict[str, float]:
    """The primary and target figures of a ``check`` run: file -> cosine."""
    found = re.findall(r"^ *(model\S*)(?: \(\S+\))?: cosine (\S+), .* -> ok(?:;|$)",
                       proc.stdout, re.M)
    return {name: float(c) for name, c in found}


def test_example_model_through_the_pipeline(tmp_path, capsys):
    """Done-when: the example user module with its own x * ReLU6(x + 3) / 6 exports with
    single HardSwish ops and no Clip/Div, and FP32/FP16/INT8 parity holds, with every CPU
    target; ``check`` gives the same figures for the TensorRT files and passes every target
    on this CPU and limited to AVX2 (OpenVINO honours the limit: a CPU without VNNI)."""
    weights = _example_weights(tmp_path / "my_model.pt")
    formats = "ort,onnx-cpu" + (",openvino" if importlib.util.find_spec("openvino") else "")
    code, out, err = run_cli(capsys, "export", f"{EXAMPLE}:build", "--input-size", "224", "224",
                             "--weights", weights, "--precision", "fp16,int8", "--format",
                             formats, "-o", tmp_path / "out")
    assert code == 0, err
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["HardSwish"] == 5 and ops["HardSigmoid"] == 4, ops
    assert "Clip" not in ops and "Div" not in ops, ops
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["files"]) == {"fp32", "fp16", "int8"} and report["status"] == "ok"
    assert report["reference"]["input_dependence"] > 0.1, report["reference"]
    assert report["cpu"]["int8_dot"] in ("exact", "saturating") and report["cpu"]["isa"]
    # the TensorRT file saturates on a CPU without VNNI; the portable targets cannot
    trt_sat = report["precisions"]["int8"]["saturation"]
    assert trt_sat["saturating_layers"] > 0 and trt_sat["worst"]["output_rel_rms_error"] > 0.1
    for fmt, entries in report["targets"].items():
        assert entries["int8"]["saturation"]["saturating_layers"] == 0, fmt
        assert entries["int8"]["forms"]["portable_int8"] > 0, entries["int8"]["forms"]
    assert run_cli(capsys, "report", tmp_path / "out", "-o", tmp_path / "report")[0] == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "INT8 on CPUs without VNNI (predicted)" in page and "portable CPUs" in page, page
    native = check_in_new_process(tmp_path / "out")
    _assert_checked(native, files=3, qdq=1)
    print(native.stdout)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    avx2 = check_in_new_process(tmp_path / "out",
                                env={"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2"})
    _assert_checked(avx2, files=3, qdq=1)
    print(avx2.stdout)
    a, b = _cosines(native), _cosines(avx2)
    assert set(a) == set(b) and len(a) == 3 + 3 * len(formats.split(",")), (a, b)
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):  # TensorRT files
        assert abs(a[name] - b[name]) < 1e-6, (name, a[name], b[name])
    if "openvino" in formats:  # the emulation's prediction, seen on OpenVINO limited to AVX2
        view = re.search(r"^  model\.int8\.onnx: cosine (\S+), .*OpenVINO CPU, integer "
                         r"kernels on avx2 \(saturating", avx2.stdout, re.M)
        assert view and float(view.group(1)) < b["model.int8.onnx"] - 0.01, avx2.stdout


def test_degenerate_reference_is_flagged(tmp_path, capsys):
    """A randomly initialised network that answers the same for every input passes any
    parity check; the export says so instead of letting the figures look meaningful."""
    code, _, err = run_cli(capsys, "export", f"{EXAMPLE}:build", "--input-size", "64", "64",
                           "-o", tmp_path / "out")
    assert code == 0 and "hardly depends on its input" in err, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["reference"]["input_dependence"] < 1e-2


def test_source_options_are_checked():
    with pytest.raises(ConfigError, match="--model-arg applies to"):
        load_source("se", SourceOptions(model_args={"x": 1}))
    with pytest.raises(ConfigError, match="--task"):
        load_source("se", SourceOptions(task="detection"))
    with pytest.raises(ConfigError, match="--mean has 2 values for 3 channels"):
        load_source("mobilenetv2", SourceOptions(mean=(0.5, 0.5)))
    with pytest.raises(ConfigError, match="does not run on an input of shape"):
        load_source("tests.foreign_models:SmallNet", SourceOptions(channels=1))
