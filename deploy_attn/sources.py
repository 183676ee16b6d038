"""Model sources -> a model card: the reference module and what the pipeline must know
about it (input shape, task, preprocessing, provenance).

Sources: a registry name; ``FILE.py:CALLABLE`` or ``package.module:CALLABLE`` (a class or
a factory, called with ``model_args``); ``timm:NAME`` / ``torchvision:NAME`` (random
initialisation or a checkpoint, never a download); a Python ``nn.Module`` object. Each
card carries a JSON ``source`` record from which ``rebuild`` makes the same reference in a
new process, so an export directory can be re-checked from its report alone.

A user's module and weights are never altered: the card holds a copy (or a module the
source built), and only generated weights of registry models get BatchNorm re-estimation
and logit centring.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import importlib.util
import inspect
import io
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from .checkpoint import EMA_ENTRIES, LoadedCheckpoint, load_checkpoint
from .core.errors import ArtifactError, ConfigError, typed_first_line
from .core.files import file_sha256
from .core.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .models import build, create_model, seeded
from .registry import get_spec
from .user_code import HUBS, call_builder, hub_model, resolve_callable

TASKS = ("classifier", "segmentation", "features")
USER_CHANNELS, USER_INPUT_SIZE = 3, (224, 224)  # defaults for sources outside the registry
REFERENCE_STATE = "reference.safetensors"  # an object source's weights, beside its export


@dataclass
class ModelCard:
    """The reference module and its description. ``module`` belongs to the pipeline
    (never the caller's instance); ``source`` is JSON and rebuilds it."""

    module: nn.Module
    name: str  # display name, and the default export folder's name
    input_shape: tuple[int, int, int, int]  # batch 1
    task: str  # classifier | segmentation | features
    preprocess: Preprocess | None  # None: the input is a feature map, not an image
    source: dict  # provenance: kind, target, arguments, seed, ...
    kind: str = "user"  # attention | backbone | user
    paper: str = ""
    weights: LoadedCheckpoint | None = None  # None: generated (seeded) weights

    @property
    def classifier(self) -> bool:
        return self.task == "classifier"

    @property
    def generated(self) -> bool:
        return self.weights is None and self.source["kind"] != "object"

    def label(self) -> str:
        """What the model is, for messages: the source as the user gave it."""
        return self.source.get("target") or self.name

    def record(self) -> dict:
        """What the export report keeps about the model."""
        return {"source": self.source, "task": self.task,
                "preprocess": self.preprocess.as_dict() if self.preprocess else None,
                "weights": self.weights.as_dict() if self.weights else None}


# --- parsing the command line's pieces --------------------------------------------------
def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are Python literals (``3``, ``0.5``, ``(1, 2)``,
    ``'se'``, ``None``), and a bare word that is not one is taken as a string."""
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--model-arg '{item}': expected KEY=VALUE with KEY a Python name")
        if key in args:
            raise ConfigError(f"--model-arg {key} given twice")
        try:
            args[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            args[key] = value.strip()
    return args


def source_kind(source: str) -> str:
    """registry | file | module | timm | torchvision, from the source string's form."""
    hub, sep, _ = source.partition(":")
    if sep and hub in HUBS:
        return hub
    if sep:
        return "file" if hub.endswith(".py") else "module"
    if source.endswith(".py"):
        raise ConfigError(f"{source}: name the callable that builds the model: "
                          f"{source}:CALLABLE (a class or a function)")
    return "registry"


def default_preprocess(kind: str, shape: Sequence[int],
                       mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None) -> Preprocess | None:
    """Attention modules take feature maps (None). Images: ImageNet statistics for 3
    channels, [-1, 1] otherwise, unless ``mean``/``std`` are given (one value or one per
    channel)."""
    channels, size = int(shape[1]), (int(shape[2]), int(shape[3]))
    if kind == "attention":
        if mean is not None or std is not None:
            raise ConfigError("--mean/--std describe image inputs; attention modules take "
                              "feature maps")
        return None
    base = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels,) * 2

    def per_channel(values, default, what):
        if values is None:
            return tuple(default)
        values = tuple(float(v) for v in values)
        if len(values) == 1:
            values *= channels
        if len(values) != channels:
            raise ConfigError(f"--{what} has {len(values)} values for {channels} channels")
        if what == "std" and any(v <= 0 for v in values):
            raise ConfigError(f"--std {' '.join(map(str, values))}: values must be positive")
        return values

    return Preprocess(size, channels, per_channel(mean, base[0], "mean"),
                      per_channel(std, base[1], "std"))


