from __future__ import annotations

import re
from pathlib import Path

import pytest

import deploy_attn
from deploy_attn import export
from deploy_attn.pipeline.artifacts import STAGING_PREFIX

ATTENTION_NAMES = deploy_attn.list_models(kind="attention")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# a file name that looks like a deployable artifact (or its report / reference outputs)
ARTIFACT = re.compile(r"^(model.*\.(onnx|engine|ort|xml|bin)|report\.json|"
                      r"reference\.safetensors)$")


def snapshot(directory: Path, staging: bool = True) -> dict[str, bytes]:
    """Every path under ``directory`` with its bytes (folders as a marker), {} when it does
    not exist; ``staging=False`` leaves out what lies in a run's staging folder."""
    if not directory.exists():
        return {}
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if staging or not any(part.startswith(STAGING_PREFIX) for part in rel.parts):
            out[str(rel)] = p.read_bytes() if p.is_file() else b"<dir>"
    return out


def _trt_missing() -> str | None:
    from deploy_attn.pipeline.engine import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt("se")
    except TensorRTUnavailable as exc:
        return str(exc)
    return None


TRT_MISSING = _trt_missing()  # why TensorRT engines cannot be built here, or None


def needs_trt(test):
    """Mark ``test`` trt and gpu, and skip it with the reason where either is missing."""
    for mark in (pytest.mark.trt, pytest.mark.gpu,
                 pytest.mark.skipif(TRT_MISSING is not None,
                                    reason=f"needs TensorRT and a CUDA GPU: {TRT_MISSING}")):
        test = mark(test)
    return test


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory):
    """Exports shared by the tests of one session: (name, dynamic_batch) -> ExportResult."""
    root = tmp_path_factory.mktemp("exports")
    cache: dict = {}

    def get(name: str, dynamic_batch: bool = False, **kwargs):
        key = (name, dynamic_batch, tuple(sorted(kwargs.items())))
        if key not in cache:
            out = root / f"{name}-{'dyn' if dynamic_batch else 'static'}-{len(cache)}"
            cache[key] = export(name, out_dir=out,
                                                 dynamic_batch=dynamic_batch, **kwargs)
        return cache[key]

    return get
