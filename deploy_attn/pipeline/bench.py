"""Stage: exported artifacts -> latency per backend (PyTorch eager, ONNX Runtime CPU at each
precision, TensorRT where it can run), measured interleaved on one input batch.

Backends are timed round-robin (one run of each per round), so drift on a shared machine
(another job, clock changes) hits all of them alike; medians and p90 are reported, and
absolute times are kept beside the ratios. A backend that cannot run here (TensorRT
without a GPU, an artifact whose precision failed its parity check) is listed as skipped
with the reason, never given a number.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ArtifactError, ConfigError, DeployAttnError, ParityError
from ..registry import get_spec
from .artifacts import library_versions, read_json, write_json
from .parity import seeded_inputs
from .progress import Progress, silent, to_stderr

BENCH_FILE = "bench.json"  # beside report.json when bench(save=True)
# backend -> the precision of the artifact it runs (None: the PyTorch reference module)
BACKENDS: dict[str, str | None] = {
    "torch": None,
    "ort-fp32": "fp32", "ort-fp16": "fp16", "ort-int8": "int8", "ort-int8-fp32": "int8-fp32",
    "ort-int8-cpu": "int8-cpu",  # the CPU-tuned INT8 variant (cpu_int8.py), not a TensorRT input
    "trt-fp32": "fp32", "trt-fp16": "fp16", "trt-int8": "int8", "trt-int8-fp32": "int8-fp32",
    # OpenVINO CPU on the export's IR (export --format openvino), else on its ONNX file;
    # the Q/DQ forms as they are, run as INT8 kernels
    "ov-fp32": "fp32", "ov-fp16": "fp16", "ov-int8": "int8", "ov-int8-fp32": "int8-fp32",
    # ONNX Runtime on the ORT-format file (export --format ort), as a mobile build runs it
    "ortmobile-fp32": "fp32", "ortmobile-fp16": "fp16", "ortmobile-int8": "int8",
    "ortmobile-int8-fp32": "int8-fp32",
    # ONNX Runtime CPU on the CPU-form ONNX file (export --format onnx-cpu)
    "ortcpu-fp32": "fp32", "ortcpu-fp16": "fp16", "ortcpu-int8": "int8",
    "ortcpu-int8-fp32": "int8-fp32",
}
# the backends that run a CPU target file (export --format), by format
TARGET_PREFIXES = {"ov-": "openvino", "ortmobile-": "ort", "ortcpu-": "onnx-cpu"}
TARGET_BACKENDS = {b: fmt for b in BACKENDS for prefix, fmt in TARGET_PREFIXES.items()
                   if b.startswith(prefix)}
BLOCK = 10  # timed calls per backend per round
SETTLE_S = 0.25  # untimed running before each block (see interleaved_times)
DEFAULT_BACKENDS = ("torch", "ort-fp32", "ort-fp16", "ort-int8", "trt-fp16", "trt-int8")


# --- timing ----------------------------------------------------------------------------
def interleaved_times(fns: Mapping[str, Callable[[], Any]], runs: int, warmup: int,
                      step: Progress | None = None, block: int = BLOCK,
                      settle_s: float = SETTLE_S) -> dict[str, list[float]]:
    """Milliseconds per call of each function: ``warmup`` untimed calls each, then rounds
    in which each function in turn runs untimed for ``settle_s`` seconds (at least once)
    and then makes up to ``block`` timed calls (A, B, C, A, B, C, ... in blocks), until
    each has ``runs`` timings.

    deploy: the settling absorbs what the previous runtime leaves behind. ONNX Runtime's
    and OpenMP's worker threads keep spinning for tens of milliseconds after their last
    run; on a 2-core machine they take the core the next runtime's worker needs, and its
    first 3 to 7 runs after a switch took 2-3x its steady time (measured with MobileNetV2,
    6.5 ms steady). One settling call was not enough; 0.25 s is. Without it, whichever
    peer follows the slowest one in the round looks fastest."""
    if runs < 1 or warmup < 0 or block < 1:
        raise ConfigError(f"runs {runs} and block {block} must be >= 1, warmup {warmup} >= 0")
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
            if step:
                step(name)
    times: dict[str, list[float]] = {name: [] for name in fns}
    while any(len(t) < runs for t in times.values()):
        for name, fn in fns.items():
            n = min(block, runs - len(times[name]))
            if n and len(fns) > 1:
                until = time.perf_counter() + settle_s
                fn()
                while time.perf_counter() < until:
                    fn()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
                if step:
                    step(name)
    return times


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # samples per second at the median

    @classmethod
    def of(cls, times_ms: Sequence[float], batch: int) -> "Latency":
        t = np.asarray(times_ms, dtype=np.float64)
        median = float(np.median(t))
        return cls(median, float(np.percentile(t, 90)), float(t.mean()), float(t.min()),
                   batch * 1e3 / median)


# --- the environment the numbers belong to --------------------------------------------
def gpu_name() -> str | None:
    import torch

    from .engine import _gpu_problem

    return None if _gpu_problem() else torch.cuda.get_device_name(torch.cuda.current_device())


def environment() -> dict:
    """CPU, cores, load, GPU and library versions: what a latency number depends on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    from .isa import cpu_isa

    cpu = cpu_isa()
    return {"cpu": cpu["model"], "cpu_flags": cpu["isa"], "isa": cpu, "cores": os.cpu_count(),
            "usable_cores": usable, "load_average": [round(v, 2) for v in os.getloadavg()],
            "gpu": gpu_name(), "platform": platform.platform(), "versions": library_versions()}


