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

import contextlib
import importlib
import json
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ArtifactError, ConfigError, DeployAttnError, first_line
from .artifacts import atomic_path, file_sha256, library_versions, write_json
from .export import INPUT_NAME
from .onnx_io import load_onnx
from .precision import PRECISION_METADATA, TENSORRT_PRECISIONS
from .progress import Progress, silent

PRECISIONS = TENSORRT_PRECISIONS  # int8: INT8 + FP16 remainder; int8-fp32: FP32 remainder
DEFAULT_BATCH_RANGE = (1, 4, 16)  # min, opt, max for dynamic-batch exports
DEFAULT_WORKSPACE_MIB = 4096
TIMING_CACHE_FILE = "trt_timing.cache"  # one per engine folder, shared by its builds
ENV_KEYS = {"tensorrt": "TensorRT", "gpu": "GPU", "compute_capability": "compute capability"}
DOCKER_BUILD_SCRIPT = "docker/build_engines.sh"  # wraps docker/compose.yaml's `engines`


class TensorRTUnavailable(DeployAttnError):
    """TensorRT or a CUDA GPU is missing here; the Docker image has both."""


class EngineMismatch(ArtifactError):
    """An engine was built with another TensorRT version or on another GPU."""


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
    from .parity import graph_numerics

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


def tensorrt_series(version: str | None) -> int | None:
    """The major version (10, 11) of a TensorRT version string, or None."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def engine_path_for(directory: str | Path, precision: str) -> Path:
    """Where ``deploy-attn build`` keeps an engine: ``<dir>/model.<precision>.engine``."""
    return Path(directory) / f"model.{precision}.engine"


def sidecar_path(engine_path: str | Path) -> Path:
    """The JSON record beside an engine: ``<engine>.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


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
    problem = _gpu_problem()
    if problem:
        raise unavailable(problem)
    return trt


def _gpu_problem() -> str | None:
    # The GPU name and compute capability come from torch.cuda (torch is a core
    # dependency; the Docker image installs a CUDA build of it).
    import torch

    if torch.version.cuda is None:
        return (f"no CUDA GPU visible: torch {torch.__version__} is a CPU-only build, which "
                "cannot see one")
    if not torch.cuda.is_available():
        return "no CUDA GPU visible (torch.cuda.is_available() is False)"
    return None


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


def _check_inputs(record: Mapping[str, Any], inputs: Sequence[np.ndarray]) -> str:
    """The engine's input name; ConfigError for an input outside its profile."""
    (name, (lo, _, hi)), = record["build"]["profile"].items()
    for x in inputs:
        shape = tuple(np.shape(x))
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise ConfigError(f"input shape {shape} is outside the engine's profile "
                              f"{tuple(lo)} .. {tuple(hi)}")
    return name


@contextlib.contextmanager
def engine_runner(engine_path: str | Path) -> Iterator[Callable[[np.ndarray], dict]]:
    """A loaded engine (Polygraphy's TrtRunner) as ``run(x) -> outputs``: ``x`` is cast
    to the engine's input type; outputs live in the runner's reused host buffers."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.datatype import DataType

    with TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path)))) as runner:
        name, meta = next(iter(runner.get_input_metadata(use_numpy_dtypes=False).items()))
        dtype = DataType.to_dtype(meta.dtype, "numpy")
        yield lambda x: runner.infer({name: np.ascontiguousarray(x, dtype=dtype)})


def engine_outputs(engine_path: str | Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the engine once per input array (after check_sidecar and a profile check);
    the first output for each, copied to host memory."""
    record = check_sidecar(engine_path, current_environment(precision=None))
    _check_inputs(record, inputs)
    with engine_runner(engine_path) as run:
        # the runner reuses its host buffers between calls: copy
        return [np.array(next(iter(run(x).values())), copy=True) for x in inputs]

