"""The export job: a model card (the reference module and its description) -> deploy
rewrites -> ONNX -> graph passes -> onnxsim -> parity -> precision stages -> one export
directory (``model.onnx``, ``model.<precision>.onnx``, ``report.json``).

A run stages every file in a folder inside the export directory and publishes the
complete set only when the whole run has passed, so an export directory always holds one
consistent result, and its report says how to rebuild the reference it was checked
against (``open_export``)."""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch.nn as nn

from ..checks.drift import map_index
from ..checks.parity import check_onnx
from ..core.console import Progress, silent
from ..core.cpu import cpu_isa
from ..core.errors import ArtifactError, DeployAttnError, ParityError
from ..core.files import library_versions, write_json
from ..core.numerics import DEGENERATE, FP32, compare, input_dependence, seeded_inputs
from ..core.onnx_io import load_onnx, op_counts, shape_ops
from ..exportdir.config import ExportConfig, config_dict
from ..exportdir.layout import FAILED_REPORT, MODEL_FILE, OWNED, REPORT_FILE, REPORT_VERSION, \
    artifact_name
from ..exportdir.reader import open_export
from ..exportdir.transaction import STAGING_PREFIX, directory_lock, publish, staging_dir
from ..graph.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from ..graph.passes import rewrite_onnx
from ..graph.simplify import simplify_onnx
from ..map_capture import declared_maps
from ..precision.common import PRECISIONS
from ..runtime.openvino import require_openvino
from ..runtime.pytorch import torch_outputs
from ..sources import REFERENCE_STATE, ModelCard, save_reference_state
from ..swaps import patch_for_deploy, summarize
from .stages import make_checks, measured_forms, precision_stage, target_stage, trt_check_entry


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

        require_openvino()
    out = _prepare(cfg.directory(card))

    report: dict = {"report_version": REPORT_VERSION, "name": card.name, "kind": card.kind,
                    "paper": card.paper,
                    "model": card.record(), "config": config_dict(cfg), "cpu": cpu_isa()}
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
    """Every step of the job, each file into ``stage`` and each step's section into
    ``report`` as it goes; published into ``out`` at the end."""
    t0 = time.perf_counter()
    progress(f"build {card.label()} {list(card.input_shape)}")
    stages = sorted({p for p in cfg.precisions if p != "fp32"}, key=PRECISIONS.index)
    checks = make_checks(cfg, card) if stages else None  # bad calibration input fails here
    deploy, section = _deploy_step(card, cfg, stage, progress)
    report.update(section)
    report["rewrites"]["graph"] = _passes_step(card, cfg, deploy, stage, progress)
    final, section = _simplify_step(cfg, deploy, stage, progress)
    report.update(section)
    section, failure = _fp32_step(card, cfg, final, progress)
    report.update(section)
    if failure:
        raise ParityError(failure)
    report["trt_check"] = {"fp32": trt_check_entry(final)}
    if cfg.target_forms == "measure":
        report["target_forms"] = measured_forms(cfg, final, card.input_shape, progress)
    missed = []
    for precision in stages:
        step = precision_stage(cfg, card, checks, precision, stage,
                               report.get("attention_maps"), report.get("target_forms", {}),
                               progress)
        report["precisions"][precision] = step.entry
        if step.failure and cfg.strict:
            raise ParityError(step.failure)
        if step.failure:  # a diagnosis: the artifact is kept and says what it missed
            step.entry["failure"] = step.failure
            missed.append(precision)
        report["files"][precision] = artifact_name(precision)
        if step.trt_check is not None:
            report["trt_check"][precision] = step.trt_check
    section, target_files = target_stage(cfg, card, checks, stage, report["files"],
                                         report.get("target_forms", {}), progress)
    report.update(section)
    trt_rejected = any(not c["ok"] for c in report["trt_check"].values())
    report["status"] = ("parity-failed" if missed else "trt-rejected" if trt_rejected else
                        "target-rejected" if _rejections(report) else "ok")
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(stage / REPORT_FILE, report)
    files = list(report["files"].values()) + target_files
    if card.source["kind"] == "object":
        files.append(REFERENCE_STATE)
    publish(stage, out, files, REPORT_FILE, lambda name: bool(OWNED.match(name)))


