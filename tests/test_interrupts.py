"""Interrupted exports (SIGINT, SIGTERM, SIGKILL at several stages, in a real process):
the earlier export stays byte for byte, nothing that looks like an artifact is left, and
the next run removes what a killed one left."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy_attn.exportdir.transaction import STAGING_PREFIX

from .conftest import ARTIFACT, snapshot

REPO = Path(__file__).resolve().parents[1]
# MobileNetV3 small with CA: every stage, and int8's calibration reached in 8.3 s against
# mobilenetv2_ca's 13.0 s at 128x128 (AMX Xeon, one thread; most of it torch.export)
EXPORT = ["export", "mobilenetv3_small_ca", "--input-size", "64", "64", "--precision",
          "fp16,int8", "--calib-count", "8"]
pytestmark = pytest.mark.xdist_group("interrupts")  # one worker: the good export made once


def interrupt_at(stage: str, sig: signal.Signals, out: Path, delay: float):
    """Start an export into ``out``, wait for ``stage``'s progress line on stderr (not a
    fixed sleep), then ``delay`` seconds more, and send ``sig``: (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "deploy_attn.cli", *EXPORT, "-o", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            cwd=REPO)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if stage in line:
                break
        else:
            pytest.fail(f"the export ended before '{stage}': {''.join(seen)}")
        time.sleep(delay)
        proc.send_signal(sig)
        rest = proc.stderr.read()
        return proc.wait(timeout=120), "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def good(export_cache) -> Path:
    """A good export to interrupt an export over (copied, never changed): any model's."""
    return export_cache("ca").directory


@pytest.mark.parametrize("stage,sig,delay,over_good", [
    ("export opset", signal.SIGINT, 1.5, True),  # inside torch.export, which wraps Ctrl-C
    # the stages between (about 25 s each on a 2-core AVX2 machine) run with -m slow
    pytest.param("simplify", signal.SIGTERM, 0.0, False, marks=pytest.mark.slow),
    pytest.param("fp16: measure", signal.SIGINT, 0.0, False, marks=pytest.mark.slow),
    ("int8: calibrate", signal.SIGTERM, 0.3, True),
], ids=["sigint-torch-export", "sigterm-simplify", "sigint-fp16", "sigterm-int8"])
def test_interrupted_export(good, tmp_path, stage, sig, delay, over_good):
    out = tmp_path / "out"
    if over_good:
        shutil.copytree(good, out)
    before = snapshot(out, staging=False) if over_good else {}
    code, err = interrupt_at(stage, sig, out, delay)
    last = err.strip().splitlines()[-1]
    if sig == signal.SIGINT:
        assert code == 130 and last.startswith("deploy-attn: interrupted"), err
    else:
        assert code == 143 and last.startswith("deploy-attn: terminated"), err
    assert "Traceback" not in err and "\x1b" not in err and "error" not in last, err
    if over_good:
        assert snapshot(out, staging=False) == before, "the earlier export changed"
    else:
        assert not [p for p in out.rglob("*") if ARTIFACT.match(p.name)], list(out.rglob("*"))
    assert not list(out.glob(STAGING_PREFIX + "*")), "staging left behind"


def test_killed_export_leaves_the_good_one_and_the_next_run_cleans_up(good, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(good, out)
    before = snapshot(out, staging=False)
    code, _ = interrupt_at("int8: calibrate", signal.SIGKILL, out, 0.3)
    assert code == -signal.SIGKILL
    assert snapshot(out, staging=False) == before
    assert list(out.glob(STAGING_PREFIX + "*")), "SIGKILL cannot clean up: staging expected"
    # the next run into the folder (here one that fails at once) removes the debris
    proc = subprocess.run([sys.executable, "-m", "deploy_attn.cli", *EXPORT, "--calib-dir",
                           str(tmp_path / "nope"), "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1 and "calibration folder does not exist" in proc.stderr
    assert not list(out.glob(STAGING_PREFIX + "*"))
    after = snapshot(out, staging=False)
    after.pop("export-failed.json")
    assert after == before