@contextlib.contextmanager
def _runs_on(what: str, shape: Sequence[int]) -> Iterator[None]:
    """A model's forward on the input the user chose that fails inside: one line."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{what} does not run on an input of shape {list(shape)} "
                          f"({typed_first_line(exc)}); give --channels / --input-size") from None


def _infer_task(module: nn.Module, shape: tuple[int, ...], what: str) -> str:
    """classifier for [N, K] outputs, segmentation for per-pixel [N, K, H, W] outputs at
    the input's size with K != C, features otherwise; the model must run on ``shape``."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with _runs_on(what, shape), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        y = module(x)
    if not isinstance(y, torch.Tensor):
        raise ConfigError(f"{what} returns a {type(y).__name__}; deploy-attn exports models "
                          "with one tensor output (wrap the model to return one)")
    if y.dim() == 2:
        return "classifier"
    if y.dim() == 4 and tuple(y.shape[2:]) == tuple(shape[2:]) and y.shape[1] != shape[1]:
        return "segmentation"
    return "features"


def _shape(channels: int | None, input_size: Sequence[int] | None, default_channels: int,
           default_size: Sequence[int]) -> tuple[int, int, int, int]:
    c = default_channels if channels is None else int(channels)
    h, w = default_size if input_size is None else input_size
    return (1, c, int(h), int(w))


@dataclass(frozen=True)
class SourceOptions:
    """What a source string needs besides itself (the CLI's model options)."""

    model_args: Mapping[str, Any] = field(default_factory=dict)
    channels: int | None = None
    input_size: tuple[int, int] | None = None
    num_classes: int | None = None
    seed: int = 0
    weights: Path | None = None
    ema: bool | None = None
    task: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for what, value in (("channels", self.channels), ("num_classes", self.num_classes)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{what} {value!r} must be a positive integer")
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 2 or not all(isinstance(d, int) and d >= 1 for d in size):
                raise ConfigError(f"input size {size} must be two positive integers (H, W)")
            object.__setattr__(self, "input_size", size)
        if self.ema and self.weights is None:
            raise ConfigError("--ema does nothing without --weights")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), or None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


MEMORY_FACTOR = 64  # an export holds ~64 input samples' worth: calibration batches, activations


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return ""


def check_input_fits(shape: Sequence[int]) -> None:
    """ConfigError, with an estimate, when an input of ``shape`` is too large to export
    on this machine (before anything is allocated)."""
    per_sample = 4.0
    for d in shape[1:]:
        per_sample *= d
    need, have = MEMORY_FACTOR * per_sample, available_memory()
    if have is not None and need > have / 2:
        raise ConfigError(f"input {'x'.join(map(str, shape))} is {_size(per_sample)} per "
                          f"sample; exporting it needs about {_size(need)} of memory "
                          f"({MEMORY_FACTOR} samples' worth), this machine has {_size(have)} "
                          "available: choose a smaller --input-size or --channels")


def load_source(source: str | nn.Module, options: SourceOptions = SourceOptions(),
                name: str | None = None) -> ModelCard:
    """The model card for ``source`` (see the module docstring)."""
    if options.task is not None and options.task not in TASKS:
        raise ConfigError(f"--task {options.task}: choose from {', '.join(TASKS)}")
    if isinstance(source, nn.Module):
        return _object_card(source, options, name)
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"model source {source!r}: give a registry name, FILE.py:CALLABLE, "
                          "package.module:CALLABLE, timm:NAME, torchvision:NAME or an nn.Module")
    kind = source_kind(source)
    if kind == "registry":
        return _registry_card(source, options, name)
    args = dict(options.model_args)
    if options.num_classes is not None:
        if "num_classes" in args:
            raise ConfigError("--num-classes and --model-arg num_classes both given")
        args["num_classes"] = options.num_classes
    record: dict[str, Any] = {"kind": kind, "target": source, "args": args, "seed": options.seed}
    check_input_fits(_shape(options.channels, options.input_size, USER_CHANNELS, USER_INPUT_SIZE))
    with seeded(options.seed):
        if kind in HUBS:
            model, record["version"] = hub_model(kind, source.partition(":")[2], args)
            default = f"{kind}-{source.partition(':')[2]}"
        else:
            fn, where = resolve_callable(source)
            record.update(where)
            model = call_builder(fn, args, source)
            stem = Path(source.rpartition(":")[0]).stem if kind == "file" else \
                source.rpartition(":")[0].rsplit(".", 1)[-1]
            default = f"{stem}.{source.rpartition(':')[2]}"
    return _finish(model.eval(), name or default, record, options, "user", "")


