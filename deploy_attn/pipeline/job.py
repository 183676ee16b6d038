"""The export job: registry name -> reference -> deploy rewrites -> ONNX -> onnxsim ->
parity -> ``model.onnx`` + ``report.json``. Each step is one stage function."""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ArtifactError, ConfigError, ParityError
from ..models import create_model
from ..registry import get_spec
from ..rewrite import patch_for_deploy, summarize
from .artifacts import library_versions, write_json
from .calib import CalibData, calibration_data, verification_data
from .export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx
from .onnx_io import load_onnx, op_counts, shape_ops
from .parity import FP32, check_onnx, compare, seeded_inputs, torch_outputs
from .precision import AUTOCAST_MAX
from .progress import Progress, silent
from .simplify import simplify_onnx

DEFAULT_ROOT = Path("export")
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")  # int8-cpu: ONNX Runtime CPU only


def artifact_name(precision: str) -> str:
    return MODEL_FILE if precision == "fp32" else f"model.{precision}.onnx"


@dataclass(frozen=True)
class ExportConfig:
    name: str
    out_dir: Path | None = None  # default: export/NAME
    channels: int | None = None
    input_size: tuple[int, int] | None = None
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    approximate: bool = False
    weights: Path | None = None
    num_classes: int | None = None  # backbones: a checkpoint's own head width
    seed: int = 0
    precisions: tuple[str, ...] = ()  # beyond fp32, which is always exported first
    calib_dir: Path | None = None
    calib_count: int = 32
    calib_method: str = "minmax"
    exclude: tuple[str, ...] = ()  # INT8 nodes kept FP32; ("auto",) chooses by sensitivity
    sensitivity: bool = False
    fp16_threshold: float = AUTOCAST_MAX
    verify_count: int = 8

    @property
    def directory(self) -> Path:
        return Path(self.out_dir) if self.out_dir else DEFAULT_ROOT / self.name


@dataclass
class ExportResult:
    model_path: Path
    report_path: Path
    report: dict = field(default_factory=dict)


def reference_model(cfg: ExportConfig) -> torch.nn.Module:
    """The reference PyTorch model an export is checked against (seeded or user weights)."""
    extra = {"num_classes": cfg.num_classes} if cfg.num_classes else {}
    model = create_model(cfg.name, channels=cfg.channels, input_size=cfg.input_size,
                         seed=cfg.seed, **extra)
    if cfg.weights is not None:
        from ..checkpoint import load_checkpoint
        load_checkpoint(model, cfg.weights)
    return model


