"""The command line: tables, one-line errors, atomic artifacts."""
import json
import shutil
import subprocess
import sys

import pytest

from deploy_attn import cli, export
from deploy_attn.core.errors import ParityError
from deploy_attn.core.files import atomic_path
from deploy_attn.core.numerics import ParityResult
from deploy_attn.exportdir.transaction import STAGING_PREFIX
from deploy_attn.jobs import export as job

from .conftest import snapshot


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_table_and_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    code, out, err = run_cli(capsys, "list", "c*")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["name", "kind", "paper"]
    assert any(line.startswith("ca ") and "AxisMean" in line for line in out.splitlines())
    assert "counting parameters" in err  # progress while the cache fills
    code, out, _ = run_cli(capsys, "list", "--json", "mobilenetv2*")
    rows = {r["name"]: r for r in json.loads(out)}
    assert {"mobilenetv2", "mobilenetv2_ca", "mobilenetv2_se"} <= set(rows)
    assert rows["mobilenetv2_ca"]["params"] == 3_950_648
    assert rows["mobilenetv2_ca"]["macs"] > rows["mobilenetv2"]["macs"] > 290e6
    assert "AxisMean" in rows["mobilenetv2_ca"]["exact_rewrites"]
    code, out, err = run_cli(capsys, "list", "--json", "c*")
    assert "counting" not in err and {r["name"] for r in json.loads(out)} >= {"ca", "cbam"}


def test_console_script_unknown_name_is_one_line():
    exe = shutil.which("deploy-attn")
    cmd = [exe] if exe else [sys.executable, "-m", "deploy_attn.cli"]
    proc = subprocess.run(cmd + ["export", "mobilenetv2_caa", "--no-simplify"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("deploy-attn: error: unknown model"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "did you mean" in lines[-1]


def test_export_writes_model_and_report(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "export", "se", "-o", str(tmp_path), "--dynamic-batch")
    assert code == 0, out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "ok" and report["dynamic_axes"]
    assert (tmp_path / "model.onnx").is_file()
    assert "parity fp32 batch 4" in out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)] == []


def test_parity_failure_leaves_the_earlier_export_as_it_was(monkeypatch, tmp_path):
    export("se", out_dir=tmp_path)
    before = snapshot(tmp_path)
    bad = ParityResult(1, 0.5, 0.5, 0.9, True, False)
    monkeypatch.setattr(job, "check_onnx", lambda *a, **k: ([bad], job.FP32, 0.0))
    with pytest.raises(ParityError, match="se: ONNX Runtime FP32 output differs.*keeps its "
                                          "earlier export unchanged.*export-failed.json"):
        export("se", out_dir=tmp_path, seed=7)
    after = snapshot(tmp_path)
    failed = json.loads(after.pop(job.FAILED_REPORT))
    assert after == before and failed["status"] == "failed"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_interrupted_export_leaves_nothing_that_looks_valid(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "simplify_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export("se", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "a.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
