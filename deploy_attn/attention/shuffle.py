"""SA-Net: Shuffle Attention for Deep Convolutional Neural Networks (Zhang, Yang; ICASSP 2021).
https://arxiv.org/abs/2102.00240
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.activations import create_act
from ..layers.conv import require_divisible
from ..map_capture import MapSpec
from ..registry import ATTENTION
from ..swaps import deploy_twin


class ShuffleAttention(nn.Module):
    """Split the channels into ``groups``; in each group, half the channels get a channel
    gate (global mean -> per-channel affine -> gate) and half a spatial gate (GroupNorm ->
    per-channel affine -> gate); then a channel shuffle mixes the halves across groups.

    Parameter names follow the paper's code (``cweight``/``cbias``/``sweight``/``sbias``),
    zero/one-initialised as there. The seed's default of 64 groups needs channels
    divisible by 128; the default here, 8, suits 64 channels.
    """

    # one gate module, run on the channel half of every group, then on the spatial half
    attention_maps = {"channel": MapSpec("gate", "channel", 0),
                      "spatial": MapSpec("gate", "spatial", 1)}

    def __init__(self, channels: int, groups: int = 8, gate_layer: str = "sigmoid") -> None:
        super().__init__()
        require_divisible(channels, 2 * groups, "channels", "2 * groups")
        self.groups = groups
        half = channels // (2 * groups)  # channels in each half of a group
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)
        self.gate = create_act(gate_layer)

    def _attend(self, x_0: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
        """Channel gate on ``x_0``, spatial gate on ``x_1``, concatenated (per group)."""
        xc = x_0 * self.gate(self.cweight * self.avg_pool(x_0) + self.cbias)
        xs = x_1 * self.gate(self.sweight * self.gn(x_1) + self.sbias)
        return torch.cat([xc, xs], dim=1)

    @staticmethod
    def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b, groups, -1, h, w).permute(0, 2, 1, 3, 4)
        return x.reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        x_0, x_1 = x.reshape(b * self.groups, -1, h, w).chunk(2, dim=1)
        out = self._attend(x_0, x_1).reshape(b, -1, h, w)
        return self.channel_shuffle(out, 2)


@deploy_twin(ShuffleAttention)
class ShuffleAttentionDeploy(ShuffleAttention):
    """static reshapes with a -1 batch, split for chunk, 4-D channel shuffle for 5-D"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]  # deploy: static at export; the batch is only ever -1
        half = c // (2 * self.groups)
        # deploy: reshape(b * G, ...) needs the batch size as a value (Shape -> Mul)
        x_0, x_1 = x.reshape(-1, 2 * half, h, w).split(half, dim=1)
        out = self._attend(x_0, x_1).reshape(-1, 2, c // 2, h * w)
        # deploy: the shuffle as one 4-D transpose (TensorRT shuffles up to 8-D, but
        # 4-D keeps every tensor in the graph image-shaped)
        return out.transpose(1, 2).reshape(-1, c, h, w)


ATTENTION.register("sa", ShuffleAttention,
                   paper="SA-Net: Shuffle Attention for Deep CNNs (ICASSP 2021)",
                   url="https://arxiv.org/abs/2102.00240")
