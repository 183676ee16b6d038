"""Command: exported artifacts -> latency per backend (PyTorch eager, ONNX Runtime CPU at each
precision, TensorRT where it can run), measured interleaved on one input batch.

Backends are timed round-robin (one run of each per round), so drift on a shared machine
(another job, clock changes) hits all of them alike; medians and p90 are reported, and
absolute times are kept beside the ratios. A backend that cannot run here (TensorRT
without a GPU, an artifact whose precision failed its parity check) is listed as skipped
with the reason, never given a number.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..core.console import Progress, format_table, progress_bar, silent, to_stderr
from ..core.errors import ArtifactError, ConfigError, DeployAttnError, ParityError
from ..core.files import read_json, write_json
from ..core.numerics import seeded_inputs
from ..engine.config import engine_path_for
from ..engine.sidecar import check_sidecar, current_environment
from ..exportdir.config import ExportConfig, config_from_report
from ..exportdir.layout import BENCH_FILE, FAILED_REPORT, REPORT_FILE, artifact_name
from ..exportdir.reader import open_export, read_report, upgrade_report
from ..jobs.build import build_job
from ..jobs.export import export_adding
from ..precision.common import PRECISIONS
from ..registry import get_spec
from ..runtime.backends import BACKENDS, DEFAULT_BACKENDS, TARGET_BACKENDS, check_backends, \
    environment, target_runner
from ..runtime.openvino import openvino_missing, ov_config
from ..runtime.ort import OrtRunner, ort_options
from ..runtime.pytorch import TorchRunner, torch_threads
from ..runtime.tensorrt import TensorRTRunner, TensorRTUnavailable, require_tensorrt
from ..runtime.timing import BLOCK, SETTLE_S, Latency, interleaved_times
from ..sources import load_source
from .latency import latency_table, settings_line


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


# --- the stage ------------------------------------------------------------------------
def _message(progress: bool | Progress) -> Progress:
    if callable(progress):
        return progress
    return to_stderr if progress else silent


def _failed(report: dict | None, path: Path) -> dict[str, str]:
    """Per precision whose artifact failed its check in the export, why (FP32 failing
    means no artifact at all)."""
    if not report:
        return {}
    entries = upgrade_report(report, path).get("precisions") or {}
    if not entries.get("fp32", {}).get("ok", True):
        return {p: f"the FP32 export failed its parity check; see {path}" for p in PRECISIONS}
    reasons = {}
    for p, entry in entries.items():
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
    if read_report(directory).get("status") not in ("trt-rejected", "target-rejected"):
        raise


def ensure_targets(directory: Path, report: dict, wanted: dict[str, set[str]],
                   say: Progress) -> dict:
    """The export's report once every CPU target format in ``wanted`` (format -> the
    precisions wanted in it) has an entry for each of those precisions the export has:
    missing ones are added by exporting again with the format."""
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
            if not results[b].reason:
                call = _timed(b, results[b], exp, report, x, threads, batch, say, stack)
                if call is not None:
                    runners[b] = call
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


def _timed(b: str, r: BackendResult, exp, report: dict, x, threads: int, batch: int,
           say: Progress, stack: contextlib.ExitStack) -> Callable[[], Any] | None:
    """Backend ``b``'s timed call on ``x`` from its runner (a TensorRT runner is entered on
    ``stack``); None, with ``r.reason`` set, where it cannot be timed."""
    directory = exp.directory
    if b == "torch":
        say(f"torch: eager reference module, {threads} thread(s), inference_mode")
        return TorchRunner(exp.card().module).timed(x)
    r.artifact = artifact_name(r.precision)
    if b.startswith("ort-"):
        say(f"{b}: ONNX Runtime session for {r.artifact}")
        return OrtRunner(directory / r.artifact, threads).timed(x)
    if b in TARGET_BACKENDS:
        fmt = TARGET_BACKENDS[b]
        entry = report.get("targets", {}).get(fmt, {}).get(r.precision)
        if not entry or not entry["ok"]:  # a latency only for a file known right
            r.reason = (entry or {}).get("reason", f"no {fmt} form")
            return None
        r.artifact = entry["files"][0]
        say(f"{b}: {entry['runtime']}: {r.artifact}")
        return target_runner(fmt, directory / r.artifact, threads, x.shape).timed(x)
    try:
        engine = _engine(directory, r.precision, batch, say)
        r.artifact = engine.name
        return stack.enter_context(TensorRTRunner(engine)).timed(x)
    except DeployAttnError as exc:  # e.g. an engine built for another GPU
        r.reason = str(exc)
        return None


def _engine(directory: Path, precision: str, batch: int, say: Progress) -> Path:
    """The TensorRT engine of an export, built and parity-checked first (the build job)
    when missing; refused when it has no passing parity check in the report or its
    sidecar says it belongs to another TensorRT or GPU (a latency is only given for an
    engine known to compute the right thing)."""
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
