"""The files of an export directory and their names."""
from __future__ import annotations

import re
from pathlib import Path

from ..sources import REFERENCE_STATE

DEFAULT_ROOT = Path("export")
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"
# 2: FP32 is a precision like the others (report["precisions"]["fp32"]); 1 kept its parity
# apart, as report["parity"]["fp32"] (read as 2 by exportdir.reader.upgrade_report)
REPORT_VERSION = 2
FAILED_REPORT = "export-failed.json"  # a failed run's report; the export itself is untouched
# files an export owns: a new export replaces them all (engines and benchmarks belong to
# the model they were made from)
OWNED = re.compile(r"^(model(\.[\w-]+){0,2}\.(onnx|engine|engine\.json|xml|bin|ort|"
                   r"required_operators\.config)|report\.json|bench\.json|"
                   r"accuracy\.json|maps\.json|maps|"
                   rf"{re.escape(FAILED_REPORT)}|{re.escape(REFERENCE_STATE)})$")


def artifact_name(precision: str) -> str:
    return MODEL_FILE if precision == "fp32" else f"model.{precision}.onnx"


BENCH_FILE = "bench.json"  # beside report.json when bench(save=True)


ACCURACY_FILE = "accuracy.json"


MAPS_FILE = "maps.json"
MAPS_DIR = "maps"  # the figures, beside maps.json
