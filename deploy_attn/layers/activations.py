"""Hard activations as the Coordinate Attention / MobileNetV3 code writes them.

The reference forms below are the papers' ``ReLU6(x + 3) / 6``; they export as Add, Clip,
Div. The graph passes (``deploy_attn.graph_rewrite``: ``hard_sigmoid``, ``hard_swish``)
fuse those into single HardSigmoid / HardSwish ops (alpha 1/6, beta 0.5): the same
function, found in any model's export.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class HSigmoid(nn.Module):
    """h_sigmoid(x) = ReLU6(x + 3) / 6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


class HSwish(nn.Module):
    """h_swish(x) = x * ReLU6(x + 3) / 6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (F.relu6(x + 3.0) / 6.0)


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "hardsigmoid": nn.Hardsigmoid,  # ONNX HardSigmoid / HardSwish as they are
    "hardswish": nn.Hardswish,
    "hard_sigmoid": HSigmoid,
    "hard_swish": HSwish,
    "identity": nn.Identity,
}


def create_act(name_or_cls: str | type[nn.Module]) -> nn.Module:
    """An activation module from a name in the table above or a module class."""
    if isinstance(name_or_cls, str):
        try:
            return _ACTIVATIONS[name_or_cls]()
        except KeyError:
            raise ValueError(
                f"unknown activation '{name_or_cls}'; choose from {', '.join(_ACTIVATIONS)}"
            ) from None
    return name_or_cls()
