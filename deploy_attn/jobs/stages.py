"""The export's steps after the FP32 graph: the precision artifacts and the CPU targets."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..checks.drift import drift_note, drifting_site
from ..checks.parity import fp32_tolerance
from ..checks.trt_support import check_trt_support
from ..core.console import Progress
from ..core.numerics import TOLERANCES, Tolerance, compare, seeded_inputs
from ..core.onnx_io import load_onnx
from ..exportdir.config import ExportConfig
from ..exportdir.layout import MODEL_FILE, artifact_name
from ..precision.calib import CalibData, calibration_data, verification_data
from ..precision.common import PrecisionArtifact, name_nodes, tensor_ranges
from ..precision.cpu_int8 import quantize_int8_cpu
from ..precision.fp16 import convert_fp16, fp16_remainder
from ..precision.int8 import quantize_int8
from ..precision.saturation import saturation_note, saturation_report
from ..precision.sensitivity import auto_exclude, cosine_scorer, int8_sensitivity
from ..runtime.backends import run_target
from ..runtime.ort import OrtRunner, graph_numerics, verification_runtime
from ..runtime.pytorch import torch_outputs
from ..sources import ModelCard
from ..targets.cpu import KERNEL, RUNTIMES, TARGET_CPUS, TARGET_FORMS, write_target
from ..targets.measure import measure_forms


def measured_forms(cfg: ExportConfig, fp32: Path, shape: tuple[int, ...],
                    progress: Progress) -> dict:
    """Each CPU target's forms timed on this machine (measure_forms), int8-cpu's graph
    (onnx-cpu's) among them."""
    formats = list(cfg.formats)
    if "int8-cpu" in cfg.precisions and "onnx-cpu" not in formats:
        formats.append("onnx-cpu")
    measured = {fmt: measure_forms(fmt, fp32, shape, progress=progress) for fmt in formats}
    for fmt, m in measured.items():
        times = ", ".join(f"{f} {r:.2f}x" for f, r in m["speedup"].items()) or "no form applies"
        progress(f"{fmt}: forms measured here: {times} -> {', '.join(m['forms']) or 'none'}")
    return measured


def _forms(target_forms: dict, fmt: str) -> tuple[str, ...] | None:
    """The forms measured for ``fmt`` in this run, or None (TARGET_FORMS)."""
    measured = target_forms.get(fmt)
    return tuple(measured["forms"]) if measured else None


def target_stage(cfg: ExportConfig, card: ModelCard, checks: "Checks | None", stage: Path,
                 artifacts: dict[str, str], target_forms: dict, progress: Progress
                 ) -> tuple[dict, list[str]]:
    """The CPU targets asked for (``cfg.formats``) of every artifact (precision -> file),
    each checked against PyTorch on the verification inputs at its precision's tolerance:
    the report's section (``target_cpu``, ``targets``) and the files written. A target
    outside tolerance is recorded with the reason and not written (its ONNX file passed on
    ONNX Runtime: the target's runtime computes it otherwise). ``target_forms``: the forms
    measured in this run per format (--target-forms measure), else TARGET_FORMS."""
    if not cfg.formats:
        return {}, []
    x = checks.verify.inputs if checks else seeded_inputs((4,) + tuple(card.input_shape[1:]))
    ref = checks.ref if checks else torch_outputs(card.module, x)
    tolerances = {p: tolerance_for(card, p, x) for p in artifacts}
    section: dict = {"target_cpu": {"cpu": cfg.target_cpu, "for": TARGET_CPUS[cfg.target_cpu]},
                     "targets": {}}
    written: list[str] = []
    for fmt in cfg.formats:
        for precision, name in artifacts.items():
            progress(f"{fmt}: {precision} ({name})")
            files, forms, graph = write_target(fmt, stage / name, cfg.target_cpu,
                                               _forms(target_forms, fmt))
            tol = tolerances[precision]
            result = compare(run_target(fmt, stage / files[0], x), ref, tol,
                             classifier=card.classifier)
            entry = {"files": files, "tolerance": asdict(tol), "results": [result.as_dict()],
                     "ok": result.ok, "runtime": RUNTIMES[fmt], "forms": forms,
                     "cpu": cfg.target_cpu}
            if "qdq" in graph_numerics(stage / name):
                entry["saturation"] = saturation_report(graph, checks.calib.inputs,
                                                        kernel=KERNEL[fmt])
                progress(f"{fmt}: {precision}: {saturation_note(entry['saturation'])}")
            if result.ok:
                written += files
            else:
                entry.update(files=[], reason=f"vs PyTorch cosine {result.cosine:.6f}, max abs "
                             f"{result.max_abs:.3g}, outside {precision}'s tolerance on "
                             f"{RUNTIMES[fmt]}")
            section["targets"].setdefault(fmt, {})[precision] = entry
    return section, written


def tolerance_for(card: ModelCard, precision: str, x: np.ndarray) -> Tolerance:
    """A precision's parity tolerance (FP32's measured on the model and ``x``)."""
    return fp32_tolerance(card.module, x)[0] if precision == "fp32" else TOLERANCES[precision]


def trt_check_entry(path: Path) -> dict:
    return check_trt_support(path).as_dict()


@dataclass
class Checks:
    """What every precision stage of one export shares (computed once per run)."""
    calib: CalibData  # calibration inputs
    verify: CalibData  # verification inputs, disjoint from them
    ref: np.ndarray  # the reference model's outputs on verify.inputs
    ranges: dict[str, float] | None = None  # the FP32 graph's tensor magnitudes on calib
    qdq: tuple[Path, dict] | None = None  # the FP32-remainder Q/DQ graph and its details

    def tensor_ranges(self, fp32: Path) -> dict[str, float]:
        if self.ranges is None:
            self.ranges = tensor_ranges(name_nodes(load_onnx(fp32)), self.calib.inputs)
        return self.ranges


def make_checks(cfg: ExportConfig, card: ModelCard) -> Checks:
    shape = card.input_shape
    verify = verification_data(card.preprocess, shape, cfg.calib_dir, cfg.calib_count,
                               cfg.verify_count)
    return Checks(calibration_data(card.preprocess, shape, cfg.calib_dir, cfg.calib_count,
                                    card.name), verify,
                   torch_outputs(card.module, verify.inputs))


def _qdq_fp32(cfg: ExportConfig, checks: Checks, stage: Path, dst: Path,
              progress: Progress) -> tuple[Path, dict]:
    """The INT8 Q/DQ graph with an FP32 remainder (``int8-fp32``), placed and calibrated,
    with --exclude / --exclude auto / --sensitivity applied; made once per run (the
    ``int8`` form is derived from it)."""
    if checks.qdq is not None:
        return checks.qdq
    src, calib, x, ref = stage / MODEL_FILE, checks.calib, checks.verify.inputs, checks.ref
    tol, auto, details = TOLERANCES["int8"], tuple(cfg.exclude) == ("auto",), {}
    progress(f"int8: calibrate ({cfg.calib_method}, {calib.source}), quantize Q/DQ")
    artifact = quantize_int8(src, dst, calib, cfg.calib_method, () if auto else cfg.exclude,
                             cache_dir=stage)
    if cfg.sensitivity or auto:
        scorer = cosine_scorer(ref, x)
        base = scorer(dst)
        if cfg.sensitivity or base < tol.min_cosine:
            details["sensitivity"] = _sensitivity(src, dst, scorer, progress, base)
        if auto and base < tol.min_cosine:  # the real artifact, re-quantized in place
            chosen, again = _exclude_auto(cfg, checks, stage, dst, dst,
                                          details["sensitivity"], scorer, base, dst, progress)
            artifact = artifact if again is None else again
            progress(f"int8 --exclude auto: {len(chosen)} node(s) left FP32")
    details.update(artifact.details)
    if details.get("note"):
        progress(f"int8: note: {details['note']}")
    checks.qdq = (dst, details)
    return checks.qdq


def _auto_fp16_remainder(cfg: ExportConfig, checks: Checks, stage: Path, qdq: Path,
                         staged: Path, qdq_details: dict, progress: Progress) -> dict:
    """--exclude auto for the INT8 + FP16 form: when it misses the INT8 threshold (the
    FP16 remainder adds its rounding to INT8's), more of the most sensitive nodes stay
    unquantized, each candidate set confirmed on the derived FP16-remainder artifact
    itself; the details of the final quantization (empty when nothing changed)."""
    scorer = cosine_scorer(checks.ref, checks.verify.inputs)
    base = scorer(staged)
    if base >= TOLERANCES["int8"].min_cosine:
        return {}
    src, done = stage / MODEL_FILE, set(qdq_details.get("excluded_nodes", []))
    rows = qdq_details.get("sensitivity")
    if rows is None:
        rows = _sensitivity(src, qdq, scorer, progress)

    def derive(requantized: Path) -> None:  # the FP16 remainder, derived again
        fp16_remainder(requantized, staged, checks.calib, checks.tensor_ranges(src),
                       cfg.fp16_threshold)

    chosen, artifact = _exclude_auto(cfg, checks, stage, qdq, stage / "qdq-fp32-auto.onnx",
                                     rows, scorer, base, staged, progress, done, derive)
    progress(f"int8 --exclude auto: {len(done) + len(chosen)} node(s) left FP32 for the FP16 "
             "remainder")
    return artifact.details if artifact is not None else {}


def _sensitivity(src: Path, qdq: Path, scorer: Callable[[Path], float], progress: Progress,
                 base: float | None = None) -> list[dict]:
    progress("int8: per-layer sensitivity (each quantized node alone left FP32)")
    return int8_sensitivity(src, qdq, scorer, progress, base=base)


def _exclude_auto(cfg: ExportConfig, checks: Checks, stage: Path, qdq: Path, dst: Path,
                  rows: list[dict], scorer: Callable[[Path], float], base: float, scored: Path,
                  progress: Progress, excluded: set[str] = frozenset(),
                  derive: Callable[[Path], None] | None = None
                  ) -> tuple[list[str], PrecisionArtifact | None]:
    """--exclude auto: the most sensitive of ``rows`` (beyond ``excluded``) left FP32 until
    INT8's threshold is met: candidates scored on ``qdq`` with them bypassed, then each set
    re-quantized into ``dst``, turned into ``scored`` by ``derive`` (when given) and scored
    there; the nodes chosen and the last quantization (None when none was tried)."""
    src, artifact = stage / MODEL_FILE, None

    def confirm(nodes: list[str]) -> float:
        nonlocal artifact
        artifact = quantize_int8(src, dst, checks.calib, cfg.calib_method,
                                 sorted(excluded) + nodes, cache_dir=stage)
        if derive is not None:
            derive(dst)
        return scorer(scored)

    rows = [r for r in rows if r["node"] not in excluded]
    chosen = auto_exclude(src, qdq, rows, scorer, TOLERANCES["int8"].min_cosine, base,
                          confirm=confirm)
    return chosen, artifact


@dataclass
class PrecisionStep:
    """One precision stage's report: its ``precisions`` entry, its TensorRT operator check
    (None for the CPU-only int8-cpu, or when it failed), and the failure, if any."""
    entry: dict
    trt_check: dict | None = None
    failure: str | None = None


def precision_stage(cfg: ExportConfig, card: ModelCard, checks: Checks, precision: str,
                    stage: Path, attention_maps: list[dict] | None, target_forms: dict,
                    progress: Progress) -> PrecisionStep:
    """Stage model.<precision>.onnx and check it against its threshold (verified with the
    runtime configuration OrtRunner(verify=True) trusts); ``attention_maps`` (the export's
    map index) lets a failure name the first site that drifts; ``target_forms`` (measured
    in this run) gives int8-cpu the onnx-cpu target's graph forms."""
    src, staged = stage / MODEL_FILE, stage / artifact_name(precision)
    tol = TOLERANCES[precision]
    calib, verify, ref = checks.calib, checks.verify, checks.ref
    x = verify.inputs
    details: dict = {}
    if precision == "fp16":
        progress(f"fp16: measure activation ranges on {len(calib.inputs)} inputs, convert")
        details = convert_fp16(src, staged, calib, cfg.fp16_threshold,
                               checks.tensor_ranges(src)).details
    elif precision == "int8-cpu":
        progress(f"int8-cpu: calibrate ({cfg.calib_method}), U8 activations for ORT CPU, "
                 "in the CPU target's graph forms")
        forms = _forms(target_forms, "onnx-cpu")
        details = quantize_int8_cpu(src, staged, calib, cfg.calib_method, cache_dir=stage,
                                    portable=cfg.target_cpu == "portable",
                                    forms=TARGET_FORMS["onnx-cpu"] if forms is None
                                    else forms).details
    elif precision == "int8-fp32":
        details = dict(_qdq_fp32(cfg, checks, stage, staged, progress)[1])
    else:  # int8: INT8 with an FP16 remainder, from the FP32-remainder graph
        qdq, qdq_details = _qdq_fp32(cfg, checks, stage, stage / "qdq-fp32.onnx", progress)
        progress("int8: FP16 remainder (the FP16 stage's measured FP32 islands)")
        remainder = fp16_remainder(qdq, staged, calib, checks.tensor_ranges(src),
                                   cfg.fp16_threshold)
        details = {**qdq_details, **remainder.details}
        if tuple(cfg.exclude) == ("auto",):
            details.update(_auto_fp16_remainder(cfg, checks, stage, qdq, staged, qdq_details,
                                                progress))
    if precision.startswith("int8"):
        # int8-cpu is ONNX Runtime's file; the TensorRT files as OpenVINO would run them
        kernel = KERNEL["onnx-cpu" if precision == "int8-cpu" else "openvino"]
        details["saturation"] = saturation_report(staged, calib.inputs, kernel=kernel)
        progress(f"{precision}: {saturation_note(details['saturation'])}")
    runtime = verification_runtime(staged)
    progress(f"{precision}: parity vs PyTorch FP32 on {len(x)} inputs ({verify.source})")
    result = compare(OrtRunner(staged, verify=True).run(x), ref, tol,
                     classifier=card.classifier)
    overflows = details.get("overflows", [])
    entry = {"file": staged.name, "tolerance": asdict(tol), "results": [result.as_dict()],
             "ok": result.ok and not overflows, "verification": verify.as_dict(),
             "runtime": runtime, **details}
    if overflows:
        return PrecisionStep(entry, failure=(
            f"{card.name}: {precision.upper()} graph casts {len(overflows)} tensor(s) beyond "
            f"the FP16 range to FP16: {', '.join(overflows[:3])}; lower --fp16-threshold "
            f"(now {cfg.fp16_threshold:g})"))
    if not result.ok:
        hint = ""
        if precision in ("int8", "int8-fp32") and tuple(cfg.exclude) == ("auto",):
            hint = (f"; --exclude auto left {len(details['excluded_nodes'])} nodes FP32 (it "
                    "stops at a quarter of the quantized nodes)")
        if precision.startswith("int8") and card.generated and card.kind == "backbone":
            hint += ("; these are generated weights, on which INT8 is judged harshly (README, "
                     "'INT8 on generated weights'): give the trained ones with --weights")
        if attention_maps and cfg.strict:  # a diagnosis maps every site anyway
            progress(f"{precision}: locate the first attention map that drifts")
            hint += drift_note(drifting_site(staged, attention_maps, card.module, x,
                                             precision), precision)
        return PrecisionStep(entry, failure=(
            f"{card.name}: {precision.upper()} output vs PyTorch FP32: cosine "
            f"{result.cosine:.6f} (need >= {tol.min_cosine}), max abs {result.max_abs:.3g}, "
            f"finite {result.finite}{hint}"))
    # U8 activations: int8-cpu is an ONNX Runtime CPU artifact by design, not TensorRT's
    return PrecisionStep(entry, None if precision == "int8-cpu" else trt_check_entry(staged))
