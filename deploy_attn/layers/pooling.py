"""Pooling along fixed axes, written so it exports as one ReduceMean / ReduceMax.

``nn.AdaptiveAvgPool2d((None, 1))`` is a mean over W; the TorchScript exporter cannot
export it with a dynamic batch, and both exporters spend ops on it. These modules are the
deploy forms that ``deploy_attn.rewrite`` puts in place of adaptive pools.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class AxisMean(nn.Module):
    """Mean over ``dims`` (keepdim): ONNX ReduceMean with constant axes."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(self.dims, keepdim=True)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class AxisMax(AxisMean):
    """Max over ``dims`` (keepdim): ONNX ReduceMax with constant axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(self.dims, keepdim=True)


def adaptive_pool_dims(output_size: object) -> tuple[int, ...] | None:
    """The axes an adaptive 2-D pool reduces, or None if it is not a pure axis reduction."""
    size = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    dims = tuple(axis for axis, s in zip((2, 3), size) if s == 1)
    if all(s in (1, None) for s in size) and dims:
        return dims
    return None
