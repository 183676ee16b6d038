"""What the benchmark scripts share: options, cached artifacts, interleaved timing, tables.

Artifacts go to ``export/.bench/<source hash>/NAME`` (the hash covers the package sources
and torch's version, so a code change never reuses a stale graph); ``export/`` itself, the
user's export root, is not touched.
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

import deploy_attn
from deploy_attn import export
from deploy_attn.core.console import format_table, to_stderr as log
from deploy_attn.core.errors import DeployAttnError
from deploy_attn.core.numerics import INT8, compare, seeded_inputs
from deploy_attn.graph.export import DEFAULT_OPSET, export_onnx
from deploy_attn.graph.simplify import simplify_onnx
from deploy_attn.precision.calib import calibration_data
from deploy_attn.registry import get_spec
from deploy_attn.runtime.backends import environment
from deploy_attn.runtime.ort import ort_outputs, ort_session
from deploy_attn.runtime.pytorch import torch_threads
from deploy_attn.runtime.timing import BLOCK, SETTLE_S, interleaved_times, paired

REPO = Path(__file__).resolve().parents[1]
CALIB_COUNT = 32
NOT_SLOWER = 0.97  # "never slower", with 3 % for timing noise on a shared 2-core machine


def parser(description: str, runs: int = 40) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--runs", type=int, default=runs, help=f"timed runs per peer (default {runs})")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per peer first")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, every runtime")
    p.add_argument("--work", type=Path, default=REPO / "export" / ".bench",
                   help="artifact cache root (default export/.bench)")
    return p


def work_dir(root: Path) -> Path:
    digest = hashlib.sha256(__import__("torch").__version__.encode())
    for source in sorted((REPO / "deploy_attn").rglob("*.py")):
        digest.update(source.read_bytes())
    return root / digest.hexdigest()[:12]


def exported(name: str, work: Path) -> Path:
    """The FP32 deploy graph of ``name`` (our rewrites + onnxsim), exported once."""
    directory = work / name
    if not (directory / "model.onnx").is_file():
        log(f"export {name}")
        export(name, out_dir=directory)
    return directory / "model.onnx"


def cpu_targets(name: str, work: Path) -> dict[str, Path]:
    """The FP32 CPU target files of ``name`` (each in its runtime's graph forms), exported
    once: {'onnx-cpu': model.cpu.onnx, 'openvino': model.xml}."""
    directory = work / name / "targets"
    files = {"onnx-cpu": directory / "model.cpu.onnx", "openvino": directory / "model.xml"}
    if not all(f.is_file() for f in files.values()):
        log(f"export {name} --format {','.join(files)}")
        export(name, out_dir=directory, formats=tuple(files))
    return files


def plain_export(name: str, work: Path) -> tuple[Path | None, str]:
    """The reference module exported as it is: (path, '') or (None, why it failed)."""
    directory = work / name
    dst = directory / "plain.onnx"
    failed = directory / "plain.failed"
    if dst.is_file():
        return dst, ""
    if failed.is_file():
        return None, failed.read_text()
    log(f"plain export {name}")
    model = deploy_attn.create_model(name)
    shape = get_spec(name).input_shape()
    try:
        export_onnx(model, shape, directory / "plain.raw.onnx", opset=DEFAULT_OPSET)
        simplify_onnx(directory / "plain.raw.onnx", dst)
    except DeployAttnError as exc:
        why = str(exc).splitlines()[0][:90]
        failed.write_text(why)
        return None, why
    return dst, ""


def quantized(name: str, work: Path) -> dict[str, tuple[Path, float]]:
    """Both INT8 forms of ``name`` with their cosine to PyTorch on 8 seeded inputs:
    {'int8': TensorRT-form Q/DQ, 'int8-cpu': the ONNX Runtime CPU form}."""
    from deploy_attn.precision.cpu_int8 import quantize_int8_cpu
    from deploy_attn.precision.int8 import quantize_int8

    src = exported(name, work)
    spec = get_spec(name)
    shape = spec.input_shape()
    calib = None
    x = seeded_inputs((8,) + shape[1:])
    ref = reference_outputs(name, x)
    out = {}
    for precision, fn in (("int8", quantize_int8), ("int8-cpu", quantize_int8_cpu)):
        dst = src.parent / f"model.{precision}.onnx"
        if not dst.is_file():
            log(f"quantize {name} {precision}")
            calib = calib or calibration_data(None, shape, None, CALIB_COUNT)
            fn(src, dst, calib)
        y = ort_outputs(ort_session(dst), x)
        out[precision] = (dst, compare(y, ref, INT8).cosine)
    return out


def profiles(paths: Mapping[str, Path], x: np.ndarray, threads: int, runs: int,
             warmup: int = 5, runtimes: tuple[str, ...] = ("ort", "openvino")
             ) -> dict[str, dict[str, dict[str, float]]]:
    """Milliseconds per run by op type, {runtime: {key: {op: ms}}}, for every graph in
    ``paths``, profiled in interleaved blocks (as ``measure`` times them), so a neighbour's
    load falls on every graph alike.

    * ``ort``: ONNX Runtime's profiler, kernel time by op type after its fusions and
      layout changes (FusedConv, ReorderInput/ReorderOutput for the NCHWc layout);
    * ``openvino``: OpenVINO's per-layer performance counters by layer type and kernel
      (``Convolution brgconv_avx512_1x1_f32``: its runtime graph, after fusions)."""
    import json
    from collections import Counter

    from deploy_attn.runtime.openvino import ov_config, require_openvino

    totals: dict[tuple[str, str], Counter] = {(r, k): Counter() for r in runtimes
                                              for k in paths}
    sessions, requests = {}, {}
    for key, path in paths.items():
        if "ort" in runtimes:
            sessions[key] = ort_session(path, threads, sequential=True,
                                        profile_prefix=path.parent / f"prof-{path.stem}")
        if "openvino" in runtimes:
            ov = require_openvino()
            core = ov.Core()
            requests[key] = core.compile_model(core.read_model(str(path)), "CPU", {
                **ov_config(threads), "PERF_COUNT": True}).create_infer_request()

    def ov_run(key: str, counted: bool) -> None:
        requests[key].infer({0: x})
        for layer in requests[key].get_profiling_info() if counted else ():
            if layer.status.name == "EXECUTED":
                totals["openvino", key][f"{layer.node_type} {layer.exec_type}"] += \
                    layer.real_time.total_seconds() * 1000 / runs

    def ort_run(key: str, _: bool) -> None:
        sessions[key].run(None, {sessions[key].get_inputs()[0].name: x})

    for key in paths:
        for run in ([ort_run] if sessions else []) + ([ov_run] if requests else []):
            for _ in range(warmup):
                run(key, False)
    for start in range(0, runs, BLOCK):
        for key in paths:
            for run in ([ort_run] if sessions else []) + ([ov_run] if requests else []):
                for _ in range(min(BLOCK, runs - start)):
                    run(key, True)
    for key, session in sessions.items():
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink()
        first = sorted(e["ts"] for e in events if e.get("name") == "model_run")[warmup]
        for event in events:
            if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                    and event["ts"] >= first):
                totals["ort", key][event["args"]["op_name"]] += event["dur"] / 1000 / runs
    return {r: {k: dict(totals[r, k]) for k in paths} for r in runtimes}


def profile_table(title: str, prof: Mapping[str, Mapping[str, float]]) -> None:
    """Two graphs' profiles side by side (op, a, b, b - a), largest first, with totals."""
    (ka, a), (kb, b) = prof.items()
    ops = sorted(set(a) | set(b), key=lambda o: -max(a.get(o, 0), b.get(o, 0)))
    print(f"\n{title}")
    print_table(["op", ka, kb, f"{kb} - {ka}"],
                [[o, f"{a.get(o, 0):.3f}", f"{b.get(o, 0):.3f}",
                  f"{b.get(o, 0) - a.get(o, 0):+.3f}"] for o in ops]
                + [["total", f"{sum(a.values()):.3f}", f"{sum(b.values()):.3f}",
                    f"{sum(b.values()) - sum(a.values()):+.3f}"]])


def reference_outputs(name: str, x: np.ndarray) -> np.ndarray:
    from deploy_attn.runtime.pytorch import torch_outputs

    return torch_outputs(deploy_attn.create_model(name), x)


def measure(fns: Mapping[str, Callable[[], Any]], args: argparse.Namespace) -> dict[str, float]:
    """Median ms of each peer, timed interleaved in one loop."""
    return timed(fns, args)[0]


def timed(fns: Mapping[str, Callable[[], Any]], args: argparse.Namespace
          ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(median ms of each peer, every timing in run order), timed interleaved in one loop."""
    with torch_threads(args.threads):
        times = interleaved_times(fns, args.runs, args.warmup)
    return {k: statistics.median(v) for k, v in times.items()}, times


def header(title: str, args: argparse.Namespace) -> None:
    env = environment()
    print(f"# {title}")
    print(f"{env['cpu']} ({', '.join(env['cpu_flags'])}), {env['usable_cores']} usable cores, "
          f"load average {' '.join(map(str, env['load_average']))}; "
          + ", ".join(f"{k} {env['versions'].get(k)}" for k in ("torch", "onnxruntime", "onnx")))
    print(f"{args.threads} thread(s) per runtime, median of {args.runs} interleaved runs "
          f"(rounds of {SETTLE_S:g} s untimed settling + {BLOCK} timed runs per peer) after "
          f"{args.warmup} warm-up; ONNX Runtime CPU, ORT_ENABLE_ALL, inter-op 1, sequential, "
          "spinning off.\n")


def footer(t0: float) -> None:
    import os

    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{time.perf_counter() - t0:.0f} s")


def print_table(header_: list[str], rows: list[list[Any]]) -> None:
    print(format_table(header_, rows))