def _registry_card(name: str, options: SourceOptions, display: str | None) -> ModelCard:
    spec = get_spec(name)
    shape = spec.input_shape(1, options.channels, options.input_size)
    check_input_fits(shape)
    if options.model_args:
        raise ConfigError(f"--model-arg applies to FILE.py:CALLABLE and package sources; "
                          f"{name} is a registry model (see --channels, --num-classes)")
    extra = {"num_classes": options.num_classes} if options.num_classes else {}
    chosen = options.channels is not None or options.input_size is not None  # else a bug's
    with _runs_on(name, shape) if chosen else contextlib.nullcontext():
        if options.weights is None:  # its BatchNorm re-estimation runs it
            model = create_model(name, channels=options.channels,
                                 input_size=options.input_size, seed=options.seed, **extra)
        else:  # the checkpoint replaces every weight: no seeded init, no BN re-estimation
            with seeded(options.seed):
                model = build(spec, channels=options.channels, input_size=options.input_size,
                              **extra).eval()
            if chosen:  # run now on the chosen input (the checkpoint loads later)
                model(torch.zeros(shape))
    record = {"kind": "registry", "name": name, "seed": options.seed,
              "channels": options.channels,
              "input_size": list(options.input_size) if options.input_size else None,
              "num_classes": options.num_classes}
    task = ("features" if spec.kind == "attention" else
            "classifier" if spec.num_classes is not None else "segmentation")
    options = replace(options, task=options.task or task)
    shape = spec.input_shape(1, options.channels, options.input_size)
    return _finish(model, display or name, record, options, spec.kind, spec.paper, shape)


