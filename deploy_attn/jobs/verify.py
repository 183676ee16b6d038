"""Verification of an export's artifacts on the runtimes of this machine."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.console import Progress, silent
from ..core.cpu import runtime_isa
from ..core.errors import ArtifactError
from ..core.numerics import compare
from ..engine.sidecar import engine_outputs
from ..exportdir.reader import open_export
from ..runtime.backends import run_target
from ..runtime.openvino import openvino_missing
from ..runtime.ort import OrtRunner, graph_numerics, verification_runtime
from ..runtime.pytorch import torch_outputs
from ..targets.cpu import RUNTIMES
from .stages import tolerance_for, trt_check_entry


def verify_artifacts(directory: Path, progress: Progress = silent) -> dict:
    """Re-check every ONNX artifact of an export against a freshly built reference:
    parity at each precision's tolerance on ONNX Runtime, the TensorRT operator check, and
    ``second``: the same parity on OpenVINO (the ONNX file; skipped with the reason where
    OpenVINO is missing) and on each CPU target file the export wrote."""
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
        tol = tolerance_for(card, precision, x)
        # a TensorRT file's integer-kernel views depend on this CPU: shown, labelled, not claims
        kernels = {"qdq"} <= graph_numerics(path) and precision != "int8-cpu"
        try:
            result = compare(OrtRunner(path, verify=True).run(x),
                             ref, tol, classifier=card.classifier)
            runs = [("openvino", path)] if ov_missing is None else []
            runs += [(fmt, Path(directory) / forms[precision]["files"][0])
                     for fmt, forms in exp.report.get("targets", {}).items()
                     if forms.get(precision, {}).get("files")
                     and (fmt != "openvino" or ov_missing is None)]
            second = []
            if kernels:
                r = compare(OrtRunner(path).run(x), ref, tol,
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
                              "trt_check": trt_check_entry(path), "second": second}
    return results


def engine_parity(directory: Path, engine_path: Path, precision: str,
                  progress: Progress = silent) -> dict:
    """Run a TensorRT engine on the export's verification inputs (Polygraphy TrtRunner)
    and compare it with the reference PyTorch model at the precision's tolerance."""
    exp = open_export(directory)
    card = exp.card()
    batch = exp.report["input_shape"][0]
    x = exp.verify_inputs(exp.cfg.verify_count * batch)
    progress(f"engine parity: {engine_path.name} on {len(x)} inputs vs PyTorch")
    outs = engine_outputs(engine_path, [x[i:i + batch] for i in range(0, len(x), batch)])
    tol = tolerance_for(card, precision, x)
    result = compare(np.concatenate(outs), torch_outputs(card.module, x), tol,
                     classifier=card.classifier)
    return {"engine": engine_path.name, "precision": precision, **result.as_dict()}