def export_job(cfg: ExportConfig, progress: Progress = silent) -> ExportResult:
    """Run the export job; raises ParityError (after writing report.json, and with no
    model.onnx left behind) when the ONNX output is outside the FP32 tolerance."""
    spec = get_spec(cfg.name)
    bad = [p for p in cfg.precisions if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"unknown precision {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
    if cfg.exclude == ("auto",) and "int8" not in cfg.precisions:
        raise ConfigError("--exclude applies to INT8: add --precision int8")
    out = cfg.directory
    model_path, report_path = out / MODEL_FILE, out / REPORT_FILE
    shape = spec.input_shape(1, cfg.channels, cfg.input_size)
    t0 = time.perf_counter()

    progress(f"build {cfg.name} {list(shape)}")
    reference = reference_model(cfg)
    deploy, applied = patch_for_deploy(reference, approximate=cfg.approximate)
    x = seeded_inputs(shape)
    rewrite_error = compare(torch_outputs(deploy, x), torch_outputs(reference, x), FP32)

    report: dict = {
        "name": cfg.name, "kind": spec.kind, "paper": spec.paper,
        "input_shape": list(shape), "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "opset": cfg.opset,
        "dynamic_axes": {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}}
        if cfg.dynamic_batch else {},
        "seed": cfg.seed, "weights": str(cfg.weights) if cfg.weights else "seeded",
        "config": _config_dict(cfg),
        "rewrites": {"applied": summarize(applied), "approximate_enabled": cfg.approximate,
                     "deploy_vs_reference_torch": rewrite_error.as_dict()},
    }
    with tempfile.TemporaryDirectory(prefix=".export-", dir=_mkdir(out)) as tmp:
        raw = Path(tmp) / "raw.onnx"
        progress(f"export opset {cfg.opset}{' dynamic batch' if cfg.dynamic_batch else ''}")
        export_onnx(deploy, shape, raw, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch)
        final = raw
        if cfg.simplify:
            progress("simplify (onnxsim)")
            final = simplify_onnx(raw, Path(tmp) / "simplified.onnx")
        before, after = load_onnx(raw, check=False), load_onnx(final, check=False)
        report["nodes"] = {"before_simplify": op_counts(before), "after_simplify": op_counts(after),
                           "total_before": len(before.graph.node),
                           "total_after": len(after.graph.node)}
        report["shape_ops"] = shape_ops(after)

        batches = [1, 4] if cfg.dynamic_batch else [1]
        progress(f"parity vs PyTorch (ONNX Runtime CPU, batch {', '.join(map(str, batches))})")
        results = check_onnx(final, reference, [(b,) + shape[1:] for b in batches], FP32,
                             classifier=spec.num_classes is not None)
        ok = all(r.ok for r in results)
        report["parity"] = {"fp32": {"tolerance": asdict(FP32),
                                     "results": [r.as_dict() for r in results], "ok": ok}}
        report["versions"] = library_versions()
        report["files"] = {}
        if ok:
            final.replace(model_path)  # same filesystem: atomic
            report["files"]["fp32"] = MODEL_FILE
            report["trt_check"] = {"fp32": _trt_check(model_path)}
        else:
            model_path.unlink(missing_ok=True)  # never leave a stale model that looks current
        failure = None if ok else (
            f"{cfg.name}: ONNX Runtime FP32 output differs from PyTorch beyond atol "
            f"{FP32.atol:g} / rtol {FP32.rtol:g} (max abs {max(r.max_abs for r in results):.3g}, "
            f"max rel {max(r.max_rel for r in results):.3g}); see {report_path}")
        stages = [p for p in cfg.precisions if p != "fp32"] if ok else []
        checks = _checks(cfg, spec, shape, reference) if stages else None
        for precision in stages:
            failure = _precision_stage(cfg, spec, checks, precision, Path(tmp), report, progress)
            if failure:
                break
    rejected = [f"{report['files'][p]}: {c['summary']}"
                for p, c in report.get("trt_check", {}).items() if not c["ok"]]
    report["status"] = ("failed" if failure else "trt-rejected" if rejected else "ok")
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(report_path, report)
    if failure:
        raise ParityError(failure)
    if rejected:  # the files are right for ONNX Runtime, so they stay; the exit says why
        more = f" (and {len(rejected) - 1} more file(s))" if len(rejected) > 1 else ""
        raise ArtifactError(f"{cfg.name}: {rejected[0]}{more}; the ONNX files are written "
                            f"for ONNX Runtime, but TensorRT would not build them")
    return ExportResult(model_path, report_path, report)


def export_adding(cfg: ExportConfig, add: Sequence[str],
                  progress: Progress = silent) -> ExportResult:
    """Export again with the precisions ``add`` on top of those the export in
    ``cfg.directory`` already has, with that export's settings (``cfg`` only for a new
    directory), so its report keeps every artifact it lists."""
    directory = cfg.directory
    have: list[str] = []
    if (directory / REPORT_FILE).is_file():
        report = read_report(directory)
        cfg = config_from_report(report, directory)
        have = list(report.get("files", {}))
    wanted = set(have) | set(add)
    # fp16 before int8: the job stops at the first precision that fails its check
    return export_job(replace(cfg, precisions=tuple(p for p in PRECISIONS[1:] if p in wanted)),
                      progress)


def _trt_check(path: Path) -> dict:
    from .trt_check import check_trt_support

    return check_trt_support(path).as_dict()


@dataclass(frozen=True)
class _Checks:
    """What every precision stage of one export shares."""
    calib: CalibData  # calibration inputs
    verify: CalibData  # verification inputs, disjoint from them
    ref: np.ndarray  # the reference model's outputs on verify.inputs


