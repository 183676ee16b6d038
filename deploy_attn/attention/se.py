"""Squeeze-and-Excitation Networks (Hu, Shen, Sun; CVPR 2018).
https://arxiv.org/abs/1709.01507
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.activations import create_act
from ..layers.conv import make_divisible
from ..map_capture import MapSpec
from ..registry import ATTENTION


class SqueezeExcite(nn.Module):
    """Global average pool -> FC (C -> C*rd_ratio) -> act -> FC -> gate, times the input.

    ``bias=True`` matches the SENet paper's parameter counts (SE-ResNet-50: 28.09M); the
    seed blog's copy drops the biases. ``rd_channels`` sets the hidden width directly
    (EfficientNet: the block's input channels / 4; MobileNetV3: expanded / 4 to 8s). No deploy twin: the dynamo exporter already turns
    ``view(b, ...)`` into constant reshapes with a dynamic batch (checked in test_export).
    """

    attention_maps = {"gate": MapSpec("fc", "channel")}

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 1,
                 bias: bool = True, act_layer: str = "relu", gate_layer: str = "sigmoid",
                 rd_channels: int | None = None) -> None:
        super().__init__()
        hidden = rd_channels or make_divisible(channels * rd_ratio, rd_divisor, min_value=1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=bias),
            create_act(act_layer),
            nn.Linear(hidden, channels, bias=bias),
            create_act(gate_layer),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        return x * self.fc(y).view(b, c, 1, 1)


ATTENTION.register("se", SqueezeExcite, paper="Squeeze-and-Excitation Networks (CVPR 2018)",
                   url="https://arxiv.org/abs/1709.01507")
