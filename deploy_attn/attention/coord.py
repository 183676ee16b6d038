"""Coordinate Attention for Efficient Mobile Network Design (Hou, Zhou, Feng; CVPR 2021).
https://arxiv.org/abs/2103.02907
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.activations import create_act
from ..layers.conv import reduced_width
from ..map_capture import MapSpec
from ..registry import ATTENTION


class CoordAtt(nn.Module):
    """Pool along H and along W, a shared 1x1 conv + BN + h_swish on the concatenation,
    then one sigmoid gate per direction: ``x * a_w * a_h``.

    As in the paper's code (and seed 002): hidden width ``max(8, C // reduction)``, h_swish
    written as ``x * ReLU6(x + 3) / 6``, adaptive pools with ``(None, 1)`` / ``(1, None)``.
    ``out_channels`` defaults to ``channels`` (the gate multiplies the input). The two
    gates are modules (``gate_h``, ``gate_w``; no parameters), so their maps can be hooked.
    """

    attention_maps = {"a_h": MapSpec("gate_h", "axis"), "a_w": MapSpec("gate_w", "axis")}

    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8,
                 act_layer: str = "hard_swish", gate_layer: str = "sigmoid") -> None:
        super().__init__()
        hidden = reduced_width(channels, reduction, min_hidden)
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act = create_act(act_layer)
        self.conv_h = nn.Conv2d(hidden, channels, kernel_size=1)
        self.conv_w = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate_h = create_act(gate_layer)
        self.gate_w = create_act(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_h = self.gate_h(self.conv_h(x_h))
        a_w = self.gate_w(self.conv_w(x_w.permute(0, 1, 3, 2)))
        return x * a_w * a_h


ATTENTION.register("ca", CoordAtt, paper="Coordinate Attention (CVPR 2021)",
                   url="https://arxiv.org/abs/2103.02907")
