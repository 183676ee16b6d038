"""GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond
(Cao, Xu, Lin, Wei, Hu; ICCV Workshops 2019).
https://arxiv.org/abs/1904.11492
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.activations import create_act
from ..layers.conv import make_divisible
from ..map_capture import MapSpec
from ..registry import ATTENTION
from ..swaps import deploy_twin


class GlobalContext(nn.Module):
    """Global context block: ``x + transform(context(x))``.

    Context modelling: a 1x1 conv to one map, softmax over the H*W positions, and the
    softmax-weighted sum of ``x`` ([N, C, 1, 1]), one query-independent attention map
    shared by all positions (the paper's simplified non-local block). Transform: 1x1
    conv to ``C * rd_ratio`` -> LayerNorm([hidden, 1, 1]) -> ReLU -> 1x1 conv to C (the
    LayerNorm eases the optimisation of the bottleneck). Fusion: broadcast addition.
    """

    attention_maps = {"context": MapSpec("mask_softmax", "rows")}  # [N, 1, HW]

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 1,
                 act_layer: str = "relu") -> None:
        super().__init__()
        hidden = make_divisible(channels * rd_ratio, rd_divisor, min_value=1)
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.mask_softmax = nn.Softmax(dim=-1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            create_act(act_layer),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Attention pooling: [N, C, H, W] -> [N, C, 1, 1]."""
        n, c, h, w = x.size()
        mask = self.mask_softmax(self.conv_mask(x).view(n, 1, h * w))  # [N, 1, HW]
        ctx = torch.matmul(x.view(n, 1, c, h * w), mask.view(n, 1, h * w, 1))  # [N, 1, C, 1]
        return ctx.view(n, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.transform(self.context(x))


@deploy_twin(GlobalContext)
class GlobalContextDeploy(GlobalContext):
    def on_deploy(self) -> None:
        self.mask_softmax = nn.Softmax(dim=1)  # the same weights, laid out [N, HW, 1]

    """static reshapes: reshape(-1, C, H*W) and a 3-D matmul instead of view(n, ...)"""

    def context(self, x: torch.Tensor) -> torch.Tensor:
        # deploy: C, H, W are static at export; the batch is -1, so no Shape ops.
        c, hw = x.shape[1], x.shape[2] * x.shape[3]
        mask = self.mask_softmax(self.conv_mask(x).reshape(-1, hw, 1))  # [N, HW, 1]
        return torch.matmul(x.reshape(-1, c, hw), mask).reshape(-1, c, 1, 1)


ATTENTION.register("gc", GlobalContext,
                   paper="GCNet: Non-local Networks Meet Squeeze-Excitation Networks (ICCVW 2019)",
                   url="https://arxiv.org/abs/1904.11492")
