"""Non-local Neural Networks (Wang, Girshick, Gupta, He; CVPR 2018).
https://arxiv.org/abs/1711.07971
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.conv import require
from ..map_capture import MapSpec
from ..registry import ATTENTION


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block: ``z = BN(W(softmax(theta(x)^T phi(x)) g(x))) + x``.

    theta, phi, g are 1x1 convs to ``channels // reduction`` (C/2 in the paper); W is a
    1x1 conv back to ``channels`` followed by BN whose scale starts at zero (paper, sec.
    4.1), so the block starts as the identity. Attribute names follow seed 004.

    No deploy twin: every reshape has one dynamic dim (the batch), which the dynamo
    exporter writes as a constant ``-1`` target, so this exports without Shape ops.
    """

    attention_maps = {"attention": MapSpec("softmax", "rows")}  # [N, HW, HW]

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        inter = channels // reduction
        require(reduction > 0 and inter >= 1,
                f"channels={channels} // reduction={reduction} must be at least 1")
        self.inter_channels = inter
        self.g = nn.Conv2d(channels, inter, kernel_size=1)
        self.theta = nn.Conv2d(channels, inter, kernel_size=1)
        self.phi = nn.Conv2d(channels, inter, kernel_size=1)
        self.W = nn.Conv2d(inter, channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)
        self.softmax = nn.Softmax(dim=-1)  # no parameters: a module so that it can be hooked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.size()
        g_x = self.g(x).view(b, self.inter_channels, -1).permute(0, 2, 1)  # (B, HW, C')
        theta_x = self.theta(x).view(b, self.inter_channels, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(b, self.inter_channels, -1)  # (B, C', HW)
        attn = self.softmax(torch.matmul(theta_x, phi_x))  # (B, HW, HW)
        y = torch.matmul(attn, g_x).permute(0, 2, 1).reshape(b, self.inter_channels, h, w)
        return self.bn(self.W(y)) + x


ATTENTION.register("nonlocal", NonLocal2d, paper="Non-local Neural Networks (CVPR 2018)",
                   url="https://arxiv.org/abs/1711.07971")
