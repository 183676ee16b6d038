"""One report shape: FP32 is a precision like the others (report["precisions"]["fp32"]).
A version-1 report (FP32's parity apart, under report["parity"]) still reads, as the same
report; a report from a newer deploy-attn is refused in one line naming its version."""
import json

from deploy_attn import export
from deploy_attn.exportdir.layout import REPORT_FILE, REPORT_VERSION
from deploy_attn.exportdir.reader import read_report

from .test_cli import run_cli


def _as_version_1(report: dict) -> dict:
    """The report as deploy-attn wrote it before FP32 joined the precisions."""
    old = {k: v for k, v in report.items() if k not in ("report_version", "precisions")}
    fp32 = {k: v for k, v in report["precisions"]["fp32"].items() if k != "file"}
    old["parity"] = {"fp32": fp32}
    old["precisions"] = {p: e for p, e in report["precisions"].items() if p != "fp32"}
    return old


def test_fp32_is_a_precision_and_version_1_reads_the_same(tmp_path, capsys):
    result = export("se", out_dir=tmp_path, precisions=("fp16",))
    written = json.loads((tmp_path / REPORT_FILE).read_text())
    assert written["report_version"] == REPORT_VERSION == 2 and "parity" not in written
    assert list(written["precisions"]) == ["fp32", "fp16"]
    for entry in written["precisions"].values():  # the same fields for every precision
        assert {"file", "tolerance", "results", "ok"} <= set(entry), sorted(entry)
    assert written["precisions"]["fp32"]["file"] == result.model_path.name

    (tmp_path / REPORT_FILE).write_text(json.dumps(_as_version_1(written)))
    assert read_report(tmp_path) == written
    code, out, err = run_cli(capsys, "check", str(tmp_path))
    assert code == 0 and "fp32" in out and "fp16" in out, out + err


def test_a_newer_report_is_refused_in_one_line(tmp_path, capsys):
    export("se", out_dir=tmp_path)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    (tmp_path / REPORT_FILE).write_text(json.dumps({**report, "report_version": 99}))
    code, out, err = run_cli(capsys, "check", str(tmp_path))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "report version 99 is newer than this deploy-attn reads (2)" in lines[0], err
