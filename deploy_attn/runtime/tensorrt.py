"""TensorRT: what is needed to run it, and an engine's runner (Polygraphy)."""
from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import DeployAttnError, first_line
from .base import Runner

DOCKER_BUILD_SCRIPT = "docker/build_engines.sh"  # wraps docker/compose.yaml's `engines`


class TensorRTUnavailable(DeployAttnError):
    """TensorRT or a CUDA GPU is missing here; the Docker image has both."""


def docker_hint(name: str = "NAME", precision: str | None = None) -> str:
    """The command that builds (and checks) the engines in the Docker image instead."""
    args = f"{name} {precision}" if precision else name
    return f"{DOCKER_BUILD_SCRIPT} {args} (see docker/README.md)"


def require_tensorrt(name: str = "NAME", precision: str | None = None):
    """The imported ``tensorrt`` module; TensorRTUnavailable (one line: what is missing
    and the Docker command to use instead) when it or a CUDA GPU is missing."""
    def unavailable(what: str) -> TensorRTUnavailable:
        return TensorRTUnavailable(
            f"cannot build or run TensorRT engines here: {what}; build them in the Docker "
            f"image: {docker_hint(name, precision)}")

    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError, RuntimeError) as exc:
        first = first_line(exc)
        raise unavailable(f"the tensorrt Python module is not importable ({first})") from None
    if not hasattr(trt, "__version__"):
        raise unavailable("the installed tensorrt package is a stub without the TensorRT "
                          "library (no tensorrt.__version__)")
    problem = gpu_problem()
    if problem:
        raise unavailable(problem)
    return trt


def gpu_problem() -> str | None:
    # The GPU name and compute capability come from torch.cuda (torch is a core
    # dependency; the Docker image installs a CUDA build of it).
    import torch

    if torch.version.cuda is None:
        return (f"no CUDA GPU visible: torch {torch.__version__} is a CPU-only build, which "
                "cannot see one")
    if not torch.cuda.is_available():
        return "no CUDA GPU visible (torch.cuda.is_available() is False)"
    return None


class TensorRTRunner(Runner):
    """A TensorRT engine through Polygraphy's TrtRunner; the engine loads and the GPU is
    taken on enter (``with TensorRTRunner(path) as runner``) and freed on exit. The input
    is cast to the engine's input type. ``run(x)``: the first output, copied from the
    runner's reused host buffers, in slices of ``batch`` when given; ``timed(x)``: host
    input -> device -> host output, as an application calling it from NumPy would."""

    runtime = "tensorrt"

    def __init__(self, engine_path: str | Path, batch: int | None = None):
        self.path, self.batch = Path(engine_path), batch
        self._stack: contextlib.ExitStack | None = None
        self._infer: Callable[[np.ndarray], dict] | None = None

    def __enter__(self) -> "TensorRTRunner":
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.datatype import DataType

        self._stack = contextlib.ExitStack()
        runner = self._stack.enter_context(TrtRunner(EngineFromBytes(BytesFromPath(
            str(self.path)))))
        name, meta = next(iter(runner.get_input_metadata(use_numpy_dtypes=False).items()))
        dtype = DataType.to_dtype(meta.dtype, "numpy")
        self._infer = lambda x: runner.infer({name: np.ascontiguousarray(x, dtype=dtype)})
        return self

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self._infer = None

    def infer(self, x: np.ndarray) -> dict:
        """Every output on ``x``, in the runner's reused host buffers."""
        if self._infer is None:
            raise RuntimeError("enter the TensorRTRunner (a with block) before running it")
        return self._infer(x)

    def run(self, x: np.ndarray) -> np.ndarray:
        step = self.batch or len(x)
        return np.concatenate([np.array(next(iter(self.infer(x[i:i + step]).values())),
                                        copy=True) for i in range(0, len(x), step)])

    def timed(self, x: np.ndarray) -> Callable[[], Any]:
        return lambda: self.infer(x)


# --- the environment the numbers belong to --------------------------------------------
def gpu_name() -> str | None:
    import torch

    return None if gpu_problem() else torch.cuda.get_device_name(torch.cuda.current_device())
