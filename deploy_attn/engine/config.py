"""An engine's configuration, checked against the ONNX file it is built from."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from ..core.onnx_io import load_onnx
from ..graph.export import INPUT_NAME
from ..precision.common import PRECISION_METADATA, TENSORRT_PRECISIONS
from ..runtime.ort import graph_numerics
from .sidecar import tensorrt_series

PRECISIONS = TENSORRT_PRECISIONS  # int8: INT8 + FP16 remainder; int8-fp32: FP32 remainder
DEFAULT_BATCH_RANGE = (1, 4, 16)  # min, opt, max for dynamic-batch exports
DEFAULT_WORKSPACE_MIB = 4096
TIMING_CACHE_FILE = "trt_timing.cache"  # one per engine folder, shared by its builds


@dataclass(frozen=True)
class EngineConfig:
    """How to build one engine. ``static_batch`` is the ONNX input's fixed batch, or None
    for a dynamic-batch export, whose profile is ``min/opt/max_batch`` (default
    DEFAULT_BATCH_RANGE). ``precision`` must match the ONNX graph: it names the engine
    and picks the parity tolerance, it does not change how TensorRT builds."""

    precision: str
    sample_shape: tuple[int, ...]  # one sample, without the batch axis: (C, H, W)
    input_name: str = INPUT_NAME
    static_batch: int | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Path | None = None  # default: TIMING_CACHE_FILE beside the engine
    optimization_level: int | None = None  # TensorRT builder level 0-5; None: its default

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'; choose one of "
                              f"{', '.join(PRECISIONS)}")
        shape = tuple(self.sample_shape)
        if not shape or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
            raise ConfigError(f"sample shape {shape} must be positive integers, e.g. (3, 224, 224)")
        object.__setattr__(self, "sample_shape", tuple(int(d) for d in shape))
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
        if not isinstance(self.workspace_mib, int) or self.workspace_mib < 1:
            raise ConfigError(f"workspace {self.workspace_mib} MiB must be a positive integer")
        if self.optimization_level is not None and self.optimization_level not in range(6):
            raise ConfigError(f"builder optimization level {self.optimization_level} is not "
                              "one of 0, 1, 2, 3, 4, 5")
        given = {"min-batch": self.min_batch, "opt-batch": self.opt_batch,
                 "max-batch": self.max_batch}
        if self.static_batch is not None:
            if self.static_batch < 1:
                raise ConfigError(f"static batch {self.static_batch} must be >= 1")
            for flag, value in given.items():
                if value is not None and value != self.static_batch:
                    raise ConfigError(
                        f"the ONNX input has a fixed batch of {self.static_batch}, so "
                        f"--{flag} {value} cannot apply; export with --dynamic-batch to "
                        "build an engine for a range of batch sizes")
        lo, opt, hi = self.batch_range
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"batch range --min-batch {lo} --opt-batch {opt} --max-batch "
                              f"{hi} must satisfy 1 <= min <= opt <= max")

    @property
    def dynamic(self) -> bool:
        return self.static_batch is None

    @property
    def batch_range(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of the optimization profile."""
        if self.static_batch is not None:
            return (self.static_batch,) * 3
        # unset values follow the given ones: --opt-batch 32 alone gives (1, 32, 32)
        lo, opt, hi = DEFAULT_BATCH_RANGE
        lo = self.min_batch if self.min_batch is not None else lo
        hi = self.max_batch if self.max_batch is not None else max(hi, lo, self.opt_batch or 0)
        opt = self.opt_batch if self.opt_batch is not None else min(max(opt, lo), hi)
        return lo, opt, hi

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, precision: str, **options: Any) -> EngineConfig:
        """The config for ``onnx_path``: input name, sample shape and static/dynamic batch
        read from the file; ``options`` are the other fields (min_batch, workspace_mib...)."""
        name, batch, sample = onnx_input(onnx_path)
        _check_precision(onnx_path, precision)  # the rest is read from the file itself
        return cls(precision=precision, sample_shape=sample, input_name=name,
                   static_batch=batch, **options)