# --- runners -----------------------------------------------------------------------------
def ort_options(threads: int) -> dict:
    """The session options every ONNX Runtime backend uses, read back from the options
    object its sessions are made with (stated in the result)."""
    from .parity import ort_session_options

    opts = ort_session_options(threads, sequential=True)
    return {"provider": "CPUExecutionProvider",
            "graph_optimization_level": opts.graph_optimization_level.name,
            "intra_op_num_threads": opts.intra_op_num_threads,
            "inter_op_num_threads": opts.inter_op_num_threads,
            "execution_mode": opts.execution_mode.name,
            "allow_spinning": opts.get_session_config_entry("session.intra_op.allow_spinning")}


def paired(times: Mapping[str, list[float]], a: str, b: str, block: int = BLOCK) -> float:
    """Median over rounds of (a's median / b's median) in that round: > 1, b is faster. A
    neighbour's load on a shared machine moves both peers of a round alike, so this ratio
    holds still where the medians of a whole run drift apart."""
    def rounds(k):
        return [statistics.median(times[k][i:i + block]) for i in range(0, len(times[k]), block)]

    return statistics.median(x / y for x, y in zip(rounds(a), rounds(b)))


def ort_runner(path: str | Path, x: np.ndarray, threads: int) -> Callable[[], Any]:
    """An ONNX Runtime CPU session as a deployment would configure it: every graph
    optimisation (fusions, NCHWc layouts, Q/DQ -> QLinear ops), a fixed intra-op thread
    count, no inter-op parallelism."""
    from .parity import ort_session

    session = ort_session(path, threads, sequential=True)
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch.set_num_threads for the block, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_runner(model, x: np.ndarray) -> Callable[[], Any]:
    """Eager PyTorch under inference_mode (call inside ``torch_threads``)."""
    import torch

    model = model.eval()
    xt = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return model(xt)

    return run


@contextlib.contextmanager
def trt_runner(engine_path: Path, x: np.ndarray) -> Iterator[Callable[[], Any]]:
    """A TensorRT engine run through Polygraphy's TrtRunner: host input -> device ->
    host output, as an application calling it from NumPy would (copies included)."""
    from .engine import engine_runner

    with engine_runner(engine_path) as run:
        yield lambda: run(x)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, columns padded to their widest cell (the last one is not)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    widths[-1] = 0
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * max(w, len(h)) for h, w in zip(header, widths)))
    return "\n".join(lines)


