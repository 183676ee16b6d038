"""Same artifacts before and after a change: runs a fixed sample of exports with the package
as it is at a git revision and as it is in the working tree, and compares every file byte
for byte; JSON files are compared with the fields that record time and versions removed,
and an export report in an older shape is first read as the working tree reads it.

    python3 tools/same_artifacts.py [REV]       (default REV: HEAD)

Exit 0 when every file matches, 1 with one line per difference otherwise. Run it before
committing a change meant to leave behaviour alone (issue "One house").
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The sample: a registry model through every precision and CPU target, a dynamic-batch
# export, the user-module path with FP16 and INT8, a segmentation model's INT8, and a
# foreign module whose export the graph passes rewrite.
SAMPLE = {
    "registry": ["mobilenetv2_ca", "--input-size", "64", "64",
                 "--precision", "fp16,int8,int8-cpu", "--format", "openvino,ort,onnx-cpu"],
    "dynamic": ["eca_resnet18", "--input-size", "64", "64", "--dynamic-batch",
                "--precision", "fp16"],
    "user": ["examples/my_model.py:build", "--input-size", "96", "96",
             "--precision", "fp16,int8", "--format", "openvino,onnx-cpu"],
    "segmentation": ["unet_cbam", "--channels", "1", "--input-size", "32", "32",
                     "--num-classes", "11", "--precision", "int8", "--format", "openvino"],
    # the official CA code as written (x.size(), expand(-1, -1, h, w)) with a dynamic
    # batch: the graph passes' static_shapes and expand_before_broadcast have work to do
    "foreign": ["tests/foreign_models.py:OfficialMBV2CA", "--input-size", "64", "64",
                "--dynamic-batch", "--precision", "fp16"],
}

# Keys whose values record when, how long, or with which library versions a run happened.
VOLATILE = {"seconds", "versions", "created", "built_at", "timestamp", "elapsed_s",
            "wall_s", "ms", "mean_ms", "median_ms", "p90_ms", "speedup"}


def _scrub(value):
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


REPORTS = ("report.json", "export-failed.json")
sys.path.insert(0, str(ROOT))
from deploy_attn.exportdir.reader import upgrade_report  # noqa: E402  (this tree's reader)


def digest(path: Path, checkout: Path, out: Path) -> str:
    """A file's sha256; a JSON file's with VOLATILE keys removed and the checkout's and the
    output's paths (a user module's file is recorded by path) written as placeholders."""
    data = path.read_bytes()
    if path.suffix == ".json":
        value = json.loads(data)
        if path.name in REPORTS:  # an older report shape, read as this tree reads it
            value = upgrade_report(value, path)
        text = json.dumps(_scrub(value), sort_keys=True)
        data = text.replace(str(out), "<out>").replace(str(checkout), "<checkout>").encode()
    return hashlib.sha256(data).hexdigest()


def manifest(out: Path, checkout: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): digest(p, checkout, out) for p in sorted(out.rglob("*"))
            if p.is_file()}


def run_sample(src: Path, out: Path) -> None:
    """Exports the sample with the package found at src (a checkout's root)."""
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
    for name, args in SAMPLE.items():
        print(f"  {name}: deploy-attn export {' '.join(args)}", flush=True)
        cmd = [sys.executable, "-c", "from deploy_attn.cli import main; main()", "export",
               *args, "-o", str(out / name)]
        done = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the sample export '{name}' failed at {src}: "
                             f"{(done.stderr or done.stdout).strip().splitlines()[-1]}")


def compare(before: dict[str, str], after: dict[str, str]) -> list[str]:
    lines = [f"only before: {k}" for k in sorted(before.keys() - after.keys())]
    lines += [f"only after: {k}" for k in sorted(after.keys() - before.keys())]
    lines += [f"differs: {k}" for k in sorted(before.keys() & after.keys())
              if before[k] != after[k]]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="HEAD", help="git revision to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="same-artifacts-") as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.rev],
                       cwd=ROOT, check=True)
        try:
            print(f"before ({args.rev}):")
            run_sample(base, tmp / "before")
            print("after (working tree):")
            run_sample(ROOT, tmp / "after")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT,
                           check=False)
        before, after = manifest(tmp / "before", base), manifest(tmp / "after", ROOT)
    lines = compare(before, after)
    for line in lines:
        print(line)
    print(f"{len(before)} files before, {len(after)} after, {len(lines)} differences")
    return 1 if lines else 0


if __name__ == "__main__":
    raise SystemExit(main())
