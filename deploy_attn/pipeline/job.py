"""The export job: a model card (the reference module and its description) -> deploy
rewrites -> ONNX -> graph passes -> onnxsim -> parity -> precision stages -> one export
directory (``model.onnx``, ``model.<precision>.onnx``, ``report.json``).

A run stages every file in a folder inside the export directory and publishes the
complete set only when the whole run has passed, so an export directory always holds one
consistent result, and its report says how to rebuild the reference it was checked
against (``open_export``)."""
from __future__ import annotations

import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch.nn as nn

from ..errors import ArtifactError, ConfigError, DeployAttnError, ParityError
from ..rewrite import patch_for_deploy, summarize
from ..sources import REFERENCE_STATE, ModelCard, SourceOptions, load_source, rebuild, \
    save_reference_state
from .artifacts import STAGING_PREFIX, directory_lock, library_versions, publish, \
    staging_dir, write_json
from .calib import CalibData, calibration_data, verification_data
from .export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx
from .onnx_io import load_onnx, op_counts, shape_ops
from .parity import DEGENERATE, FP32, Tolerance, check_onnx, compare, fp32_tolerance, \
    input_dependence, seeded_inputs, torch_outputs
from .precision import AUTOCAST_MAX, PRECISIONS
from .progress import Progress, silent
from .simplify import simplify_onnx

DEFAULT_ROOT = Path("export")
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"
FAILED_REPORT = "export-failed.json"  # a failed run's report; the export itself is untouched
# files an export owns: a new export replaces them all (engines and benchmarks belong to
# the model they were made from)
OWNED = re.compile(r"^(model(\.[\w-]+){0,2}\.(onnx|engine|engine\.json|xml|bin|ort|"
                   r"required_operators\.config)|report\.json|bench\.json|"
                   r"accuracy\.json|maps\.json|maps|"
                   rf"{re.escape(FAILED_REPORT)}|{re.escape(REFERENCE_STATE)})$")


def artifact_name(precision: str) -> str:
    return MODEL_FILE if precision == "fp32" else f"model.{precision}.onnx"


