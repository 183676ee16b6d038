"""Attention maps: the gate tensors each attention module declares, captured in PyTorch by
forward hooks (``forward`` is never edited or patched).

A module class declares ``attention_maps``: map name -> ``MapSpec``, the submodule whose
output *is* the map (a gate activation, a softmax) and, where that submodule runs more
than once per forward (CPCA's shared gate, SA's gate), which call. Every instance of such
a class in any model is a *site*; the declaration travels with the class, so sites are
found in registry models, user files and Python objects alike, and in deploy twins
(subclasses keep the declaration and the submodule names).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

KINDS = {  # how a map is drawn (the comparison always uses the whole tensor)
    "channel": "one value per channel: bars",
    "spatial": "an H x W map (mean over channels/groups): heatmap over the input",
    "axis": "one value per channel and position along H or W: channels x positions",
    "rows": "attention rows (query x key); drawn as the mean row, as H x W where the keys "
            "are the positions",
    "branch": "selection weights per branch and channel: branches x channels",
}


@dataclass(frozen=True)
class MapSpec:
    module: str  # submodule path inside the attention module; its output is the map
    kind: str
    call: int = 0  # which call of that submodule, for one that runs more than once

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown map kind '{self.kind}'; choose from {', '.join(KINDS)}")


@dataclass(frozen=True)
class MapSite:
    """One declared map of one attention module instance in a model."""

    site: str  # the attention module's path in the model ("" for the model itself)
    cls: str  # its class name
    name: str  # the map's name in the declaration
    spec: MapSpec

    @property
    def module_path(self) -> str:
        return f"{self.site}.{self.spec.module}" if self.site else self.spec.module

    @property
    def key(self) -> str:
        return f"{self.site or '<root>'}:{self.name}"

    def as_dict(self) -> dict:
        return {"site": self.site or "<root>", "class": self.cls, "map": self.name,
                "module": self.module_path, "kind": self.spec.kind, "call": self.spec.call}


def declared_maps(model: nn.Module) -> list[MapSite]:
    """Every declared map of every attention module in ``model``, in module order."""
    found = []
    for path, module in model.named_modules():
        for name, spec in getattr(type(module), "attention_maps", {}).items():
            found.append(MapSite(path, type(module).__name__, name, spec))
    return found


@dataclass
class Captured:
    """What the hooks saw on one forward: each map's tensor, and each site's input size."""

    maps: dict[str, np.ndarray]  # MapSite.key -> the map
    calls: dict[str, int]  # MapSite.key -> how often its submodule ran
    spatial: dict[str, tuple[int, int]]  # site -> the (H, W) of its input


@contextlib.contextmanager
def _hooks(model: nn.Module, sites: list[MapSite], seen: dict[str, list],
           spatial: dict[str, tuple[int, int]]) -> Iterator[None]:
    modules = dict(model.named_modules())
    handles = []

    def record(path: str):
        def hook(module, inputs, output):
            seen.setdefault(path, []).append(output.detach().float().numpy().copy())
        return hook

    def size(site: str):
        def hook(module, inputs):
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() == 4:
                spatial.setdefault(site, tuple(inputs[0].shape[2:]))
        return hook

    try:
        for path in dict.fromkeys(s.module_path for s in sites):
            handles.append(modules[path].register_forward_hook(record(path)))
        for site in dict.fromkeys(s.site for s in sites):
            handles.append(modules[site].register_forward_pre_hook(size(site)))
        yield
    finally:
        for h in handles:
            h.remove()


def capture(model: nn.Module, x: np.ndarray, sites: list[MapSite] | None = None) -> Captured:
    """Run ``model`` (in eval mode, without gradients) on ``x`` and return the declared
    maps. The model's mode is restored; its weights are not touched."""
    sites = declared_maps(model) if sites is None else sites
    seen: dict[str, list] = {}
    spatial: dict[str, tuple[int, int]] = {}
    was_training = model.training
    try:
        with _hooks(model, sites, seen, spatial), torch.no_grad():
            model.eval()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        model.train(was_training)
    maps, calls = {}, {}
    for s in sites:
        outputs = seen.get(s.module_path, [])
        calls[s.key] = len(outputs)
        if s.spec.call < len(outputs):
            maps[s.key] = outputs[s.spec.call]
    return Captured(maps, calls, spatial)