def _checks(cfg: ExportConfig, spec, shape, reference) -> _Checks:
    verify = verification_data(spec, shape, cfg.calib_dir, cfg.calib_count, cfg.verify_count)
    return _Checks(calibration_data(spec, shape, cfg.calib_dir, cfg.calib_count), verify,
                   torch_outputs(reference, verify.inputs))


def _precision_stage(cfg: ExportConfig, spec, checks: _Checks, precision: str, tmp: Path,
                     report: dict, progress: Progress) -> str | None:
    """Write model.<precision>.onnx if it meets its threshold; return a failure message
    otherwise (the artifact is then removed)."""
    from .parity import TOLERANCES, ort_outputs, ort_session
    from .precision import (auto_exclude, convert_fp16, cosine_scorer, int8_sensitivity,
                            quantize_int8)

    out = cfg.directory
    src, dst = out / MODEL_FILE, out / artifact_name(precision)
    tol = TOLERANCES[precision]
    calib, verify, ref = checks.calib, checks.verify, checks.ref
    x = verify.inputs
    staged = tmp / dst.name
    details: dict = {}
    if precision == "fp16":
        progress(f"fp16: measure activation ranges on {len(calib.inputs)} inputs, convert")
        details = convert_fp16(src, staged, calib, cfg.fp16_threshold).details
    elif precision == "int8-cpu":
        from .cpu_int8 import quantize_int8_cpu

        progress(f"int8-cpu: calibrate ({cfg.calib_method}), U8 activations for ORT CPU")
        details = quantize_int8_cpu(src, staged, calib, cfg.calib_method, cache_dir=tmp).details
    else:
        auto = tuple(cfg.exclude) == ("auto",)
        progress(f"int8: calibrate ({cfg.calib_method}, {calib.source}), quantize Q/DQ")
        artifact = quantize_int8(src, staged, calib, cfg.calib_method,
                                 () if auto else cfg.exclude, cache_dir=tmp)
        if cfg.sensitivity or auto:
            scorer = cosine_scorer(ref, x)
            base = scorer(staged)
            if cfg.sensitivity or base < tol.min_cosine:
                progress("int8: per-layer sensitivity (each quantized node alone left FP32)")
                rows = int8_sensitivity(src, staged, scorer, progress, base=base)
                details["sensitivity"] = rows
            if auto and base < tol.min_cosine:
                def confirm(nodes: list[str]) -> float:  # the real artifact, re-quantized
                    nonlocal artifact
                    artifact = quantize_int8(src, staged, calib, cfg.calib_method, nodes,
                                             cache_dir=tmp)
                    return scorer(staged)

                chosen = auto_exclude(src, staged, rows, scorer, tol.min_cosine, base,
                                      confirm=confirm)
                progress(f"int8 --exclude auto: {len(chosen)} node(s) left FP32")
        details.update(artifact.details)
    progress(f"{precision}: parity vs PyTorch FP32 on {len(x)} inputs ({verify.source})")
    result = compare(ort_outputs(ort_session(staged), x), ref, tol,
                     classifier=spec.num_classes is not None)
    overflows = details.get("overflows", [])
    entry = {"file": dst.name, "tolerance": asdict(tol), "results": [result.as_dict()],
             "ok": result.ok and not overflows, "verification": verify.as_dict(), **details}
    report.setdefault("precisions", {})[precision] = entry
    if overflows:
        dst.unlink(missing_ok=True)
        return (f"{cfg.name}: FP16 graph casts {len(overflows)} tensor(s) beyond the FP16 "
                f"range to FP16: {', '.join(overflows[:3])}; lower --fp16-threshold "
                f"(now {cfg.fp16_threshold:g})")
    if not result.ok:
        dst.unlink(missing_ok=True)
        hint = ""
        if precision == "int8" and tuple(cfg.exclude) == ("auto",):
            hint = (f"; --exclude auto left {len(details['excluded_nodes'])} nodes FP32, "
                    "its cap (a quarter of the quantized nodes)")
        if precision.startswith("int8") and cfg.weights is None and spec.kind == "backbone":
            hint += ("; these are generated weights, on which INT8 is judged harshly (README, "
                     "'INT8 on generated weights'): give the trained ones with --weights")
        return (f"{cfg.name}: {precision.upper()} output vs PyTorch FP32: cosine "
                f"{result.cosine:.6f} (need >= {tol.min_cosine}), max abs {result.max_abs:.3g}, "
                f"finite {result.finite}; see {out / REPORT_FILE}{hint}")
    staged.replace(dst)
    report["files"][precision] = dst.name
    if precision != "int8-cpu":  # U8 activations: an ONNX Runtime CPU artifact by design
        report.setdefault("trt_check", {})[precision] = _trt_check(dst)
    return None


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_report(directory: Path) -> dict:
    """The report.json of an export directory; ArtifactError if it is missing or corrupt."""
    import json

    path = Path(directory) / REPORT_FILE
    try:
        report = json.loads(path.read_text())
        report["name"], report["config"]
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no export report; run 'deploy-attn export' first") from None
    except KeyError as exc:
        raise ArtifactError(f"{path}: report has no {exc} entry (an older or foreign "
                            "report); export again") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: corrupt export report ({type(exc).__name__})") from None
    return report


