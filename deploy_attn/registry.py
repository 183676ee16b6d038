"""Name -> model builder registry, used for attention modules and backbones alike."""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch.nn as nn

from .core.errors import UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one name: how to build it and its default input."""

    name: str
    builder: Callable[..., nn.Module]
    paper: str
    url: str = ""
    kind: str = "attention"
    channels: int = 64  # input channels of the default input
    input_size: tuple[int, int] = (32, 32)
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder defaults for this name
    num_classes: int | None = None  # classifiers: lets parity check top-1 agreement

    def input_shape(self, batch: int = 1, channels: int | None = None,
                    input_size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        h, w = input_size or self.input_size
        return (batch, channels or self.channels, h, w)


class Registry:
    """A named table of ModelSpecs; registering a name twice is an error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, ModelSpec] = {}

    def register(self, name: str, builder: Callable[..., nn.Module], **spec: Any) -> ModelSpec:
        if name in self._specs:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        entry = ModelSpec(name=name, builder=builder, kind=self.kind, **spec)
        self._specs[name] = entry
        return entry

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._specs if fnmatch.fnmatchcase(n, pattern))

    def get(self, name: str) -> ModelSpec:
        return self._specs[name]


ATTENTION = Registry("attention")
BACKBONES = Registry("backbone")
_ALL = (ATTENTION, BACKBONES)


def _ensure_loaded() -> None:
    # Importing the packages runs the register() calls in each module file.
    from . import attention, backbones  # noqa: F401


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered names matching a shell-style wildcard, e.g. ``list_models("mobilenetv2_*")``."""
    _ensure_loaded()
    return sorted(n for reg in _ALL if kind in (None, reg.kind) for n in reg.names(pattern))


def get_spec(name: str) -> ModelSpec:
    """The spec for a name; an unknown name raises an error listing close matches."""
    _ensure_loaded()
    for reg in _ALL:
        if name in reg:
            return reg.get(name)
    known = list_models()
    folded = {n.lower(): n for n in known}  # `CA` suggests `ca`
    close = [folded[n] for n in difflib.get_close_matches(name.lower(), list(folded), n=4,
                                                            cutoff=0.5)]
    hint = f"; did you mean {', '.join(close)}?" if close else "; run 'deploy-attn list' to see all"
    raise UnknownModelError(f"unknown model '{name}'{hint}")
