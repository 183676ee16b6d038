"""The sidecar beside an engine: what built it, and whether it still matches."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import ArtifactError, ConfigError
from ..core.files import file_sha256
from ..runtime.tensorrt import TensorRTRunner, require_tensorrt

ENV_KEYS = {"tensorrt": "TensorRT", "gpu": "GPU", "compute_capability": "compute capability"}


class EngineMismatch(ArtifactError):
    """An engine was built with another TensorRT version or on another GPU."""


def tensorrt_series(version: str | None) -> int | None:
    """The major version (10, 11) of a TensorRT version string, or None."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def sidecar_path(engine_path: str | Path) -> Path:
    """The JSON record beside an engine: ``<engine>.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def current_environment(name: str = "NAME", precision: str | None = None) -> dict[str, str]:
    """TensorRT version, GPU name and compute capability of this machine (the device
    TensorRT uses: the current CUDA device); TensorRTUnavailable without them."""
    trt = require_tensorrt(name, precision)
    import torch

    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"tensorrt": str(trt.__version__), "gpu": torch.cuda.get_device_name(index),
            "compute_capability": f"{major}.{minor}"}


def environment_mismatches(built: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """One phrase per ENV_KEYS entry that differs, naming both values; empty when the
    engine belongs to this environment."""
    return [f"{label} {built.get(key)} (built) vs {here.get(key)} (here)"
            for key, label in ENV_KEYS.items() if str(built.get(key)) != str(here.get(key))]


def read_sidecar(engine_path: str | Path) -> dict:
    """The sidecar record of an engine; ArtifactError when the engine or its sidecar is
    missing, unreadable, or lacks the environment it was built in."""
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    if not engine_path.is_file():
        raise ArtifactError(f"{engine_path}: no such engine file")
    if not side.is_file():
        raise ArtifactError(f"{engine_path}: its sidecar {side.name} is missing, so the "
                            "TensorRT version and GPU it was built for are unknown; rebuild it")
    try:
        record = json.loads(side.read_text())
        env = record["environment"]
        missing = [k for k in ENV_KEYS if k not in env]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{side}: corrupt engine sidecar ({type(exc).__name__}); "
                            "rebuild the engine") from None
    if missing or "engine_sha256" not in record:
        raise ArtifactError(f"{side}: corrupt engine sidecar (missing "
                            f"{', '.join(missing) or 'engine_sha256'}); rebuild the engine")
    return record


def check_sidecar(engine_path: str | Path, current: Mapping[str, Any]) -> dict:
    """Refuse an engine whose sidecar is missing or corrupt, describes another file, or
    was built with another TensorRT version or GPU than ``current``
    (see current_environment). Returns the sidecar record."""
    record = read_sidecar(engine_path)
    if record["engine_sha256"] != file_sha256(engine_path):
        raise ArtifactError(f"{engine_path}: the engine differs from the one its sidecar "
                            "describes (sha256 mismatch); rebuild it")
    diffs = environment_mismatches(record["environment"], current)
    if diffs:
        raise EngineMismatch(f"{engine_path} was built for another environment: "
                             f"{'; '.join(diffs)}; rebuild it on this machine")
    return record


def check_inputs(record: Mapping[str, Any], inputs: Sequence[np.ndarray]) -> str:
    """The engine's input name; ConfigError for an input outside its profile."""
    (name, (lo, _, hi)), = record["build"]["profile"].items()
    for x in inputs:
        shape = tuple(np.shape(x))
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise ConfigError(f"input shape {shape} is outside the engine's profile "
                              f"{tuple(lo)} .. {tuple(hi)}")
    return name


def checked_runner(engine_path: str | Path, inputs: Sequence[np.ndarray],
                   batch: int | None = None) -> TensorRTRunner:
    """The engine's runner after the checks every run of it makes: its sidecar against
    this machine's TensorRT and GPU, ``inputs`` against its optimization profile."""
    check_inputs(check_sidecar(engine_path, current_environment(precision=None)), inputs)
    return TensorRTRunner(engine_path, batch)


def engine_outputs(engine_path: str | Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the engine once per input array (after checked_runner's checks); the first
    output for each, copied to host memory."""
    with checked_runner(engine_path, inputs) as runner:
        return [runner.run(x) for x in inputs]
