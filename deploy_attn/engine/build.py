"""Stage: an ONNX file -> a strongly typed TensorRT engine, plus the sidecar JSON that
says which TensorRT and which GPU it belongs to.

Precision lives in the ONNX graph (FP32, FP16 behind Casts, INT8 as explicit Q/DQ), so
every engine is built strongly typed: no FP16/INT8 builder flags, no calibrator. The
pure parts (config checks, optimization profile, the equivalent ``trtexec`` command
line, the sidecar comparison) run anywhere; building and running need TensorRT and a
CUDA GPU, which the Docker image in ``docker/`` provides. ``tensorrt`` and
``polygraphy.backend.trt`` are imported inside the functions that need them, so
``import deploy_attn`` works without TensorRT.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import asdict
from pathlib import Path

from ..core.console import Progress, silent
from ..core.errors import ArtifactError
from ..core.files import atomic_path, file_sha256, library_versions, write_json
from .config import EngineConfig, check_onnx_matches, profile_shapes, timing_cache_path, \
    trtexec_command
from .sidecar import current_environment, sidecar_path, tensorrt_series


def build_engine(onnx_path: str | Path, engine_path: str | Path, cfg: EngineConfig,
                 progress: Progress = silent) -> Path:
    """Build a strongly typed engine from ``onnx_path`` with Polygraphy's loaders; write
    it atomically to ``engine_path`` and its sidecar to ``<engine>.json``."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    env = current_environment(onnx_path.parent.name or "NAME", cfg.precision)
    check_onnx_matches(cfg, onnx_path)

    import tensorrt as trt
    from polygraphy.backend.common import SaveBytes
    from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork,
                                        NetworkFromOnnxPath, Profile)
    from polygraphy.exception import PolygraphyException

    cache = timing_cache_path(engine_path, cfg, env["tensorrt"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    profile = Profile()
    for name, (lo, opt, hi) in profile_shapes(cfg).items():
        profile.add(name, min=lo, opt=opt, max=hi)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    config = CreateConfig(  # no precision flags, no calibrator: the graph is typed
        profiles=[profile],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: cfg.workspace_mib << 20},
        load_timing_cache=str(cache),
        builder_optimization_level=cfg.optimization_level)

    side = sidecar_path(engine_path)
    side.unlink(missing_ok=True)  # an engine without its sidecar is refused, never trusted
    progress(f"TensorRT {env['tensorrt']} on {env['gpu']} (sm {env['compute_capability']}): "
             f"building {engine_path.name}, batch {'/'.join(map(str, cfg.batch_range))}")
    t0 = time.perf_counter()
    try:
        with atomic_path(engine_path) as tmp:
            # the serialized bytes straight to disk (no deserialize/serialize round trip)
            SaveBytes(EngineBytesFromNetwork(network, config, save_timing_cache=str(cache)),
                      path=str(tmp))()
    except PolygraphyException as exc:
        first = (str(exc).strip().splitlines() or ["see the TensorRT log above"])[0]
        raise ArtifactError(f"{onnx_path}: TensorRT could not build an engine: {first}") from None
    seconds = round(time.perf_counter() - t0, 2)

    write_json(side, {
        "engine": engine_path.name,
        "engine_sha256": file_sha256(engine_path),
        "onnx": str(onnx_path),
        "onnx_sha256": file_sha256(onnx_path),
        "precision": cfg.precision,
        "environment": {**env, "tensorrt_series": tensorrt_series(env["tensorrt"])},
        "gpu_info_from": "torch.cuda (current device)",
        "build": {**asdict(cfg), "timing_cache": str(cache), "strongly_typed": True,
                  "tf32": False, "profile": {k: [list(s) for s in v]
                                             for k, v in profile_shapes(cfg).items()}},
        "trtexec": shlex.join(trtexec_command(onnx_path, engine_path, cfg, env["tensorrt"])),
        "versions": library_versions(),
        "seconds": seconds,
    })
    progress(f"wrote {engine_path} ({seconds:.1f} s) and {side.name}")
    return engine_path