def _finish(model: nn.Module, name: str, record: dict, options: SourceOptions, kind: str,
            paper: str, shape: tuple[int, ...] | None = None) -> ModelCard:
    shape = shape or _shape(options.channels, options.input_size, USER_CHANNELS, USER_INPUT_SIZE)
    what = record.get("target") or name
    if options.weights is not None:  # load_checkpoint rejects NaN/Inf, naming the file
        weights = load_checkpoint(model, options.weights, options.ema)
    else:
        weights = None
        bad = [k for k, v in model.state_dict().items()
               if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ConfigError(f"{what}: {len(bad)} weight tensor(s) hold NaN or Inf: "
                              f"{', '.join(bad[:3])}")
    task = options.task or _infer_task(model, shape, what)
    return ModelCard(model.eval(), name, tuple(shape), task,
                     default_preprocess(kind, shape, options.mean, options.std), record, kind,
                     paper, weights)


def _class_target(cls: type) -> tuple[str | None, str]:
    """Where a class can be imported from again (``FILE.py:Name`` or ``module:Name``),
    or None and why not."""
    qualname, module = cls.__qualname__, cls.__module__
    if "<locals>" in qualname:
        return None, f"{qualname} is defined inside a function"
    if module == "__main__":
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        if not main:
            return None, f"{qualname} is defined in an interactive session"
        return f"{Path(main).resolve()}:{qualname}", ""
    if module.startswith("deploy_attn_user."):  # imported from a user's file by us
        path = getattr(sys.modules.get(module), "__file__", None)
        return (f"{path}:{qualname}", "") if path else (None, f"{module} has no file")
    return f"{module}:{qualname}", ""


def _object_card(model: nn.Module, options: SourceOptions, name: str | None) -> ModelCard:
    """A copy of the caller's module (theirs stays as it was, training flag included).
    Its weights are saved beside the export (REFERENCE_STATE); re-checks rebuild it from
    its class, ``model_args`` and those weights."""
    if options.weights is not None:
        raise ConfigError("give an nn.Module with its weights loaded, or a source string "
                          "with --weights, not both")
    try:
        reference = copy.deepcopy(model)
    except Exception as exc:
        raise ConfigError(f"{type(model).__name__} cannot be copied ({typed_first_line(exc)}); "
                          "deploy-attn never changes the caller's module in place") from None
    cls = type(model)
    target, problem = _class_target(cls)
    args = dict(options.model_args)
    if target and not problem:
        try:
            inspect.signature(cls).bind(**args)
        except TypeError as exc:
            problem = (f"{cls.__qualname__}({', '.join(args)}) cannot be called again ({exc}); "
                       "pass model_args=")
    record = {"kind": "object", "target": target, "class": f"{cls.__module__}.{cls.__qualname__}",
              "args": args, "state": REFERENCE_STATE, "rebuild_problem": problem or None}
    return _finish(reference.eval(), name or cls.__name__, record, options, "user", "")


def save_reference_state(card: ModelCard, directory: Path) -> None:
    """Write an object source's weights (safetensors: loading them runs no code) and
    record their hash."""
    if card.source["kind"] != "object":
        return
    from safetensors.torch import save_model

    path = Path(directory) / REFERENCE_STATE
    save_model(card.module, str(path))
    card.source["state_sha256"] = file_sha256(path)


# --- rebuilding from an export report ------------------------------------------------------
def _check_hash(path: Path, recorded: str | None, what: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"{what} {path} no longer exists; export again")
    if recorded and file_sha256(path) != recorded:
        raise ArtifactError(f"{what} {path} changed since the export (sha256 differs); "
                            "export again")


def rebuild(record: Mapping[str, Any], input_shape: Sequence[int], directory: Path,
            name: str) -> ModelCard:
    """The reference an export was made from, built again from its report's model record
    (``ModelCard.record``); a source that no longer imports, or files that changed since,
    give one-line errors naming them."""
    source = dict(record["source"])
    kind = source["kind"]
    weights = record.get("weights") or None
    if weights:
        _check_hash(Path(weights["path"]), weights.get("sha256"), "the weights file")
    if source.get("file"):
        _check_hash(Path(source["file"]), source.get("file_sha256"), "the model source file")
    pre = record.get("preprocess")
    shape = list(input_shape)
    options = SourceOptions(
        model_args=source.get("args") or {}, seed=source.get("seed", 0),
        weights=Path(weights["path"]) if weights else None,
        ema=(weights or {}).get("entry") in EMA_ENTRIES or None,
        task=record.get("task"), channels=shape[1], input_size=(shape[2], shape[3]),
        mean=tuple(pre["mean"]) if pre else None, std=tuple(pre["std"]) if pre else None)
    if kind == "registry":
        options = replace(options, channels=source.get("channels"),
                          input_size=tuple(source["input_size"]) if source.get("input_size")
                          else None, num_classes=source.get("num_classes"))
        card = _registry_card(source["name"], options, name)
    elif kind == "object":
        card = _rebuild_object(source, options, directory, name)
    else:
        if kind in HUBS:
            _hub_version_matches(kind, source.get("version"))
        card = load_source(source["target"], replace(options, num_classes=None), name)
    if weights and card.weights and card.weights.layout != weights.get("layout"):
        raise ArtifactError(f"the weights {weights['path']} now map through layout "
                            f"{card.weights.layout}, not {weights.get('layout')}; export again")
    return card


def _hub_version_matches(hub: str, recorded: str | None) -> None:
    try:
        version = importlib.import_module(HUBS[hub]).__version__
    except Exception:
        return  # load_source names the missing package
    if recorded and version != recorded:
        raise ArtifactError(f"the export was made with {hub} {recorded}, this is {hub} "
                            f"{version}: its models may be built differently; export again")


def _rebuild_object(source: Mapping[str, Any], options: SourceOptions, directory: Path,
                    name: str) -> ModelCard:
    if source.get("rebuild_problem") or not source.get("target"):
        raise ArtifactError(f"{directory}: exported from a Python object of class "
                            f"{source.get('class')} that cannot be rebuilt in a new process: "
                            f"{source.get('rebuild_problem')}")
    state = Path(directory) / source.get("state", REFERENCE_STATE)
    _check_hash(state, source.get("state_sha256"), "the reference weights")
    fn, _ = resolve_callable(source["target"])
    with seeded(0):
        model = call_builder(fn, source.get("args") or {}, source["target"])
    from safetensors.torch import load_model

    try:
        load_model(model, str(state), strict=True)
    except Exception as exc:
        raise ArtifactError(f"{state} does not load into {source['target']} any more: "
                            f"{typed_first_line(exc)}") from None
    return _finish(model.eval(), name, dict(source), options, "user", "")
