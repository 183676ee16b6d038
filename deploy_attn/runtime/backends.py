"""The backends by name, the CPU targets' runners, and the environment they run in."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.cpu import cpu_isa
from ..core.errors import ConfigError
from ..core.files import library_versions
from .base import Runner
from .openvino import OpenVINORunner
from .ort import OrtRunner
from .tensorrt import gpu_name


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


DEFAULT_BACKENDS = ("torch", "ort-fp32", "ort-fp16", "ort-int8", "trt-fp16", "trt-int8")


def environment() -> dict:
    """CPU, cores, load, GPU and library versions: what a latency number depends on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()

    cpu = cpu_isa()
    return {"cpu": cpu["model"], "cpu_flags": cpu["isa"], "isa": cpu, "cores": os.cpu_count(),
            "usable_cores": usable, "load_average": [round(v, 2) for v in os.getloadavg()],
            "gpu": gpu_name(), "platform": platform.platform(), "versions": library_versions()}


def check_backends(backends: Sequence[str]) -> list[str]:
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend {', '.join(unknown)}; choose from "
                          f"{', '.join(BACKENDS)}")
    if not backends:
        raise ConfigError("no backend to benchmark")
    return list(dict.fromkeys(backends))


def target_runner(fmt: str, path: Path, threads: int | None = None,
                  shape: tuple[int, ...] | None = None) -> Runner:
    """The runner of a CPU target's file (an IR or ONNX file on OpenVINO, an ORT-format or
    ONNX file on ONNX Runtime). Without ``threads``: the configuration whose numerics the
    checks trust; with them: as a deployment runs it, for timing (``shape`` fixes an
    OpenVINO dynamic input)."""
    if fmt == "openvino":
        return OpenVINORunner(path, threads, shape)
    return OrtRunner(path, threads, verify=not threads)


def run_target(fmt: str, path: Path, x: np.ndarray) -> np.ndarray:
    """The first output of a CPU target's file on ``x``, as the checks run it."""
    return target_runner(fmt, path).run(x)