def onnx_input(onnx_path: str | Path) -> tuple[str, int | None, tuple[int, ...]]:
    """(name, fixed batch or None when the batch axis is symbolic, per-sample shape) of
    the single graph input of ``onnx_path``."""
    model = load_onnx(onnx_path, check=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConfigError(f"{onnx_path}: expected one graph input, found {len(inputs)} "
                          f"({', '.join(i.name for i in inputs)})")
    dims = inputs[0].type.tensor_type.shape.dim
    sizes = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if len(sizes) < 2 or any(s is None for s in sizes[1:]):
        shape = ["?" if s is None else s for s in sizes]
        raise ConfigError(f"{onnx_path}: input '{inputs[0].name}' has shape {shape}; only the "
                          "batch axis may be dynamic")
    return inputs[0].name, sizes[0], tuple(int(s) for s in sizes[1:])


def onnx_precision(onnx_path: str | Path) -> str:
    """The precision an ONNX file carries: its PRECISION_METADATA entry when it has one,
    else read from the graph: 'int8' with Q/DQ nodes and FP16 tensors, 'int8-fp32' with
    Q/DQ nodes only, 'fp16' with any float16 tensor (initializer, Cast target or typed
    value), otherwise 'fp32'."""
    model = load_onnx(onnx_path, check=False)
    for prop in model.metadata_props:
        if prop.key == PRECISION_METADATA:
            try:
                value = json.loads(prop.value)
            except ValueError:
                value = prop.value
            if value in PRECISIONS:
                return value
    numerics = graph_numerics(onnx_path)
    if "qdq" in numerics:
        return "int8" if "fp16" in numerics else "int8-fp32"
    return "fp16" if "fp16" in numerics else "fp32"


def check_onnx_matches(cfg: EngineConfig, onnx_path: str | Path) -> None:
    """ConfigError when ``cfg`` contradicts the ONNX file: input name, sample shape,
    static vs dynamic batch, or a precision the graph does not carry."""
    name, batch, sample = onnx_input(onnx_path)
    if (name, sample) != (cfg.input_name, cfg.sample_shape):
        raise ConfigError(f"{onnx_path}: input '{name}' {sample} differs from the config's "
                          f"'{cfg.input_name}' {cfg.sample_shape}")
    if batch != cfg.static_batch:
        have = f"a fixed batch of {batch}" if batch else "a dynamic batch"
        want = f"a fixed batch of {cfg.static_batch}" if cfg.static_batch else "a dynamic batch"
        raise ConfigError(f"{onnx_path}: the input has {have}, the config expects {want}")
    _check_precision(onnx_path, cfg.precision)


def _check_precision(onnx_path: str | Path, precision: str) -> None:
    graph = onnx_precision(onnx_path)
    if graph != precision:
        raise ConfigError(
            f"{onnx_path} is a {graph} graph, not {precision}: engines are built strongly "
            f"typed, so the precision comes from the ONNX (use the {precision} ONNX)")


def profile_shapes(cfg: EngineConfig) -> dict[str, tuple[tuple[int, ...], ...]]:
    """{input name: (min shape, opt shape, max shape)} of the optimization profile."""
    return {cfg.input_name: tuple((b,) + cfg.sample_shape for b in cfg.batch_range)}


def timing_cache_path(engine_path: str | Path, cfg: EngineConfig,
                      tensorrt_version: str | None = None) -> Path:
    """The timing cache a build loads and updates: cfg.timing_cache, or one beside the
    engine named after the TensorRT version (a cache is only valid for the exact version
    that wrote it: a 10.x cache is never fed to an 11.x build in the same folder)."""
    if cfg.timing_cache is not None:
        return cfg.timing_cache
    name = TIMING_CACHE_FILE if tensorrt_version is None else \
        TIMING_CACHE_FILE.replace(".cache", f"-{tensorrt_version}.cache")
    return Path(engine_path).parent / name


def engine_path_for(directory: str | Path, precision: str) -> Path:
    """Where ``deploy-attn build`` keeps an engine: ``<dir>/model.<precision>.engine``."""
    return Path(directory) / f"model.{precision}.engine"


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, cfg: EngineConfig,
                    tensorrt_version: str | None = None) -> list[str]:
    """The ``trtexec`` command line that builds the same engine as build_engine.
    ``--stronglyTyped`` is what 10.x needs; 11.x networks are always strongly typed (it
    accepts the flag as a no-op and has no precision flags at all), so it is left out."""
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if (tensorrt_series(tensorrt_version) or 10) < 11:
        cmd.append("--stronglyTyped")
    if cfg.dynamic:  # a static ONNX fixes its own shapes; trtexec takes none for it
        shapes = profile_shapes(cfg)
        for i, flag in enumerate(("min", "opt", "max")):
            spec = ",".join(f"{name}:{'x'.join(map(str, s[i]))}" for name, s in shapes.items())
            cmd.append(f"--{flag}Shapes={spec}")
    cmd.append(f"--memPoolSize=workspace:{cfg.workspace_mib}M")
    cmd.append(f"--timingCacheFile={timing_cache_path(engine_path, cfg, tensorrt_version)}")
    if cfg.optimization_level is not None:
        cmd.append(f"--builderOptimizationLevel={cfg.optimization_level}")
    # deploy: trtexec enables TF32 by default, Polygraphy's CreateConfig does not; FP32
    # engines stay FP32 so they meet the FP32 parity tolerance. CreateConfig's default
    # profiling verbosity is DETAILED (trtexec's is layer names only).
    cmd += ["--noTF32", "--profilingVerbosity=detailed", "--skipInference"]
    return cmd
