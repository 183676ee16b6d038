"""Selective Kernel Networks (Li, Wang, Hu, Yang; CVPR 2019).
https://arxiv.org/abs/1903.06586
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.conv import ConvBNAct, require, require_divisible
from ..map_capture import MapSpec
from ..registry import ATTENTION
from ..swaps import deploy_twin


class SelectiveKernel(nn.Module):
    """Split: ``num_branches`` grouped 3x3 convs (+BN+ReLU) with dilation 1, 2, ... (the
    paper's dilated 3x3 in place of 5x5). Fuse: sum -> global average pool -> 1x1 conv
    to ``d = max(C * rd_ratio, min_hidden)`` + BN + ReLU. Select: one 1x1 conv to
    ``num_branches * C`` logits (the paper's per-branch matrices A, B, ... stacked),
    softmax across branches, weighted sum of the branch outputs.

    Defaults are the paper's SK[M=2, G=32, r=16], L=32. Seed 001's copy prints inside
    ``forward``; this one does not.
    """

    attention_maps = {"selection": MapSpec("select", "branch")}  # [N, M, C, 1(, 1)]

    def __init__(self, channels: int, num_branches: int = 2, groups: int = 32,
                 rd_ratio: float = 1 / 16, min_hidden: int = 32,
                 act_layer: str = "relu") -> None:
        super().__init__()
        require(num_branches >= 1, f"num_branches={num_branches} must be at least 1")
        require_divisible(channels, groups, "channels", "groups")
        hidden = max(int(channels * rd_ratio), min_hidden, 1)
        self.channels = channels
        self.num_branches = num_branches
        self.convs = nn.ModuleList(
            ConvBNAct(channels, channels, 3, groups=groups, dilation=i + 1, act_layer=act_layer)
            for i in range(num_branches))
        # deploy: the shared table swaps this pool for ReduceMean.
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = ConvBNAct(channels, hidden, 1, act_layer=act_layer)
        self.fc_select = nn.Conv2d(hidden, channels * num_branches, kernel_size=1, bias=False)
        self.select = nn.Softmax(dim=1)  # over the branches; a module so that it can be hooked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([conv(x) for conv in self.convs], dim=1)  # [N, M, C, H, W]
        z = self.fc(self.avg_pool(feats.sum(dim=1)))
        attn = self.fc_select(z).view(x.size(0), self.num_branches, self.channels, 1, 1)
        return (feats * self.select(attn)).sum(dim=1)


@deploy_twin(SelectiveKernel)
class SelectiveKernelDeploy(SelectiveKernel):
    """4-D only: logits as [N, M, C, 1], softmax over dim 1, split; no x.size() batch"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [conv(x) for conv in self.convs]
        fused = feats[0]
        for f in feats[1:]:
            fused = fused + f
        z = self.fc(self.avg_pool(fused))
        # deploy: keep every tensor 4-D and the batch as -1 (no Shape ops).
        attn = self.select(self.fc_select(z).reshape(-1, self.num_branches, self.channels, 1))
        weights = attn.split(1, dim=1)
        out = feats[0] * weights[0].reshape(-1, self.channels, 1, 1)
        for f, w in zip(feats[1:], weights[1:]):
            out = out + f * w.reshape(-1, self.channels, 1, 1)
        return out


ATTENTION.register("sk", SelectiveKernel, paper="Selective Kernel Networks (CVPR 2019)",
                   url="https://arxiv.org/abs/1903.06586")
