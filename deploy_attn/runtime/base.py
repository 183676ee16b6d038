"""What every runner is: a model loaded once for one runtime, then run on batches (the
shape of Polygraphy's runners, polygraphy/backend/base/runner.py).

bench, check, accuracy and maps all run models through these runners: ``runtime/ort.py``
(OrtRunner), ``openvino.py`` (OpenVINORunner), ``pytorch.py`` (TorchRunner) and
``tensorrt.py`` (TensorRTRunner); ``backends.py`` picks one for a CPU target's file.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np


class Runner:
    """A model loaded once. ``run(x)``: the first output on a batch (a static-batch model
    runs it in slices of its batch); ``outputs(x, names)``: the named outputs; ``timed(x)``:
    a zero-argument call on a fixed input, for timing. A runner is a context manager: one
    that holds a device (TensorRT) takes it on enter and frees it on exit; the others load
    when made and hold nothing to free."""

    runtime = ""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Frees what the runner holds (nothing, unless a runtime says otherwise)."""

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{self.runtime} runs no batches")

    def outputs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{self.runtime} has no named outputs")

    def timed(self, x: np.ndarray) -> Callable[[], Any]:
        raise NotImplementedError(f"{self.runtime} is not timed")
