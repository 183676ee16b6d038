"""OpenVINO on the CPU: compiled models, batches, the runner; a clear error when it is missing."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..core.errors import ArtifactError, DeployAttnError, first_line
from .base import Runner


class OpenVINOUnavailable(DeployAttnError):
    """OpenVINO is not installed here."""


def require_openvino():
    try:
        return importlib.import_module("openvino")
    except ImportError as exc:
        raise OpenVINOUnavailable(f"OpenVINO is not installed ({exc}): pip install "
                                  "'deploy-attn[openvino]'") from None


def openvino_missing() -> str | None:
    """Why OpenVINO cannot run here, or None."""
    try:
        require_openvino()
    except OpenVINOUnavailable as exc:
        return str(exc)
    return None


def ov_config(threads: int | None = None) -> dict:
    """OpenVINO CPU settings: FP32 inference precision (the graph's own FP16/INT8 parts stay
    as given), latency mode (one stream), ``threads`` inference threads."""
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def ov_compile(path: str | Path, threads: int | None = None,
               shape: tuple[int, ...] | None = None, config: dict | None = None):
    """An OpenVINO CPU compiled model of an ONNX file or an IR, with ov_config (``config``:
    another deployment's settings instead); ``shape`` fixes a dynamic input to it first
    (as a deployment at one batch size compiles: OpenVINO runs a dynamic shape several
    times slower)."""
    ov = require_openvino()
    try:
        core = ov.Core()
        model = core.read_model(str(path))
        if shape is not None and model.inputs[0].get_partial_shape().is_dynamic:
            model.reshape({0: ov.PartialShape(list(shape))})
        return core.compile_model(model, "CPU", ov_config(threads) if config is None else config)
    except Exception as exc:
        first = first_line(exc)
        raise ArtifactError(f"{path}: OpenVINO cannot compile it: {first}") from None


def ov_batches(compiled, x: np.ndarray) -> Iterator:
    """The results of ``compiled`` on ``x``, one per run: a dynamic batch runs ``x`` at
    once, a static one in slices of its batch."""
    batch = compiled.inputs[0].get_partial_shape()[0]
    step = batch.get_length() if batch.is_static else len(x)
    for i in range(0, len(x), step):
        yield compiled(x[i:i + step])


def ov_outputs(compiled, x: np.ndarray) -> np.ndarray:
    """The first output on ``x``."""
    return np.concatenate([np.asarray(r[0]) for r in ov_batches(compiled, x)])


class OpenVINORunner(Runner):
    """OpenVINO CPU on an IR or ONNX file, compiled once with ov_config(``threads``), or
    with another deployment's ``config``; ``shape`` fixes a dynamic input to it first
    (ov_compile)."""

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None,
                 shape: tuple[int, ...] | None = None, config: dict | None = None):
        self.path = Path(path)
        self.compiled = ov_compile(path, threads, shape, config)

    def run(self, x: np.ndarray) -> np.ndarray:
        return ov_outputs(self.compiled, x)

    def outputs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        runs = list(ov_batches(self.compiled, x))
        return {n: np.concatenate([np.asarray(r[self.compiled.output(n)]) for r in runs])
                for n in names}

    def timed(self, x: np.ndarray) -> Callable[[], object]:
        """``x`` on one infer request."""
        request = self.compiled.create_infer_request()
        return lambda: request.infer({0: x})
