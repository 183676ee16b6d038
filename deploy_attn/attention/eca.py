"""ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks
(Wang, Wu, Zhu, Li, Zuo, Hu; CVPR 2020).
https://arxiv.org/abs/1910.03151
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.activations import create_act
from ..layers.conv import require
from ..map_capture import MapSpec
from ..registry import ATTENTION
from ..swaps import deploy_twin


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """The paper's adaptive kernel size: the odd number nearest |log2(C) / gamma + b / gamma|
    (rounding down, then up to odd, as the authors' code does)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class EfficientChannelAttention(nn.Module):
    """Global average pool, a 1-D conv of size k across neighbouring channels (no
    dimensionality reduction), then a gate that multiplies the input.

    ``k_size`` defaults to the paper's adaptive ``eca_kernel_size(channels, gamma, b)``.
    """

    attention_maps = {"gate": MapSpec("gate", "channel")}

    def __init__(self, channels: int, k_size: int | None = None, gamma: float = 2,
                 b: float = 1, gate_layer: str = "sigmoid") -> None:
        super().__init__()
        k = eca_kernel_size(channels, gamma, b) if k_size is None else k_size
        require(k > 0 and k % 2 == 1, f"k_size={k} must be a positive odd number")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.gate = create_act(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x)  # [N, C, 1, 1]
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * self.gate(y).expand_as(x)  # deploy: expand_as reads x's shape (Shape op)


@deploy_twin(EfficientChannelAttention)
class EfficientChannelAttentionDeploy(EfficientChannelAttention):
    """4-D and static: the 1-D conv as a (k, 1) Conv2d over [N, 1, C, 1], no expand_as"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        y = self.avg_pool(x).reshape(-1, 1, c, 1)
        # deploy: the Conv1d weight [1, 1, k] as a [1, 1, k, 1] kernel, so every tensor
        # stays 4-D; -1 keeps the batch out of the reshape targets.
        k = self.conv.kernel_size[0]
        y = F.conv2d(y, self.conv.weight.unsqueeze(-1), padding=((k - 1) // 2, 0))
        return x * self.gate(y.reshape(-1, c, 1, 1))


ATTENTION.register("eca", EfficientChannelAttention,
                   paper="ECA-Net: Efficient Channel Attention (CVPR 2020)",
                   url="https://arxiv.org/abs/1910.03151")