_PATHS, _TUPLES = ("weights", "calib_dir"), ("input_size", "precisions", "exclude")


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
    """The ExportConfig that produced ``report``: the same reference model, calibration
    and verification inputs (settings an older report lacks take their defaults)."""
    known = {f.name for f in fields(ExportConfig)}
    c = {k: v for k, v in report["config"].items() if k in known}
    for k in _PATHS:
        c[k] = Path(c[k]) if c.get(k) else None
    for k in _TUPLES:
        if c.get(k) is not None:
            c[k] = tuple(c[k])
    return ExportConfig(**{**c, "name": report["name"], "out_dir": Path(directory)})


def verify_inputs(cfg: ExportConfig, report: dict, count: int) -> np.ndarray:
    """The verification inputs of the export (held-out calibration images, else the
    seeded set), ``count`` of them."""
    return verification_data(get_spec(cfg.name), tuple(report["input_shape"]), cfg.calib_dir,
                             cfg.calib_count, count).inputs


def verify_artifacts(directory: Path, progress: Progress = silent) -> dict:
    """Re-check every ONNX artifact of an export against a freshly built reference:
    parity at each precision's tolerance and the TensorRT operator check."""
    from .parity import TOLERANCES, ort_outputs, ort_session

    report = read_report(directory)
    cfg = config_from_report(report, directory)
    reference = reference_model(cfg)
    x = verify_inputs(cfg, report, cfg.verify_count)
    ref = torch_outputs(reference, x)
    results = {}
    for precision, file in report.get("files", {}).items():
        progress(f"{precision}: {file}")
        result = compare(ort_outputs(ort_session(Path(directory) / file), x), ref,
                         TOLERANCES[precision], classifier=get_spec(cfg.name).num_classes is not None)
        results[precision] = {"file": file, **result.as_dict(),
                              "trt_check": _trt_check(Path(directory) / file)}
    return results


def engine_parity(directory: Path, engine_path: Path, precision: str,
                  progress: Progress = silent) -> dict:
    """Run a TensorRT engine on the export's seeded inputs (Polygraphy TrtRunner) and
    compare it with the reference PyTorch model at the precision's tolerance."""
    from .engine import engine_outputs
    from .parity import TOLERANCES

    report = read_report(directory)
    cfg = config_from_report(report, directory)
    reference = reference_model(cfg)
    batch = report["input_shape"][0]
    x = verify_inputs(cfg, report, cfg.verify_count * batch)
    progress(f"engine parity: {engine_path.name} on {len(x)} inputs vs PyTorch")
    outs = engine_outputs(engine_path, [x[i:i + batch] for i in range(0, len(x), batch)])
    result = compare(np.concatenate(outs), torch_outputs(reference, x), TOLERANCES[precision],
                     classifier=get_spec(cfg.name).num_classes is not None)
    return {"engine": engine_path.name, "precision": precision, **result.as_dict()}
