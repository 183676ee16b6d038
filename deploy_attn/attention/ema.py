"""Efficient Multi-Scale Attention Module with Cross-Spatial Learning (Ouyang, He, Zhang,
Dong, Huang, Huang, Luo; ICASSP 2023).
https://arxiv.org/abs/2305.13563
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.conv import require_divisible
from ..map_capture import MapSpec
from ..registry import ATTENTION


class EMA(nn.Module):
    """Channels in ``factor`` groups; per group a 1x1 branch (coordinate-attention style
    pooling along H and W) and a 3x3 branch, each one's global descriptor attending over
    the other's spatial map (cross-spatial learning); the summed map gates the group.

    Layers and names follow the paper's code (adaptive pools, GroupNorm with one channel
    per group). Its default ``factor`` is 32 (for wide layers); 8 suits 64 channels.

    No deploy twin: the only batch-dependent reshapes (``b * factor`` and back) have one
    dynamic dim, which the dynamo exporter writes as a constant ``-1`` target; the pools
    and GroupNorm get the shared leaf rewrites.
    """

    # the spatial weights that gate each group, [N * factor, 1, H, W]
    attention_maps = {"weights": MapSpec("weight_gate", "spatial")}

    def __init__(self, channels: int, factor: int = 8) -> None:
        super().__init__()
        require_divisible(channels, factor, "channels", "factor")
        self.groups = factor
        cg = channels // factor  # channels per group
        self.softmax = nn.Softmax(dim=-1)
        self.agp = nn.AdaptiveAvgPool2d((1, 1))
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, kernel_size=1)
        self.conv3x3 = nn.Conv2d(cg, cg, kernel_size=3, padding=1)
        self.weight_gate = nn.Sigmoid()  # no parameters: a module so that it can be hooked

    def attend(self, group_x: torch.Tensor) -> torch.Tensor:
        """The attention on grouped features ``[B * factor, C / factor, H, W]``."""
        cg, h, w = group_x.shape[1:]
        x_h = self.pool_h(group_x)  # (BG, Cg, H, 1)
        x_w = self.pool_w(group_x).permute(0, 1, 3, 2)  # (BG, Cg, W, 1)
        x_h, x_w = torch.split(self.conv1x1(torch.cat([x_h, x_w], dim=2)), [h, w], dim=2)
        x1 = self.gn(group_x * x_h.sigmoid() * x_w.permute(0, 1, 3, 2).sigmoid())
        x2 = self.conv3x3(group_x)
        # deploy: -1 for the grouped batch; (BG, Cg, 1, 1) -> (BG, 1, Cg) is a reshape
        x11 = self.softmax(self.agp(x1).reshape(-1, 1, cg))
        x21 = self.softmax(self.agp(x2).reshape(-1, 1, cg))
        x12 = x2.reshape(-1, cg, h * w)
        x22 = x1.reshape(-1, cg, h * w)
        weights = (torch.matmul(x11, x12) + torch.matmul(x21, x22)).reshape(-1, 1, h, w)
        return group_x * self.weight_gate(weights)

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        """Group the channels, attend, ungroup: ``[N, C, H, W]`` in and out."""
        b, c, h, w = x.size()
        return self.attend(x.reshape(b * self.groups, -1, h, w)).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(x)


ATTENTION.register("ema", EMA,
                   paper="Efficient Multi-Scale Attention Module with Cross-Spatial Learning "
                         "(ICASSP 2023)",
                   url="https://arxiv.org/abs/2305.13563")
