"""CBAM: Convolutional Block Attention Module (Woo, Park, Lee, Kweon; ECCV 2018).
https://arxiv.org/abs/1807.06521
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.activations import create_act
from ..layers.conv import reduced_width, require
from ..map_capture import MapSpec
from ..registry import ATTENTION


class ChannelAttention(nn.Module):
    """Average- and max-pooled descriptors through one shared MLP, summed, then a gate
    that multiplies the input (the module applies its gate, so it keeps ``[N, C, H, W]``).

    The MLP is two bias-free 1x1 convs, hidden width ``max(min_hidden, C // reduction)``
    so that narrow layers keep a hidden layer. Seed 001 names the ratio both ``rotio`` and
    ``ratio`` (a NameError); here it is ``reduction``.
    """

    attention_maps = {"gate": MapSpec("gate", "channel")}

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8,
                 act_layer: str = "relu", gate_layer: str = "sigmoid", bias: bool = False) -> None:
        super().__init__()
        hidden = reduced_width(channels, reduction, min_hidden)
        # deploy: the shared table swaps these pools for ReduceMean / ReduceMax.
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=bias),
            create_act(act_layer),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=bias),
        )
        self.gate = create_act(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))


class SpatialAttention(nn.Module):
    """Mean and max over channels, a ``k x k`` conv on the two maps, then a gate that
    multiplies the input.

    Padding is ``kernel_size // 2`` for every odd kernel; seed 000 hard-codes 3, which
    only keeps the size for k = 7. ``channels`` is unused (the conv sees two maps) and is
    taken so that every attention module is built the same way.
    """

    attention_maps = {"map": MapSpec("gate", "spatial")}

    def __init__(self, channels: int, kernel_size: int = 7, gate_layer: str = "sigmoid") -> None:
        super().__init__()
        require(kernel_size > 0 and kernel_size % 2 == 1,
                f"kernel_size={kernel_size} must be a positive odd number (same-size output)")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = create_act(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # deploy: max(dim=1)[0] exports as one ReduceMax (the unused indices are dropped).
        pooled = torch.cat([torch.mean(x, dim=1, keepdim=True),
                            torch.max(x, dim=1, keepdim=True)[0]], dim=1)
        return x * self.gate(self.conv(pooled))


class CBAM(nn.Module):
    """Channel attention, then spatial attention on its output (the paper's sequential
    order, which its ablation found best)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7,
                 min_hidden: int = 8, act_layer: str = "relu",
                 gate_layer: str = "sigmoid") -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, min_hidden, act_layer, gate_layer)
        self.spatial = SpatialAttention(channels, kernel_size, gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


_PAPER = "CBAM: Convolutional Block Attention Module (ECCV 2018)"
_URL = "https://arxiv.org/abs/1807.06521"
ATTENTION.register("cbam", CBAM, paper=_PAPER, url=_URL)
ATTENTION.register("channel_attention", ChannelAttention, paper=_PAPER + ", channel half", url=_URL)
ATTENTION.register("spatial_attention", SpatialAttention, paper=_PAPER + ", spatial half", url=_URL)