def _deploy_step(card: ModelCard, cfg: ExportConfig, stage: Path,
                 progress: Progress) -> tuple[nn.Module, dict]:
    """The deploy twin of the reference (the swap table), the reference's weights saved
    beside the export where it has no other source, and the report's section on both."""
    shape = card.input_shape
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
    return deploy, {
        "model": card.record(),
        "input_shape": list(shape), "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "opset": cfg.opset,
        "dynamic_axes": {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}}
        if cfg.dynamic_batch else {},
        "reference": {"input_dependence": dependence, "degenerate": dependence < DEGENERATE},
        "rewrites": {"applied": summarize(applied), "approximate_enabled": cfg.approximate,
                     "deploy_vs_reference_torch": rewrite_error.as_dict()},
    }


def _passes_step(card: ModelCard, cfg: ExportConfig, deploy: nn.Module, stage: Path,
                 progress: Progress) -> list[dict]:
    """PyTorch -> ONNX (``raw.onnx``) -> the graph passes (``passes.onnx``): the passes
    applied, the report's ``rewrites.graph``."""
    raw, passed = stage / "raw.onnx", stage / "passes.onnx"
    progress(f"export opset {cfg.opset}{' dynamic batch' if cfg.dynamic_batch else ''}")
    export_onnx(deploy, card.input_shape, raw, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch)
    progress("graph passes (hard activations, static shapes)")
    return [p.as_dict() for p in rewrite_onnx(raw, passed)]


def _simplify_step(cfg: ExportConfig, deploy: nn.Module, stage: Path,
                   progress: Progress) -> tuple[Path, dict]:
    """onnxsim on the passes' graph: model.onnx in ``stage`` and the report's section on
    the graph (node counts, the attention-map index, shape ops)."""
    raw, passed, final = stage / "raw.onnx", stage / "passes.onnx", stage / MODEL_FILE
    if cfg.simplify:
        progress("simplify (onnxsim)")
        simplify_onnx(passed, final)
    else:
        passed.replace(final)
        passed = final
    exported, after = load_onnx(raw, check=False), load_onnx(final, check=False)
    section = {
        "nodes": {"before_simplify": op_counts(exported), "after_simplify": op_counts(after),
                  "total_before": len(exported.graph.node),
                  "total_after_passes": len(load_onnx(passed, check=False).graph.node),
                  "total_after": len(after.graph.node)},
        "attention_maps": map_index(exported, declared_maps(deploy), after)}
    raw.unlink()
    section["shape_ops"] = shape_ops(after)
    return final, section


def _fp32_step(card: ModelCard, cfg: ExportConfig, final: Path,
               progress: Progress) -> tuple[dict, str | None]:
    """FP32 parity of model.onnx against PyTorch: the report's section (FP32 the first
    precision; the files, empty when it fails) and the failure, if any."""
    batches = [1, 4] if cfg.dynamic_batch else [1]
    progress(f"parity vs PyTorch (ONNX Runtime CPU, batch {', '.join(map(str, batches))})")
    results, tol, rounding = check_onnx(final, card.module,
                                        [(b,) + tuple(card.input_shape[1:]) for b in batches],
                                        classifier=card.classifier)
    ok = all(r.ok for r in results)
    section = {"precisions": {"fp32": {"file": MODEL_FILE, "tolerance": asdict(tol),
                                       "reference_fp32_rounding": rounding,
                                       "results": [r.as_dict() for r in results], "ok": ok}},
               "versions": library_versions(), "files": {"fp32": MODEL_FILE} if ok else {}}
    failure = None if ok else (
        f"{card.name}: ONNX Runtime FP32 output differs from PyTorch beyond atol "
        f"{tol.atol:.3g} / rtol {tol.rtol:g} (max abs {max(r.max_abs for r in results):.3g}, "
        f"max rel {max(r.max_rel for r in results):.3g})")
    return section, failure


def _unchanged(out: Path) -> str:
    return (f"{out} keeps its earlier export unchanged" if (out / REPORT_FILE).is_file()
            else f"no artifact was written to {out}")


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
