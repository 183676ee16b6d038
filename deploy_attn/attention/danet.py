"""Dual Attention Network for Scene Segmentation (Fu, Liu, Tian, Li, Bao, Fang, Lu; CVPR 2019).
https://arxiv.org/abs/1809.02983
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.conv import require_divisible
from ..map_capture import MapSpec
from ..registry import ATTENTION
from ..swaps import deploy_twin


class PositionAttention(nn.Module):
    """PAM: self-attention over the H*W positions, ``gamma * out + x``.

    Query and key are 1x1 convs to ``channels // reduction`` (8 in the paper); ``gamma``
    starts at zero as in the paper, so the block starts as the identity.

    No deploy twin: the dynamo exporter turns ``view(b, ...)`` with the one dynamic dim
    into a constant ``-1`` target, so this forward already exports without Shape ops.
    """

    attention_maps = {"attention": MapSpec("softmax", "rows")}  # [N, HW, HW]

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        require_divisible(channels, reduction, "channels", "reduction")
        self.query_conv = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.key_conv = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        q = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)  # (B, HW, C')
        k = self.key_conv(x).view(b, -1, h * w)  # (B, C', HW)
        v = self.value_conv(x).view(b, -1, h * w)  # (B, C, HW)
        attn = self.softmax(torch.bmm(q, k))  # (B, HW, HW)
        out = torch.bmm(v, attn.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """CAM: self-attention between the C channel maps, ``gamma * out + x``.

    As in the paper's code the energy is turned around (``max - energy``) before the
    softmax. The seed unpacked ``b, c, w, h`` and viewed back as ``(b, c, h, w)``, which
    transposes the spatial layout of non-square inputs; this reads ``b, c, h, w``.
    """

    attention_maps = {"attention": MapSpec("softmax", "rows")}  # [N, C, C]

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        q = x.view(b, c, -1)  # (B, C, HW); also the value
        energy = torch.bmm(q, q.permute(0, 2, 1))  # (B, C, C)
        energy = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        out = torch.bmm(self.softmax(energy), q).view(b, c, h, w)
        return self.gamma * out + x


class DualAttention(nn.Module):
    """PAM(x) + CAM(x), as the seed's DualAttention.

    The paper's DANet head also wraps each branch in 3x3 conv-BN-ReLU layers before and
    after; those belong to the segmentation head, not to the attention block kept here.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.pam = PositionAttention(channels, reduction)
        self.cam = ChannelAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pam(x) + self.cam(x)


@deploy_twin(ChannelAttention)
class ChannelAttentionDeploy(ChannelAttention):
    """amax (ReduceMax) and broadcasting instead of max-with-indices and expand_as (which
    exports as Shape -> Expand); static reshapes with a -1 batch"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]  # deploy: static at export; the batch is only ever -1
        q = x.reshape(-1, c, h * w)
        energy = torch.bmm(q, q.transpose(1, 2))
        # deploy: expand_as needs the runtime shape (Shape -> Expand); broadcasting doesn't
        energy = energy.amax(-1, keepdim=True) - energy
        out = torch.bmm(self.softmax(energy), q).reshape(-1, c, h, w)
        return self.gamma * out + x


_PAPER = "Dual Attention Network for Scene Segmentation (CVPR 2019)"
_URL = "https://arxiv.org/abs/1809.02983"
ATTENTION.register("pam", PositionAttention, paper=_PAPER, url=_URL)
ATTENTION.register("cam", ChannelAttention, paper=_PAPER, url=_URL)
ATTENTION.register("danet", DualAttention, paper=_PAPER, url=_URL)
