"""Bad and hostile input: each case exits non-zero with one error line and no traceback,
and leaves the export directory byte for byte as it was (or, for a fresh folder,
without anything that looks like an artifact)."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import deploy_attn
from deploy_attn import cli
from deploy_attn.exportdir.transaction import STAGING_PREFIX
from deploy_attn.models import build
from deploy_attn.registry import get_spec

from .conftest import ARTIFACT, snapshot

FAILED = "export-failed.json"  # the failed run's report, named in its error line


def _staged(paths) -> list[str]:
    return [n for n in paths if any(part.startswith(STAGING_PREFIX) for part in Path(n).parts)]


def _without_failed_reports(snap: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in snap.items() if Path(k).name != FAILED}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A good `se` export, and the bad files the cases point at."""
    root = tmp_path_factory.mktemp("bad-input")
    deploy_attn.export("se", out_dir=root / "good")
    files = {"good": root / "good", "root": root}
    torch.save(deploy_attn.create_model("se"), root / "whole.pt")
    state = deploy_attn.create_model("se").state_dict()
    state["fc.2.weight"][0, 0] = float("inf")
    torch.save(state, root / "inf.pt")
    torch.save(deploy_attn.create_model("ca").state_dict(), root / "ca.pt")
    torch.save(build(get_spec("mobilenetv2_scsa")).state_dict(), root / "scsa.pt")
    torch.save({"state_dict": deploy_attn.create_model("se").state_dict(), "x": object()},
               root / "evil.pt")
    from PIL import Image

    for name, make in {
        "empty": lambda d: None,
        "nonimages": lambda d: (d / "notes.txt").write_text("not an image"),
        "corrupt": lambda d: (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really"),
        "gray": lambda d: Image.new("L", (40, 40), 128).save(d / "gray.png"),
        "bomb": lambda d: Image.new("L", (20000, 20000)).save(d / "bomb.png"),
    }.items():
        (root / name).mkdir()
        make(root / name)
    (root / "a-file").write_text("a file, not a folder")
    foreign = root / "foreign"
    shutil.copytree(root / "good", foreign)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                             [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
              str(foreign / "model.onnx"))
    onnx_dir = root / "onnx-is-a-dir"
    shutil.copytree(root / "good", onnx_dir)
    (onnx_dir / "model.onnx").unlink()
    (onnx_dir / "model.onnx").mkdir()
    return files


# (id, argv with {placeholders}, what the error line says, the folder -o names: None
# where the argv names its paths under {root}, which then stays as it was)
CASES = [
    ("channels-negative", "export se --channels -8", "--channels: -8 must be >= 1", "good"),
    ("channels-zero", "export se --channels 0", "--channels: 0 must be >= 1", "good"),
    ("channels-huge", "export se --channels 1000000000", "this machine has", "good"),
    ("classes-negative", "export mobilenetv2 --num-classes -3", "must be >= 1", "fresh"),
    ("classes-zero", "export mobilenetv2 --num-classes 0", "must be >= 1", "fresh"),
    ("size-zero", "export se --input-size 0 0", "must be >= 1", "good"),
    ("size-negative", "export se --input-size -4 32", "must be >= 1", "good"),
    ("size-huge", "export mobilenetv2 --input-size 100000 100000", "120.0 GB per sample",
     "fresh"),
    ("size-not-a-number", "export se --input-size big 32", "'big' is not an integer", "good"),
    ("opset-99", "export se --opset 99", "writes opsets 18 to", "good"),
    ("opset-13", "export se --opset 13", "writes opsets 18 to", "good"),
    ("opset-17", "export se --opset 17", "cannot write the ReduceMean", "good"),
    ("opset-word", "export se --opset new", "'new' is not an integer", "good"),
    ("fp16-threshold", "export se --precision fp16 --fp16-threshold -1",
     "positive finite number", "good"),
    ("exclude-no-int8", "export se --exclude auto", "--exclude does nothing without", "good"),
    ("calib-dir-no-precision", "export se --calib-dir {root}/gray",
     "--calib-dir does nothing without", "good"),
    ("calib-count-no-precision", "export se --calib-count 8", "--calib-count does nothing",
     "good"),
    ("sensitivity-no-int8", "export se --precision fp16 --sensitivity",
     "--sensitivity does nothing", "good"),
    ("calib-method-no-int8", "export se --calib-method entropy", "--calib-method does nothing",
     "good"),
    ("calib-count-zero", "export se --precision int8 --calib-count 0", "0 must be >= 1", "good"),
    ("precision-unknown", "export se --precision int4", "unknown precision int4", "good"),
    ("ema-no-weights", "export se --ema", "--ema does nothing without --weights", "good"),
    ("task-unknown", "export se --task detection", "invalid choice", "good"),
    ("name-case", "export CA", "did you mean ca", "fresh"),
    ("name-typo", "export cbma", "did you mean cbam", "fresh"),
    ("scsa-window", "export scsa --input-size 4 32", "window", "fresh"),
    ("backbone-too-small", "export mobilenetv2_scsa --input-size 32 32",
     "does not run on an input of shape [1, 3, 32, 32]", "fresh"),
    ("backbone-too-small-weights",
     "export mobilenetv2_scsa --input-size 32 32 --weights {root}/scsa.pt",
     "does not run on an input of shape [1, 3, 32, 32]", "fresh"),
    ("sa-divisible", "export sa --channels 30", "divisible", "fresh"),
    ("model-arg-registry", "export se --model-arg x=1", "--model-arg applies to", "good"),
    ("mean-for-attention", "export se --mean 0.5", "feature maps", "good"),
    ("std-zero", "export mobilenetv2 --std 0", "values must be positive", "fresh"),
    ("weights-missing", "export se --weights {root}/nope.pt", "no such checkpoint", "good"),
    ("weights-whole-module", "export se --weights {root}/whole.pt",
     "whole pickled model", "good"),
    ("weights-inf", "export se --weights {root}/inf.pt", "NaN or Inf: fc.2.weight", "good"),
    ("weights-other-model", "export se --weights {root}/ca.pt", "does not match", "good"),
    ("weights-pickled-code", "export se --weights {root}/evil.pt", "could run code", "good"),
    ("calib-missing", "export ca --seed 7 --precision int8 --calib-dir {root}/nope",
     "feature maps", "good"),
    ("calib-missing-backbone", "export mobilenetv2 --precision int8 --calib-dir {root}/nope",
     "calibration folder does not exist", "fresh"),
    ("calib-empty", "export mobilenetv2 --precision int8 --calib-dir {root}/empty",
     "no .jpg/.jpeg/.png images", "fresh"),
    ("calib-non-images", "export mobilenetv2 --precision fp16 --calib-dir {root}/nonimages",
     "no .jpg/.jpeg/.png images", "fresh"),
    ("calib-corrupt", "export mobilenetv2 --precision int8 --calib-dir {root}/corrupt",
     "not a readable image", "fresh"),
    ("calib-gray-for-rgb", "export mobilenetv2 --precision int8 --calib-dir {root}/gray",
     "the model takes 3-channel input", "fresh"),
    ("calib-bomb", "export mobilenetv2 --precision int8 --calib-dir {root}/bomb",
     "decompression bomb", "fresh"),
    ("int8-without-convs", "export sa --precision int8", "no Conv/ConvTranspose/Gemm/MatMul",
     "fresh"),
    ("source-missing-file", "export {root}/nope.py:build", "no such Python file", "fresh"),
    ("out-is-a-file", "export se -o {root}/a-file", "exists and is not a directory", None),
    ("out-parent-is-a-file", "export se -o {root}/a-file/sub", "Not a directory", None),
    ("out-under-proc", "export se -o /proc/deploy-attn-test", "cannot write there", None),
    ("onnx-path-is-a-dir", "export se -o {root}/onnx-is-a-dir", "is not a file", None),
    ("report-out-is-a-file", "report good --root {root} -o {root}/a-file", "a-file", None),
    ("export-all-root-is-a-file", "export-all se --root {root}/a-file",
     "1 of 1 exports failed", None),
    ("check-other-model", "check ca -o {root}/good", "holds an export of se, not ca", None),
    ("check-foreign-onnx", "check {root}/foreign", "ONNX Runtime cannot run the graph", None),
    ("check-not-an-export", "check {root}/empty", "not an export directory", None),
    ("check-no-report", "check se -o {root}/empty", "no export report", None),
    ("bench-batch-zero", "bench {root}/good --batch 0", "0 must be >= 1", None),
    ("bench-backend", "bench {root}/good --backends ort-int4", "unknown backend ort-int4", None),
    ("bench-fixed-batch", "bench {root}/good --batch 4 --backends ort-fp32",
     "fixed-batch export", None),
    ("build-min-batch", "build {root}/good --min-batch 0", "0 must be >= 1", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(inputs, tmp_path, capfd, case):
    _, argv, message, folder = case
    root = inputs["root"]
    out = None
    if folder == "good":
        out = tmp_path / "out"
        shutil.copytree(inputs["good"], out)
    elif folder == "fresh":
        out = tmp_path / "fresh"
    args = argv.format(root=root).split()
    if out is not None:
        args += ["-o", str(out)]
    watched = out if out is not None else root  # root: every file the inputs made
    before = snapshot(watched)

    code = cli.main(args)
    err = capfd.readouterr().err

    assert code in (1, 2), (code, err)
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert lines[-1].startswith("deploy-attn: error:"), err
    assert message in lines[-1], f"expected {message!r} in: {lines[-1]}"
    assert "Traceback" not in err and "\x1b" not in err and "Warning" not in err, err
    after = snapshot(watched)
    if folder == "fresh":
        assert not [n for n in after if ARTIFACT.match(Path(n).name)], after.keys()
    else:  # the failed run's report (named in the error line) aside, nothing changed
        changed = sorted(set(_without_failed_reports(before).items())
                         ^ set(_without_failed_reports(after).items()))
        assert not changed, f"{watched} changed: {sorted({k for k, _ in changed})}"
    assert not _staged(after), after.keys()


def test_failed_reexport_keeps_the_good_one_and_check_still_passes(inputs, tmp_path, capfd):
    """The issue's sequence: a good export, then a failing re-export into the same folder
    (an INT8 exclusion naming no node: found only after the FP32 export and parity)."""
    out = tmp_path / "out"
    shutil.copytree(inputs["good"], out)
    before = snapshot(out)
    assert cli.main(["export", "se", "--seed", "7", "--precision", "int8", "--exclude",
                     "no_such_node", "-o", str(out)]) == 1
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], err
    assert lines[-1].startswith("deploy-attn: error:"), err
    assert "not among the quantizable nodes" in lines[-1], lines[-1]
    assert f"{out} keeps its earlier export unchanged" in lines[-1] and FAILED in lines[-1]
    assert "Traceback" not in err and "\x1b" not in err and "Warning" not in err, err
    after = snapshot(out)
    after.pop(FAILED)
    assert after == before and not _staged(after)
    assert cli.main(["check", str(out)]) == 0


def test_fp32_reexport_drops_artifacts_it_does_not_list(tmp_path, capfd):
    """A successful FP32 re-export removes the FP16/INT8 files of the previous export (they
    belong to the previous model)."""
    out = tmp_path / "out"
    deploy_attn.export("se", out_dir=out, precisions=("fp16", "int8"), calib_count=4)
    assert {"model.fp16.onnx", "model.int8.onnx"} <= {p.name for p in out.iterdir()}
    assert cli.main(["export", "se", "--seed", "7", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]
    assert cli.main(["check", str(out)]) == 0


def test_full_disk_is_one_line_and_changes_nothing(inputs, tmp_path, capfd, monkeypatch):
    from deploy_attn.graph import simplify

    out = tmp_path / "out"
    shutil.copytree(inputs["good"], out)
    before = snapshot(out)

    @contextlib.contextmanager
    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        yield

    monkeypatch.setattr(simplify, "atomic_path", full)
    assert cli.main(["export", "se", "--seed", "3", "-o", str(out)]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("deploy-attn: error:") and "No space left on device" in err[-1]
    assert snapshot(out) == before


def test_two_runs_into_one_directory(tmp_path):
    """A second run into a directory another run is writing fails at once, in one line."""
    from deploy_attn.core.errors import ArtifactError
    from deploy_attn.exportdir.transaction import directory_lock, staging_dir

    with directory_lock(tmp_path), staging_dir(tmp_path):
        with pytest.raises(ArtifactError, match=rf"another deploy-attn run \(pid {os.getpid()}\)"):
            deploy_attn.export("se", out_dir=tmp_path)
    deploy_attn.export("se", out_dir=tmp_path)  # free again


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="runs as root without setpriv: cannot drop DAC override")
def test_folder_without_write_permission(tmp_path):
    """As a user without DAC override: root drops CAP_DAC_OVERRIDE from its bounding set
    (setpriv), so the folder's permission bits apply to it."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="deploy-attn-ro-"))
    try:
        base.chmod(0o755)
        target = base / "ro"
        target.mkdir()
        target.chmod(0o555)
        cmd = [sys.executable, "-m", "deploy_attn.cli", "export", "se", "-o", str(target)]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] + cmd
        env = {**os.environ, "HOME": str(base), "XDG_CACHE_HOME": str(base / "cache"),
               "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=base,
                              env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[-1] == f"deploy-attn: error: {target}: cannot write there: " \
                            "Permission denied", lines[-1]
        assert list(target.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)

