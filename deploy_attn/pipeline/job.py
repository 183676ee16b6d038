"""The export job: registry name -> reference -> deploy rewrites -> ONNX -> onnxsim ->
parity -> ``model.onnx`` + ``report.json``. Each step is one stage function."""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import ParityError
from ..models import create_model
from ..registry import get_spec
from ..rewrite import patch_for_deploy, summarize
from .artifacts import library_versions, write_json
from .export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx
from .onnx_io import load_onnx, op_counts, shape_ops
from .parity import FP32, check_onnx, compare, seeded_inputs, torch_outputs
from .simplify import simplify_onnx

DEFAULT_ROOT = Path("export")
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"


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
    seed: int = 0

    @property
    def directory(self) -> Path:
        return Path(self.out_dir) if self.out_dir else DEFAULT_ROOT / self.name


@dataclass
class ExportResult:
    model_path: Path
    report_path: Path
    report: dict = field(default_factory=dict)


def _noop(msg: str) -> None:
    pass


def reference_model(cfg: ExportConfig) -> torch.nn.Module:
    """The reference PyTorch model an export is checked against (seeded or user weights)."""
    model = create_model(cfg.name, channels=cfg.channels, input_size=cfg.input_size,
                         seed=cfg.seed)
    if cfg.weights is not None:
        from ..checkpoint import load_checkpoint
        load_checkpoint(model, cfg.weights)
    return model


def export_job(cfg: ExportConfig, progress: Callable[[str], None] = _noop) -> ExportResult:
    """Run the export job; raises ParityError (after writing report.json, and with no
    model.onnx left behind) when the ONNX output is outside the FP32 tolerance."""
    spec = get_spec(cfg.name)
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
        report["seconds"] = round(time.perf_counter() - t0, 2)
        report["status"] = "ok" if ok else "parity_failed"
        if ok:
            final.replace(model_path)  # same filesystem: atomic
            report["files"] = {"model": MODEL_FILE}
        else:
            model_path.unlink(missing_ok=True)  # never leave a stale model that looks current
    write_json(report_path, report)
    if not ok:
        worst = max(results, key=lambda r: r.max_abs)
        raise ParityError(
            f"{cfg.name}: ONNX Runtime FP32 output differs from PyTorch beyond atol "
            f"{FP32.atol:g} / rtol {FP32.rtol:g} (max abs {worst.max_abs:.3g}, max rel "
            f"{worst.max_rel:.3g}, batch {worst.batch}); see {report_path}")
    return ExportResult(model_path, report_path, report)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