@dataclass(frozen=True)
class ExportConfig:
    """How to export a model (the model itself comes as a ModelCard)."""

    out_dir: Path | None = None  # default: export/<card name>
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    approximate: bool = False
    precisions: tuple[str, ...] = ()  # beyond fp32, which is always exported first
    calib_dir: Path | None = None
    calib_count: int = 32
    calib_method: str = "minmax"
    exclude: tuple[str, ...] = ()  # INT8 nodes kept FP32; ("auto",) chooses by sensitivity
    sensitivity: bool = False
    fp16_threshold: float = AUTOCAST_MAX
    verify_count: int = 8
    formats: tuple[str, ...] = ()  # CPU targets beside the ONNX files: openvino, ort
    target_cpu: str = "portable"  # the CPU the CPU targets and int8-cpu are for (TARGET_CPUS)
    target_forms: str = "fixed"  # the CPU targets' graph forms: TARGET_FORMS, or measured here
    # False only for a diagnosis in a scratch folder (``deploy-attn maps`` on a model not
    # exported yet): a precision that misses its threshold is kept and recorded, not raised
    strict: bool = True

    def __post_init__(self) -> None:
        from .export import check_opset
        from .precision import CALIB_METHODS

        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ConfigError(f"unknown precision {', '.join(bad)}; choose from "
                              f"{', '.join(PRECISIONS)}")
        check_opset(self.opset)
        for what, value in (("calib_count", self.calib_count),
                            ("verify_count", self.verify_count)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{what} {value!r} must be a positive integer")
        if not self.fp16_threshold > 0:
            raise ConfigError(f"fp16 threshold {self.fp16_threshold}: must be positive (a "
                              "node stays FP32 above it)")
        if self.calib_method not in CALIB_METHODS:
            raise ConfigError(f"calibration method '{self.calib_method}': choose from "
                              f"{', '.join(CALIB_METHODS)}")
        stages = [p for p in self.precisions if p != "fp32"]
        for flag, given in (("--exclude", self.exclude), ("--sensitivity", self.sensitivity)):
            if given and not {"int8", "int8-fp32"} & set(stages):
                raise ConfigError(f"{flag} does nothing without --precision int8")
        if self.calib_dir is not None and not stages:
            raise ConfigError("--calib-dir does nothing without --precision fp16 or int8")
        from .targets import FORMATS, TARGET_CPUS, TARGET_FORM_CHOICES

        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ConfigError(f"unknown format {', '.join(bad)}; choose from {', '.join(FORMATS)}")
        if self.target_cpu not in TARGET_CPUS:
            raise ConfigError(f"target CPU '{self.target_cpu}': choose from "
                              f"{', '.join(TARGET_CPUS)}")
        if self.target_forms not in TARGET_FORM_CHOICES:
            raise ConfigError(f"target forms '{self.target_forms}': choose from "
                              f"{', '.join(TARGET_FORM_CHOICES)}")
        if self.target_forms != "fixed" and not self.formats and "int8-cpu" not in stages:
            raise ConfigError("--target-forms does nothing without --format or "
                              "--precision int8-cpu")

    def directory(self, card: ModelCard) -> Path:
        return Path(self.out_dir) if self.out_dir else DEFAULT_ROOT / card.name


@dataclass
class ExportResult:
    directory: Path
    report: dict = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def report_path(self) -> Path:
        return self.directory / REPORT_FILE


def export_job(card: ModelCard, cfg: ExportConfig, progress: Progress = silent) -> ExportResult:
    """Run the export job on ``card``. Every file is staged and published together once
    the whole run has passed; a failure raises the stage's error (ParityError for a
    check) naming the failure report, and leaves the directory's earlier export as it
    was. An interruption leaves nothing behind but what was there."""
    if "openvino" in cfg.formats:  # before any work, not after it
        from .targets import require_openvino

        require_openvino()
    out = _prepare(cfg.directory(card))
    from .isa import cpu_isa

    report: dict = {"name": card.name, "kind": card.kind, "paper": card.paper,
                    "model": card.record(), "config": _config_dict(cfg), "cpu": cpu_isa()}
    with directory_lock(out), staging_dir(out) as stage:
        try:
            _run(card, cfg, out, stage, report, progress)
        except DeployAttnError as exc:
            report.update(status="failed", error=str(exc))
            try:
                write_json(out / FAILED_REPORT, report)
                where = f"the run's report is {out / FAILED_REPORT}"
            except OSError as why:  # e.g. the disk is full: the error itself matters more
                where = f"its report could not be written ({why.strerror or why})"
            raise type(exc)(f"{exc}; {_unchanged(out)}, {where}") from None
    rejected = _rejections(report)
    if rejected:  # the ONNX files are right for ONNX Runtime, so they stay; the exit says why
        more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        raise ArtifactError(f"{card.name}: {rejected[0]}{more}; the ONNX files are written "
                            f"(parity passed on ONNX Runtime), see {out / REPORT_FILE}")
    return ExportResult(out, report)


def _rejections(report: dict) -> list[str]:
    """What a finished export could not deliver: ONNX files TensorRT would not build, and
    CPU targets that missed parity (those are not written)."""
    return ([f"{report['files'][p]}: {c['summary']}; TensorRT would not build it"
             for p, c in report.get("trt_check", {}).items() if not c["ok"]] +
            [f"the {fmt} form of {report['files'][p]}: {t['reason']}; not written"
             for fmt, forms in report.get("targets", {}).items()
             for p, t in forms.items() if not t["ok"]])


def _prepare(out: Path) -> Path:
    """The export directory, created; one-line errors for a path that cannot be one."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory; choose another -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=STAGING_PREFIX + "probe-")
        probe.close()
    except OSError as exc:
        raise ArtifactError(f"{out}: cannot write there: {exc.strerror or exc}") from None
    return out


def _run(card: ModelCard, cfg: ExportConfig, out: Path, stage: Path, report: dict,
         progress: Progress) -> None:
    """Every stage of the job, each file into ``stage``, ``report`` filled as it goes;
    published into ``out`` at the end."""
    from ..graph_rewrite import rewrite_onnx

    shape = card.input_shape
    t0 = time.perf_counter()
    progress(f"build {card.label()} {list(shape)}")
    stages = sorted({p for p in cfg.precisions if p != "fp32"}, key=PRECISIONS.index)
    checks = _checks(cfg, card) if stages else None  # bad calibration input fails here
    deploy, applied = patch_for_deploy(card.module, approximate=cfg.approximate)
    x = seeded_inputs(shape)
    rewrite_error = compare(torch_outputs(deploy, x), torch_outputs(card.module, x), FP32)
    save_reference_state(card, stage)
    dependence = input_dependence(torch_outputs(card.module, seeded_inputs((4,) + shape[1:])))
    if dependence < DEGENERATE:
        progress(f"note: the reference's output hardly depends on its input (spread "
                 f"{dependence:.1e} of its size over 4 inputs), so every parity check below "
                 "passes easily; give trained weights (--weights) for figures that mean "
                 "something")
    report.update({
        "model": card.record(),
        "input_shape": list(shape), "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "opset": cfg.opset,
        "dynamic_axes": {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}}
        if cfg.dynamic_batch else {},
        "reference": {"input_dependence": dependence, "degenerate": dependence < DEGENERATE},
        "rewrites": {"applied": summarize(applied), "approximate_enabled": cfg.approximate,
                     "deploy_vs_reference_torch": rewrite_error.as_dict()},
    })
    raw, passed = stage / "raw.onnx", stage / "passes.onnx"
    progress(f"export opset {cfg.opset}{' dynamic batch' if cfg.dynamic_batch else ''}")
    export_onnx(deploy, shape, raw, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch)
    progress("graph passes (hard activations, static shapes)")
    report["rewrites"]["graph"] = [p.as_dict() for p in rewrite_onnx(raw, passed)]
    final = stage / MODEL_FILE
    if cfg.simplify:
        progress("simplify (onnxsim)")
        simplify_onnx(passed, final)
    else:
        passed.replace(final)
        passed = final
    exported, after = load_onnx(raw, check=False), load_onnx(final, check=False)
    report["nodes"] = {"before_simplify": op_counts(exported), "after_simplify": op_counts(after),
                       "total_before": len(exported.graph.node),
                       "total_after_passes": len(load_onnx(passed, check=False).graph.node),
                       "total_after": len(after.graph.node)}
    from ..maps import declared_maps
    from .maps import map_index

    report["attention_maps"] = map_index(exported, declared_maps(deploy), after)
    raw.unlink()
    report["shape_ops"] = shape_ops(after)

    batches = [1, 4] if cfg.dynamic_batch else [1]
    progress(f"parity vs PyTorch (ONNX Runtime CPU, batch {', '.join(map(str, batches))})")
    results, tol, rounding = check_onnx(final, card.module,
                                        [(b,) + tuple(shape[1:]) for b in batches],
                                        classifier=card.classifier)
    ok = all(r.ok for r in results)
    report["parity"] = {"fp32": {"tolerance": asdict(tol), "reference_fp32_rounding": rounding,
                                 "results": [r.as_dict() for r in results], "ok": ok}}
    report["versions"] = library_versions()
    report["files"] = {"fp32": MODEL_FILE} if ok else {}
    if not ok:
        raise ParityError(f"{card.name}: ONNX Runtime FP32 output differs from PyTorch beyond "
                          f"atol {tol.atol:.3g} / rtol {tol.rtol:g} (max abs "
                          f"{max(r.max_abs for r in results):.3g}, max rel "
                          f"{max(r.max_rel for r in results):.3g})")
    report["trt_check"] = {"fp32": _trt_check(final)}
    if cfg.target_forms == "measure":
        report["target_forms"] = _measured_forms(cfg, final, shape, progress)
    missed = []
    for precision in stages:
        failure = _precision_stage(cfg, card, checks, precision, stage, report, progress)
        if failure and cfg.strict:
            raise ParityError(failure)
        if failure:  # a diagnosis: the artifact is kept and says what it missed
            report["precisions"][precision]["failure"] = failure
            report["files"][precision] = artifact_name(precision)
            missed.append(precision)
    target_files = _targets(cfg, card, checks, stage, report, progress)
    trt_rejected = any(not c["ok"] for c in report["trt_check"].values())
    report["status"] = ("parity-failed" if missed else "trt-rejected" if trt_rejected else
                        "target-rejected" if _rejections(report) else "ok")
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(stage / REPORT_FILE, report)
    files = list(report["files"].values()) + target_files
    if card.source["kind"] == "object":
        files.append(REFERENCE_STATE)
    publish(stage, out, files, REPORT_FILE, lambda name: bool(OWNED.match(name)))


def _measured_forms(cfg: ExportConfig, fp32: Path, shape: tuple[int, ...],
                    progress: Progress) -> dict:
    """Each CPU target's forms timed on this machine (measure_forms), int8-cpu's graph
    (onnx-cpu's) among them."""
    from .measure_forms import measure_forms

    formats = list(cfg.formats)
    if "int8-cpu" in cfg.precisions and "onnx-cpu" not in formats:
        formats.append("onnx-cpu")
    measured = {fmt: measure_forms(fmt, fp32, shape, progress=progress) for fmt in formats}
    for fmt, m in measured.items():
        times = ", ".join(f"{f} {r:.2f}x" for f, r in m["speedup"].items()) or "no form applies"
        progress(f"{fmt}: forms measured here: {times} -> {', '.join(m['forms']) or 'none'}")
    return measured


def _forms(report: dict, fmt: str) -> tuple[str, ...] | None:
    """The forms measured for ``fmt`` in this run, or None (TARGET_FORMS)."""
    measured = report.get("target_forms", {}).get(fmt)
    return tuple(measured["forms"]) if measured else None


def _targets(cfg: ExportConfig, card: ModelCard, checks: "_Checks | None", stage: Path,
             report: dict, progress: Progress) -> list[str]:
    """The CPU targets asked for (``cfg.formats``) of every artifact, each checked against
    PyTorch on the verification inputs at its precision's tolerance; the files written. A
    target outside tolerance is recorded with the reason and not written (its ONNX file
    passed on ONNX Runtime: the target's runtime computes it otherwise)."""
    from .parity import graph_numerics
    from .saturation import saturation_note, saturation_report
    from .targets import RUNTIMES, TARGET_CPUS, run_target, write_target

    if not cfg.formats:
        return []
    x = checks.verify.inputs if checks else seeded_inputs((4,) + tuple(card.input_shape[1:]))
    ref = checks.ref if checks else torch_outputs(card.module, x)
    tolerances = {p: _tolerance(card, p, x) for p in report["files"]}
    report["target_cpu"] = {"cpu": cfg.target_cpu, "for": TARGET_CPUS[cfg.target_cpu]}
    written: list[str] = []
    for fmt in cfg.formats:
        for precision, name in report["files"].items():
            progress(f"{fmt}: {precision} ({name})")
            files, forms, graph = write_target(fmt, stage / name, cfg.target_cpu,
                                               _forms(report, fmt))
            tol = tolerances[precision]
            result = compare(run_target(fmt, stage / files[0], x), ref, tol,
                             classifier=card.classifier)
            entry = {"files": files, "tolerance": asdict(tol), "results": [result.as_dict()],
                     "ok": result.ok, "runtime": RUNTIMES[fmt], "forms": forms,
                     "cpu": cfg.target_cpu}
            if "qdq" in graph_numerics(stage / name):
                entry["saturation"] = saturation_report(graph, checks.calib.inputs)
                progress(f"{fmt}: {precision}: {saturation_note(entry['saturation'])}")
            if result.ok:
                written += files
            else:
                entry.update(files=[], reason=f"vs PyTorch cosine {result.cosine:.6f}, max abs "
                             f"{result.max_abs:.3g}, outside {precision}'s tolerance on "
                             f"{RUNTIMES[fmt]}")
            report.setdefault("targets", {}).setdefault(fmt, {})[precision] = entry
    return written


def _tolerance(card: ModelCard, precision: str, x: np.ndarray) -> Tolerance:
    """A precision's parity tolerance (FP32's measured on the model and ``x``)."""
    from .parity import TOLERANCES

    return fp32_tolerance(card.module, x)[0] if precision == "fp32" else TOLERANCES[precision]


def _unchanged(out: Path) -> str:
    return (f"{out} keeps its earlier export unchanged" if (out / REPORT_FILE).is_file()
            else f"no artifact was written to {out}")


def _trt_check(path: Path) -> dict:
    from .trt_check import check_trt_support

    return check_trt_support(path).as_dict()


@dataclass
class _Checks:
    """What every precision stage of one export shares (computed once per run)."""
    calib: CalibData  # calibration inputs
    verify: CalibData  # verification inputs, disjoint from them
    ref: np.ndarray  # the reference model's outputs on verify.inputs
    ranges: dict[str, float] | None = None  # the FP32 graph's tensor magnitudes on calib
    qdq: tuple[Path, dict] | None = None  # the FP32-remainder Q/DQ graph and its details

    def tensor_ranges(self, fp32: Path) -> dict[str, float]:
        from .precision import _name_nodes, tensor_ranges

        if self.ranges is None:
            self.ranges = tensor_ranges(_name_nodes(load_onnx(fp32)), self.calib.inputs)
        return self.ranges


def _checks(cfg: ExportConfig, card: ModelCard) -> _Checks:
    shape = card.input_shape
    verify = verification_data(card.preprocess, shape, cfg.calib_dir, cfg.calib_count,
                               cfg.verify_count)
    return _Checks(calibration_data(card.preprocess, shape, cfg.calib_dir, cfg.calib_count,
                                    card.name), verify,
                   torch_outputs(card.module, verify.inputs))


def _qdq_fp32(cfg: ExportConfig, checks: _Checks, stage: Path, dst: Path,
              progress: Progress) -> tuple[Path, dict]:
    """The INT8 Q/DQ graph with an FP32 remainder (``int8-fp32``), placed and calibrated,
    with --exclude / --exclude auto / --sensitivity applied; made once per run (the
    ``int8`` form is derived from it)."""
    from .parity import TOLERANCES
    from .precision import auto_exclude, cosine_scorer, int8_sensitivity, quantize_int8

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
            progress("int8: per-layer sensitivity (each quantized node alone left FP32)")
            rows = int8_sensitivity(src, dst, scorer, progress, base=base)
            details["sensitivity"] = rows
        if auto and base < tol.min_cosine:
            def confirm(nodes: list[str]) -> float:  # the real artifact, re-quantized
                nonlocal artifact
                artifact = quantize_int8(src, dst, calib, cfg.calib_method, nodes,
                                         cache_dir=stage)
                return scorer(dst)

            chosen = auto_exclude(src, dst, rows, scorer, tol.min_cosine, base, confirm=confirm)
            progress(f"int8 --exclude auto: {len(chosen)} node(s) left FP32")
    details.update(artifact.details)
    if details.get("note"):
        progress(f"int8: note: {details['note']}")
    checks.qdq = (dst, details)
    return checks.qdq


def _auto_fp16_remainder(cfg: ExportConfig, checks: _Checks, stage: Path, qdq: Path,
                         staged: Path, qdq_details: dict, progress: Progress) -> dict:
    """--exclude auto for the INT8 + FP16 form: when it misses the INT8 threshold (the
    FP16 remainder adds its rounding to INT8's), more of the most sensitive nodes stay
    unquantized, each candidate set confirmed on the derived FP16-remainder artifact
    itself; the details of the final quantization (empty when nothing changed)."""
    from .parity import TOLERANCES
    from .precision import (auto_exclude, cosine_scorer, fp16_remainder, int8_sensitivity,
                            quantize_int8)

    src, target = stage / MODEL_FILE, TOLERANCES["int8"].min_cosine
    scorer = cosine_scorer(checks.ref, checks.verify.inputs)
    base = scorer(staged)
    if base >= target:
        return {}
    rows = qdq_details.get("sensitivity")
    if rows is None:
        progress("int8: per-layer sensitivity (each quantized node alone left FP32)")
        rows = int8_sensitivity(src, qdq, scorer, progress)
    done = set(qdq_details.get("excluded_nodes", []))
    rows = [r for r in rows if r["node"] not in done]
    retry, artifact = stage / "qdq-fp32-auto.onnx", None

    def confirm(nodes: list[str]) -> float:  # re-quantized, FP16 remainder derived again
        nonlocal artifact
        artifact = quantize_int8(src, retry, checks.calib, cfg.calib_method,
                                 sorted(done) + nodes, cache_dir=stage)
        fp16_remainder(retry, staged, checks.calib, checks.tensor_ranges(src),
                       cfg.fp16_threshold)
        return scorer(staged)

    chosen = auto_exclude(src, qdq, rows, scorer, target, base, confirm=confirm)
    progress(f"int8 --exclude auto: {len(done) + len(chosen)} node(s) left FP32 for the FP16 "
             "remainder")
    return artifact.details if artifact is not None else {}


def _precision_stage(cfg: ExportConfig, card: ModelCard, checks: _Checks, precision: str,
                     stage: Path, report: dict, progress: Progress) -> str | None:
    """Stage model.<precision>.onnx if it meets its threshold (verified with the runtime
    configuration parity.ort_session(verify=True) trusts); return a failure message
    otherwise."""
    from .parity import TOLERANCES, ort_outputs, ort_session, verification_runtime
    from .precision import convert_fp16, fp16_remainder

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
        from .cpu_int8 import quantize_int8_cpu
        from .targets import TARGET_FORMS

        progress(f"int8-cpu: calibrate ({cfg.calib_method}), U8 activations for ORT CPU, "
                 "in the CPU target's graph forms")
        forms = _forms(report, "onnx-cpu")
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
        from .saturation import saturation_note, saturation_report

        details["saturation"] = saturation_report(staged, calib.inputs)
        progress(f"{precision}: {saturation_note(details['saturation'])}")
    runtime = verification_runtime(staged)
    progress(f"{precision}: parity vs PyTorch FP32 on {len(x)} inputs ({verify.source})")
    result = compare(ort_outputs(ort_session(staged, verify=True), x), ref, tol,
                     classifier=card.classifier)
    overflows = details.get("overflows", [])
    entry = {"file": staged.name, "tolerance": asdict(tol), "results": [result.as_dict()],
             "ok": result.ok and not overflows, "verification": verify.as_dict(),
             "runtime": runtime, **details}
    report.setdefault("precisions", {})[precision] = entry
    if overflows:
        return (f"{card.name}: {precision.upper()} graph casts {len(overflows)} tensor(s) "
                f"beyond the FP16 range to FP16: {', '.join(overflows[:3])}; lower "
                f"--fp16-threshold (now {cfg.fp16_threshold:g})")
    if not result.ok:
        hint = ""
        if precision in ("int8", "int8-fp32") and tuple(cfg.exclude) == ("auto",):
            hint = (f"; --exclude auto left {len(details['excluded_nodes'])} nodes FP32 (it "
                    "stops at a quarter of the quantized nodes)")
        if precision.startswith("int8") and card.generated and card.kind == "backbone":
            hint += ("; these are generated weights, on which INT8 is judged harshly (README, "
                     "'INT8 on generated weights'): give the trained ones with --weights")
        if report.get("attention_maps") and cfg.strict:  # a diagnosis maps every site anyway
            from .maps import drift_note, drifting_site

            progress(f"{precision}: locate the first attention map that drifts")
            hint += drift_note(drifting_site(staged, report["attention_maps"], card.module, x,
                                             precision), precision)
        return (f"{card.name}: {precision.upper()} output vs PyTorch FP32: cosine "
                f"{result.cosine:.6f} (need >= {tol.min_cosine}), max abs {result.max_abs:.3g}, "
                f"finite {result.finite}{hint}")
    report["files"][precision] = staged.name
    if precision != "int8-cpu":  # U8 activations: an ONNX Runtime CPU artifact by design
        report.setdefault("trt_check", {})[precision] = _trt_check(staged)
    return None


# --- the Python API ---------------------------------------------------------------------------
_CONFIG_FIELDS = {f.name for f in fields(ExportConfig)}
_SOURCE_FIELDS = {f.name for f in fields(SourceOptions)}


def export(model: nn.Module | str, *, input_shape: Sequence[int] | None = None,
           progress: Progress = silent, **options: Any) -> ExportResult:
    """Export ``model`` (an ``nn.Module``, a registry name, ``FILE.py:CALLABLE``,
    ``package.module:CALLABLE``, ``timm:NAME`` or ``torchvision:NAME``) through the same
    job as ``deploy-attn export``: the same artifacts and report.

    ``input_shape`` is ``(1, C, H, W)``; ``options`` are ExportConfig fields (``out_dir``,
    ``precisions``, ``calib_dir``, ``dynamic_batch``, ...) and SourceOptions fields
    (``model_args``, ``weights``, ``task``, ``mean``, ``std``, ``seed``, ...). The caller's
    module is never changed."""
    unknown = sorted(set(options) - _CONFIG_FIELDS - _SOURCE_FIELDS)
    if unknown:
        raise ConfigError(f"export() got unknown option(s) {', '.join(unknown)}")
    source = {k: v for k, v in options.items() if k in _SOURCE_FIELDS}
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 4 or shape[0] != 1:
            raise ConfigError(f"input_shape {shape}: give (1, C, H, W); a dynamic batch is "
                              "dynamic_batch=True")
        source.update(channels=shape[1], input_size=shape[2:])
    config = {k: v for k, v in options.items() if k in _CONFIG_FIELDS}
    for key in ("precisions", "exclude", "formats"):
        if isinstance(config.get(key), str):
            config[key] = (config[key],)
    for key in ("out_dir", "calib_dir"):
        if config.get(key) is not None:
            config[key] = Path(config[key])
    if source.get("weights") is not None:
        source["weights"] = Path(source["weights"])
    card = load_source(model, SourceOptions(**source))
    return export_job(card, ExportConfig(**config), progress)


# --- an export read back from its directory -----------------------------------------------------
def read_report(directory: Path) -> dict:
    """The report.json of an export directory; ArtifactError if it is missing or corrupt."""
    import json

    path = Path(directory) / REPORT_FILE
    try:
        report = json.loads(path.read_text())
        report["name"], report["config"], report["model"]
    except FileNotFoundError:
        failed = path.with_name(FAILED_REPORT)
        hint = f" (its last run failed: see {failed})" if failed.is_file() else ""
        raise ArtifactError(f"{path}: no export report{hint}; run 'deploy-attn export' "
                            "first") from None
    except KeyError as exc:
        raise ArtifactError(f"{path}: report has no {exc} entry (an older or foreign "
                            "report); export again") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: corrupt export report ({type(exc).__name__})") from None
    return report


_PATHS, _TUPLES = ("calib_dir",), ("precisions", "exclude", "formats")


def _config_dict(cfg: ExportConfig) -> dict:
    """``cfg`` as JSON values (absolute paths), everything but the output directory."""
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in _PATHS and value is not None:
            value = str(Path(value).resolve())
        out[f.name] = list(value) if f.name in _TUPLES and value is not None else value
    del out["out_dir"]
    return out


def config_from_report(report: dict, directory: Path) -> ExportConfig:
    """The ExportConfig that produced ``report`` (settings an older report lacks take
    their defaults)."""
    c = {k: v for k, v in report["config"].items() if k in _CONFIG_FIELDS}
    for k in _PATHS:
        c[k] = Path(c[k]) if c.get(k) else None
    for k in _TUPLES:
        if c.get(k) is not None:
            c[k] = tuple(c[k])
    return ExportConfig(**{**c, "out_dir": Path(directory)})


@dataclass
class OpenExport:
    """An export directory read back: its report, config, and (built on first use) the
    reference it was checked against."""

    directory: Path
    report: dict
    cfg: ExportConfig
    _card: ModelCard | None = None

    @property
    def name(self) -> str:
        return self.report["name"]

    def card(self) -> ModelCard:
        if self._card is None:
            self._card = rebuild(self.report["model"], self.report["input_shape"],
                                 self.directory, self.name)
        return self._card

    def verify_inputs(self, count: int) -> np.ndarray:
        """The export's verification inputs (held-out calibration images, else the seeded
        set), ``count`` of them."""
        pre = self.card().preprocess
        return verification_data(pre, tuple(self.report["input_shape"]), self.cfg.calib_dir,
                                 self.cfg.calib_count, count).inputs


def open_export(directory: Path, card: ModelCard | None = None) -> OpenExport:
    """An export directory read back; ``card``: its reference where the caller holds it
    already (the run that just wrote the export), instead of rebuilding it."""
    report = read_report(directory)
    return OpenExport(Path(directory), report, config_from_report(report, directory), card)


def export_adding(directory: Path, add: Sequence[str], progress: Progress = silent,
                  fresh: tuple[ModelCard, ExportConfig] | None = None,
                  formats: Sequence[str] = ()) -> ExportResult:
    """Export again with the precisions ``add`` (and CPU target ``formats``) on top of
    those the export in ``directory`` already has, with its reference and settings, so its
    report keeps every artifact it lists; ``fresh`` (a card and config) makes a new export
    where there is none."""
    if (Path(directory) / REPORT_FILE).is_file():
        exp = open_export(directory)
        card, cfg, have = exp.card(), exp.cfg, list(exp.report.get("files", {}))
    elif fresh is not None:
        (card, cfg), have = fresh, []
        cfg = replace(cfg, out_dir=Path(directory))
    else:
        raise ArtifactError(f"{directory}: no export there; run 'deploy-attn export' first")
    wanted = set(have) | set(add)
    # fp16 before int8: the job stops at the first precision that fails its check
    return export_job(card, replace(cfg, precisions=tuple(p for p in PRECISIONS[1:]
                                                          if p in wanted),
                                    formats=tuple(dict.fromkeys(cfg.formats + tuple(formats)))),
                      progress)


def verify_artifacts(directory: Path, progress: Progress = silent) -> dict:
    """Re-check every ONNX artifact of an export against a freshly built reference:
    parity at each precision's tolerance on ONNX Runtime, the TensorRT operator check, and
    ``second``: the same parity on OpenVINO (the ONNX file; skipped with the reason where
    OpenVINO is missing) and on each CPU target file the export wrote."""
    from .isa import runtime_isa
    from .parity import graph_numerics, ort_outputs, ort_session, verification_runtime
    from .targets import RUNTIMES, openvino_missing, run_target

    exp = open_export(directory)
    card = exp.card()
    x = exp.verify_inputs(exp.cfg.verify_count)
    ref = torch_outputs(card.module, x)
    ov_missing = openvino_missing()
    results = {}
    for precision, file in exp.report.get("files", {}).items():
        path = Path(directory) / file
        runtime = verification_runtime(path)
        progress(f"{precision}: {file} ({runtime})")
        tol = _tolerance(card, precision, x)
        # a TensorRT file's integer-kernel views depend on this CPU: shown, labelled, not claims
        kernels = {"qdq"} <= graph_numerics(path) and precision != "int8-cpu"
        try:
            result = compare(ort_outputs(ort_session(path, verify=True), x),
                             ref, tol, classifier=card.classifier)
            runs = [("openvino", path)] if ov_missing is None else []
            runs += [(fmt, Path(directory) / forms[precision]["files"][0])
                     for fmt, forms in exp.report.get("targets", {}).items()
                     if forms.get(precision, {}).get("files")
                     and (fmt != "openvino" or ov_missing is None)]
            second = []
            if kernels:
                r = compare(ort_outputs(ort_session(path), x), ref, tol,
                            classifier=card.classifier)
                second.append({"file": file, "runtime": runtime_isa("ONNX Runtime CPU"),
                               **r.as_dict(), "target": False})
            for fmt, target in runs:
                label = RUNTIMES[fmt]
                if target == path and kernels:
                    label = runtime_isa("OpenVINO CPU")
                progress(f"{precision}: {target.name} ({label})")
                r = compare(run_target(fmt, target, x), ref, tol, classifier=card.classifier)
                second.append({"file": target.name, "runtime": label, **r.as_dict(),
                               "target": target != path})
        except ArtifactError as exc:  # e.g. a file replaced by another model's
            raise ArtifactError(f"{path} ({exp.name}'s {precision} artifact): {exc}") from None
        if ov_missing:
            second.insert(0, {"file": file, "runtime": "OpenVINO", "skipped": ov_missing})
        results[precision] = {"file": file, **result.as_dict(),
                              "runtime": runtime,
                              "trt_check": _trt_check(path), "second": second}
    return results


def engine_parity(directory: Path, engine_path: Path, precision: str,
                  progress: Progress = silent) -> dict:
    """Run a TensorRT engine on the export's verification inputs (Polygraphy TrtRunner)
    and compare it with the reference PyTorch model at the precision's tolerance."""
    from .engine import engine_outputs

    exp = open_export(directory)
    card = exp.card()
    batch = exp.report["input_shape"][0]
    x = exp.verify_inputs(exp.cfg.verify_count * batch)
    progress(f"engine parity: {engine_path.name} on {len(x)} inputs vs PyTorch")
    outs = engine_outputs(engine_path, [x[i:i + batch] for i in range(0, len(x), batch)])
    tol = _tolerance(card, precision, x)
    result = compare(np.concatenate(outs), torch_outputs(card.module, x), tol,
                     classifier=card.classifier)
    return {"engine": engine_path.name, "precision": precision, **result.as_dict()}