# --- the result -------------------------------------------------------------------------
@dataclass
class BackendResult:
    backend: str
    status: str  # "ok" or "skipped"
    precision: str | None = None
    artifact: str | None = None
    reason: str | None = None  # why it was skipped
    latency: Latency | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["latency"] = asdict(self.latency) if self.latency else None
        return d


@dataclass
class BenchResult:
    name: str
    batch: int
    threads: int
    runs: int
    warmup: int
    input_shape: list[int]
    backends: list[BackendResult]
    ort_options: dict
    torch_options: dict
    ov_options: dict | None
    method: str
    environment: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["backends"] = [b.as_dict() for b in self.backends]
        return d

    def table(self) -> str:
        """The latency table and the settings it was measured with."""
        d = self.as_dict()
        return format_table(*latency_table(d)) + "\n" + settings_line(d)


def latency_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a bench result (as_dict form): median, p90, mean, throughput and
    speed-up over eager PyTorch (or the first measured backend); skipped rows say why."""
    timed = [b for b in result["backends"] if b.get("latency")]
    base = next((b for b in timed if b["backend"] == "torch"), timed[0] if timed else None)
    rows = []
    for b in result["backends"]:
        lat = b.get("latency")
        if not lat:
            rows.append([b["backend"], "skipped", "", "", "", "", b.get("reason") or ""])
            continue
        rows.append([b["backend"], f"{lat['median_ms']:.3f}", f"{lat['p90_ms']:.3f}",
                     f"{lat['mean_ms']:.3f}", f"{lat['throughput']:.1f}",
                     f"{base['latency']['median_ms'] / lat['median_ms']:.2f}x",
                     b.get("artifact") or ""])
    header = ["backend", "median ms", "p90 ms", "mean ms", "samples/s",
              f"vs {base['backend'] if base else '-'}", "artifact / reason skipped"]
    return header, rows


def settings_line(result: dict) -> str:
    """What a bench result was measured with, in one paragraph."""
    o, env = result.get("ort_options", {}), result.get("environment", {})
    ov = result.get("ov_options")
    return (f"{result['name']} {'x'.join(map(str, result['input_shape']))}, "
            f"{result['threads']} thread(s), {result['runs']} runs after {result['warmup']} "
            f"warm-up, {result.get('method', '')}. ONNX Runtime {o.get('provider')}, "
            f"{o.get('graph_optimization_level')}, intra-op {o.get('intra_op_num_threads')}, "
            f"inter-op {o.get('inter_op_num_threads')}, {o.get('execution_mode')}, spinning "
            f"{'off' if o.get('allow_spinning') == '0' else 'on'}. "
            + (f"OpenVINO CPU {', '.join(f'{k} {v}' for k, v in ov.items())}. " if ov else "") +
            f"{env.get('cpu', '?')} ({' '.join(env.get('cpu_flags', [])) or 'no listed ISA'}; "
            f"8-bit dot products {env.get('isa', {}).get('int8_dot', '?')}; "
            f"{env.get('usable_cores', '?')} usable cores, load average "
            f"{' '.join(map(str, env.get('load_average', [])))})"
            f"{', GPU ' + env['gpu'] if env.get('gpu') else ', no GPU'}.")


# --- progress -------------------------------------------------------------------------
def progress_bar(total: int, label: str, stream=None, unit: str = "run",
                 disable: bool = False):
    """The bar every long command draws (tqdm on stderr): ``update(n)`` per ``n`` steps
    (``unit``s), ``set_postfix_str(note)`` for what runs now; ``disable`` draws nothing."""
    from tqdm import tqdm

    return tqdm(total=max(total, 1), desc=label, file=stream or sys.stderr, unit=unit,
                dynamic_ncols=True, mininterval=0.1, disable=disable)


# --- the stage ------------------------------------------------------------------------
def _message(progress: bool | Progress) -> Progress:
    if callable(progress):
        return progress
    return to_stderr if progress else silent


def check_backends(backends: Sequence[str]) -> list[str]:
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend {', '.join(unknown)}; choose from "
                          f"{', '.join(BACKENDS)}")
    if not backends:
        raise ConfigError("no backend to benchmark")
    return list(dict.fromkeys(backends))


def _failed(report: dict | None, path: Path) -> dict[str, str]:
    """Per precision whose artifact failed its check in the export, why (FP32 failing
    means no artifact at all)."""
    from .job import PRECISIONS

    if not report:
        return {}
    fp32 = report.get("parity", {}).get("fp32", {})
    if fp32 and not fp32.get("ok", True):
        return {p: f"the FP32 export failed its parity check; see {path}" for p in PRECISIONS}
    reasons = {}
    for p, entry in (report.get("precisions") or {}).items():
        if not entry.get("ok", True):
            r = (entry.get("results") or [{}])[0]
            reasons[p] = (f"the {p} artifact failed its parity check in the last export "
                          f"(cosine {r.get('cosine', float('nan')):.4f}, need >= "
                          f"{entry.get('tolerance', {}).get('min_cosine')}); see {path}")
    return reasons


def ensure_artifacts(precisions: Sequence[str], batch: int, directory: Path,
                     say: Progress) -> tuple[dict, dict[str, str]]:
    """The export report of ``directory`` and, per wanted precision, why its artifact is
    unavailable (empty when all are there). Missing precisions are exported first (added
    to the existing export with its settings; a registry name's directory without an
    export gets a new one, with a dynamic batch when batch > 1); a precision that fails
    its parity check is a reason, not an error. A batch > 1 against a fixed-batch export
    is a ConfigError: re-export it."""
    from .job import (FAILED_REPORT, REPORT_FILE, ExportConfig, config_from_report,
                      export_adding, read_report)

    report_path, failed = directory / REPORT_FILE, directory / FAILED_REPORT
    report = read_report(directory) if report_path.is_file() else None
    fresh = None
    if report is not None:
        cfg = config_from_report(report, directory)
        fixed = report["input_shape"][0] if not cfg.dynamic_batch else None
        if fixed is not None and fixed != batch:
            raise ConfigError(
                f"{directory} holds a fixed-batch export (batch {fixed}), so batch {batch} "
                f"cannot run on it; re-export with 'deploy-attn export {report['name']} -o "
                f"{directory} --dynamic-batch' (or bench --batch 1)")
    else:
        from ..sources import load_source

        fresh = (load_source(directory.name), ExportConfig(dynamic_batch=batch > 1))

    tried = None  # the failure report of a run here: what it could not add (export intact)

    def available() -> set[str]:
        files = (report or tried or {}).get("files", {})
        return {p for p, f in files.items() if (directory / f).is_file()}

    def unavailable() -> dict[str, str]:
        reasons = {**_failed(report, report_path), **_failed(tried, failed)}
        return {p: r for p, r in reasons.items() if p in precisions}

    while True:
        reasons = unavailable()
        missing = [p for p in precisions if p not in available() and p not in reasons]
        if not missing:
            return report or tried, reasons
        say(f"export {directory.name} -> {directory}: {', '.join(missing)} missing")
        before = (available(), set(reasons))
        try:
            export_adding(directory, missing, say, fresh)
        except ParityError:
            pass  # a precision failed its check: the failure report says which
        except ArtifactError:
            _unless_rejected(directory)
        report = read_report(directory) if report_path.is_file() else None
        tried = read_json(failed) if failed.is_file() else None
        if (available(), set(unavailable())) == before:
            raise ArtifactError(f"{directory.name}: exporting {', '.join(missing)} produced "
                                f"nothing; see {failed if failed.is_file() else report_path}")


def _unless_rejected(directory: Path) -> None:
    """Re-raise the ArtifactError being handled unless the export finished with only
    rejections (TensorRT's operator check, a CPU target's parity): its ONNX files stand."""
    from .job import read_report

    if read_report(directory).get("status") not in ("trt-rejected", "target-rejected"):
        raise


def ensure_targets(directory: Path, report: dict, wanted: dict[str, set[str]],
                   say: Progress) -> dict:
    """The export's report once every CPU target format in ``wanted`` (format -> the
    precisions wanted in it) has an entry for each of those precisions the export has:
    missing ones are added by exporting again with the format."""
    from .job import export_adding, read_report

    have = set(report.get("files", {}))
    needed = [fmt for fmt, precisions in wanted.items()
              if (precisions & have) - set(report.get("targets", {}).get(fmt, {}))]
    if not needed:
        return report
    say(f"export {directory.name} -> {directory}: add {', '.join(needed)}")
    try:
        export_adding(directory, [], say, formats=needed)
    except ArtifactError:
        _unless_rejected(directory)
    return read_report(directory)


def bench(directory: str | Path, backends: Sequence[str] = DEFAULT_BACKENDS, batch: int = 1,
          threads: int = 2, runs: int = 50, warmup: int = 10,
          progress: bool | Progress = False, save: bool = False) -> BenchResult:
    """Latency of the export in ``directory`` on each backend at ``batch``, measured
    interleaved.

    Missing artifacts are exported first (a directory named after a registry model and
    holding no export gets one). ``progress`` True draws a bar on stderr (a callable
    receives the step messages instead, and the bar is drawn too). ``save`` writes the
    result to ``directory/bench.json``."""
    from .engine import TensorRTUnavailable, require_tensorrt
    from .job import REPORT_FILE, artifact_name, open_export, read_report
    from .targets import openvino_missing, ov_compile, ov_runner

    backends = check_backends(backends)
    for label, value, least in (("--batch", batch, 1), ("--threads", threads, 1),
                                ("--runs", runs, 1), ("--warmup", warmup, 0)):
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"{label} {value} must be an integer >= {least}")
    say = _message(progress)
    t0 = time.perf_counter()
    directory = Path(directory)
    name = directory.name
    results = {b: BackendResult(b, "skipped", BACKENDS[b]) for b in backends}

    # TensorRT and OpenVINO first: no export work for a backend that cannot run here
    ov_missing = openvino_missing() if any(b.startswith("ov-") for b in backends) else None
    for b in backends:
        if b.startswith("trt-"):
            try:
                require_tensorrt(name, BACKENDS[b])
            except TensorRTUnavailable as exc:
                results[b].reason = str(exc)
        elif b.startswith("ov-"):
            results[b].reason = ov_missing
    wanted = sorted({BACKENDS[b] for b in backends if BACKENDS[b] and not results[b].reason},
                    key=list(BACKENDS.values()).index)
    if all(r.reason for r in results.values()):  # nothing can run here: export nothing
        if (directory / REPORT_FILE).is_file():
            shape = [batch] + read_report(directory)["input_shape"][1:]
        else:
            shape = list(get_spec(name).input_shape(batch))
        return _result(name, batch, threads, runs, warmup, shape, results, t0, directory,
                       save)
    report, reasons = ensure_artifacts(["fp32"] + wanted, batch, directory, say)
    formats: dict[str, set[str]] = {}
    for b in backends:
        if b in TARGET_BACKENDS and not results[b].reason:
            formats.setdefault(TARGET_BACKENDS[b], set()).add(BACKENDS[b])
    report = ensure_targets(directory, report, formats, say)
    name = report["name"]
    for b in backends:
        p = BACKENDS[b]
        if p and not results[b].reason and p in reasons:
            results[b].reason = reasons[p]

    exp = open_export(directory)
    shape = [batch] + list(report["input_shape"][1:])
    x = seeded_inputs(shape)
    runners: dict[str, Callable[[], Any]] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_threads(threads))
        for b in backends:
            r = results[b]
            if r.reason:
                continue
            if b == "torch":
                say(f"torch: eager reference module, {threads} thread(s), inference_mode")
                runners[b] = torch_runner(exp.card().module, x)
                continue
            r.artifact = artifact_name(r.precision)
            if b.startswith("ort-"):
                say(f"{b}: ONNX Runtime session for {r.artifact}")
                runners[b] = ort_runner(directory / r.artifact, x, threads)
                continue
            if b in TARGET_BACKENDS:
                entry = report.get("targets", {}).get(TARGET_BACKENDS[b], {}).get(r.precision)
                if not entry or not entry["ok"]:  # a latency only for a file known right
                    r.reason = (entry or {}).get("reason", f"no {TARGET_BACKENDS[b]} form")
                    continue
                r.artifact = entry["files"][0]
                say(f"{b}: {entry['runtime']}: {r.artifact}")
                runners[b] = (ov_runner(ov_compile(directory / r.artifact, threads, x.shape), x)
                              if TARGET_BACKENDS[b] == "openvino" else
                              ort_runner(directory / r.artifact, x, threads))
                continue
            try:
                engine = _engine(directory, r.precision, batch, say)
                r.artifact = engine.name
                runners[b] = stack.enter_context(trt_runner(engine, x))
            except DeployAttnError as exc:  # e.g. an engine built for another GPU
                r.reason = str(exc)
        bar = None
        if runners and progress:
            bar = progress_bar(len(runners) * (runs + warmup), f"bench {name}")

        def step(note: str) -> None:
            bar.set_postfix_str(note, refresh=False)
            bar.update(1)

        try:
            times = interleaved_times(runners, runs, warmup, step if bar else None)
        finally:
            if bar:
                bar.close()
    for b, t in times.items():
        results[b].status = "ok"
        results[b].latency = Latency.of(t, batch)
    return _result(name, batch, threads, runs, warmup, shape, results, t0, directory,
                   save)


def _engine(directory: Path, precision: str, batch: int, say: Progress) -> Path:
    """The TensorRT engine of an export, built and parity-checked first (the build job)
    when missing; refused when it has no passing parity check in the report or its
    sidecar says it belongs to another TensorRT or GPU (a latency is only given for an
    engine known to compute the right thing)."""
    from .build import build_job
    from .engine import check_sidecar, current_environment, engine_path_for
    from .job import REPORT_FILE, read_report

    engine = engine_path_for(directory, precision)
    report = read_report(directory)
    if not engine.is_file():
        say(f"trt-{precision}: building and checking {engine.name}")
        build_job(directory, precision, opt_batch=batch, progress=say)
        report = read_report(directory)
    parity = report.get("engines", {}).get(precision, {}).get("parity", {})
    if not parity.get("ok"):
        raise ArtifactError(f"{engine.name} has no passing engine parity check in "
                            f"{directory / REPORT_FILE}; run 'deploy-attn build "
                            f"{directory.name} --precision {precision}'")
    check_sidecar(engine, current_environment(directory.name, precision))
    return engine


def _result(name, batch, threads, runs, warmup, shape, results, t0, directory,
            save) -> BenchResult:
    import torch

    from .targets import ov_config  # the settings every OpenVINO backend compiles with

    result = BenchResult(
        name=name, batch=batch, threads=threads, runs=runs, warmup=warmup, input_shape=shape,
        backends=list(results.values()), ort_options=ort_options(threads),
        ov_options=ov_config(threads) if any(b.startswith("ov-") for b in results) else None,
        torch_options={"num_threads": threads, "mode": "eager, torch.inference_mode",
                       "module": "reference (before deploy rewrites)",
                       "interop_threads": torch.get_num_interop_threads()},
        method=f"interleaved: rounds of {SETTLE_S:g} s untimed settling + {BLOCK} timed runs "
               "per backend, seeded input",
        environment=environment(), seconds=round(time.perf_counter() - t0, 2))
    if save:
        write_json(directory / BENCH_FILE, result.as_dict())
    return result
