"""What the portable INT8 form costs in speed, and what it saves in accuracy, on this CPU
and on this CPU limited to AVX2 (no VNNI: 8-bit pair sums saturate in int16).

For each model: the OpenVINO FP32 IR, the portable INT8 IR (``--target-cpu portable``,
the default) and the full-range one (``--target-cpu vnni``), timed interleaved at batch 1
in one child process per ISA (OpenVINO reads ``ONEDNN_MAX_CPU_ISA``/``OV_CPU_MAX_ISA`` when
it loads, so each ISA gets its own process). Speed is a ratio within one child (the median over
rounds of FP32 ms / INT8 ms); the cosine to PyTorch is on 8 seeded inputs.

    python3 benchmarks/int8_isa.py [MODELS...] [--runs 40] [--threads 2]

Needs OpenVINO (pip install -e ".[openvino]"). Weights are the registry's seeded ones, so
the cosine only shows whether an ISA changes what a file computes, not a trained model's
accuracy (the digits test gives that).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import (cpu_targets, paired, parser, print_table, quantized, reference_outputs,
                    timed, work_dir)

from deploy_attn.core.console import to_stderr as log
from deploy_attn.core.cpu import ISA_LIMITS, isa_line
from deploy_attn.core.numerics import INT8, compare, seeded_inputs
from deploy_attn.registry import get_spec
from deploy_attn.runtime.openvino import OpenVINORunner
from deploy_attn.targets.cpu import write_target

MODELS = ("mobilenetv2_ca", "resnet18_cbam")
ISAS = {"native": {}, "avx2": {k: "AVX2" for k in ISA_LIMITS}}
IRS = ("fp32", "int8 portable", "int8 vnni")


def irs(name: str, work: Path) -> dict[str, Path]:
    """The three IRs of ``name``, made once per source hash: the FP32 CPU target and the
    OpenVINO target of the TensorRT-form INT8 Q/DQ file for each CPU (generated weights:
    the export's parity gate would refuse them, so the files come from the stages)."""
    qdq = quantized(name, work)["int8"][0]
    files = {"fp32": cpu_targets(name, work)["openvino"]}
    for cpu in ("portable", "vnni"):
        directory = work / name / f"int8-{cpu}"
        xml = directory / "model.int8.xml"
        if not xml.is_file():
            log(f"OpenVINO target of {qdq.name} for --target-cpu {cpu}")
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(qdq, directory / "model.int8.onnx")
            write_target("openvino", directory / "model.int8.onnx", cpu)
        files[f"int8 {cpu}"] = xml
    return files


def child(args) -> None:
    """Time and score the IRs under this process's ISA; one JSON line on stdout."""
    files = {k: Path(v) for k, v in json.loads(args.child).items()}
    shape = get_spec(args.models[0]).input_shape()
    x1 = seeded_inputs(shape)
    x8 = seeded_inputs((8,) + shape[1:])
    ref = reference_outputs(args.models[0], x8)
    compiled = {k: OpenVINORunner(p, args.threads) for k, p in files.items()}
    cosine = {k: compare(c.run(x8), ref, INT8).cosine for k, c in compiled.items()}
    ms, times = timed({k: c.timed(x1) for k, c in compiled.items()}, args)
    speedup = {k: paired(times, "fp32", k) for k in IRS[1:]}
    print(json.dumps({"isa": isa_line(), "ms": ms, "speedup": speedup, "cosine": cosine}))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    work = work_dir(args.work)
    rows, lines = [], set()
    for name in args.models:
        files = irs(name, work)
        for isa, env in ISAS.items():
            log(f"time {name} on {isa}")
            cmd = [sys.executable, __file__, name, "--child", json.dumps(
                {k: str(v) for k, v in files.items()}), "--runs", str(args.runs),
                "--warmup", str(args.warmup), "--threads", str(args.threads)]
            run = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True,
                                 text=True, check=False)
            if run.returncode:
                sys.exit(f"{name} on {isa}: {run.stderr.strip().splitlines()[-1]}")
            got = json.loads(run.stdout.strip().splitlines()[-1])
            lines.add(f"{isa}: {got['isa']}")
            ms, cos = got["ms"], got["cosine"]
            rows.append([name, isa] + [f"{ms[k]:.2f}" for k in IRS]
                        + [f"{got['speedup'][k]:.2f}x" for k in IRS[1:]]
                        + [f"{cos[k]:.5f}" for k in IRS])
    print(f"OpenVINO, batch 1, {args.threads} threads, medians of {args.runs} interleaved runs")
    for line in sorted(lines):
        print(f"  {line}")
    print_table(["model", "ISA", "fp32 ms", "portable ms", "vnni ms", "fp32/portable",
                 "fp32/vnni", "cos fp32", "cos portable", "cos vnni"], rows)


if __name__ == "__main__":
    main()
