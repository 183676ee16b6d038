"""Channel Prior Convolutional Attention for Medical Image Segmentation
(Huang, Chen, Zou, Lu, Chen; Computers in Biology and Medicine 2024).
https://arxiv.org/abs/2306.05196
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.conv import require
from ..map_capture import MapSpec
from ..registry import ATTENTION
from .cbam import ChannelAttention


class CPCAChannelAttention(ChannelAttention):
    """CPCA's channel prior: ``x * (sigmoid(mlp(avg)) + sigmoid(mlp(max)))``: CBAM's
    channel attention with biased 1x1 convs and a gate on each pooled path instead of one
    on their sum. Hidden width the seed's ``C // reduction``, kept from reaching 0 (below
    16 channels the seed leaves zero-width convs): 1, 1, 4, 6 at 8, 16, 64, 96 channels.
    """

    # the shared gate runs on the average-pooled branch, then on the max-pooled one
    attention_maps = {"avg_gate": MapSpec("gate", "channel", 0),
                      "max_gate": MapSpec("gate", "channel", 1)}

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 1,
                 act_layer: str = "relu", gate_layer: str = "sigmoid") -> None:
        super().__init__(channels, reduction, min_hidden, act_layer, gate_layer, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The seed's view(-1, C, 1, 1) on an already [N, C, 1, 1] tensor is dropped.
        avg = self.gate(self.mlp(self.avg_pool(x)))
        return x * (avg + self.gate(self.mlp(self.max_pool(x))))


class CPCA(nn.Module):
    """1x1 conv + GELU, the channel prior, then multi-scale depth-wise spatial attention:
    a 5x5 depth-wise conv followed by three strip pairs (1x7/7x1, 1x11/11x1, 1x21/21x1),
    summed with the 5x5 output, mixed by the 1x1 conv, multiplied onto the channel-weighted
    features, and projected by the 1x1 conv again.

    As in the paper's code (and the seed), one 1x1 conv ``conv`` is applied three times
    with the same weights. GELU stays the exact erf form; the deploy table offers a tanh
    GELU only as an approximate rewrite.
    """

    # the spatial attention: the shared 1x1 conv's second call, on the summed strips
    attention_maps = {"spatial": MapSpec("conv", "spatial", 1)}

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 1,
                 strip_sizes: tuple[int, ...] = (7, 11, 21)) -> None:
        super().__init__()
        require(all(k > 0 and k % 2 == 1 for k in strip_sizes),
                f"strip_sizes={strip_sizes} must all be positive odd numbers (same-size output)")
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.act = nn.GELU()
        self.ca = CPCAChannelAttention(channels, reduction, min_hidden)
        self.dw5 = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.strips = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, (1, k), padding=(0, k // 2), groups=channels),
                nn.Conv2d(channels, channels, (k, 1), padding=(k // 2, 0), groups=channels),
            )
            for k in strip_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ca(self.act(self.conv(x)))
        x_init = self.dw5(x)
        spatial = x_init
        for strip in self.strips:
            spatial = spatial + strip(x_init)
        return self.conv(x * self.conv(spatial))


ATTENTION.register("cpca", CPCA, paper="Channel Prior Convolutional Attention (CPCA, 2023)",
                   url="https://arxiv.org/abs/2306.05196")
