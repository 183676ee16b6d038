"""BAM: Bottleneck Attention Module (Park, Woo, Lee, Kweon; BMVC 2018).
https://arxiv.org/abs/1807.06514
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.activations import create_act
from ..layers.conv import ConvBNAct, reduced_width
from ..map_capture import MapSpec
from ..registry import ATTENTION


class BAM(nn.Module):
    """A channel map ``Mc`` ([N, C, 1, 1]) and a spatial map ``Ms`` ([N, 1, H, W]) computed
    in parallel, broadcast-added: ``x * (1 + sigmoid(Mc + Ms))``.

    Channel branch: global average pool -> MLP (C -> C/r, BN, ReLU -> C), written as 1x1
    convs on the pooled [N, C, 1, 1] tensor (the same function as Linear + BatchNorm1d,
    without flatten / unsqueeze). Spatial branch: 1x1 reduce to C/r, two 3x3 convs with
    dilation 4, each with BN + ReLU, then a 1x1 conv to one map. Layer layout as in the
    authors' code; the fusion is the paper's sum (Eq. 2, best in its Table 2), where the
    authors' released code multiplies ``Mc * Ms``.

    Seed 004's BAM is a simplification: a bias-free MLP without BN, a CBAM-like spatial
    gate (mean + max over channels -> 7x7 conv -> BN) and ``x * sigmoid(...)`` without the
    residual ``1 +``.
    """

    attention_maps = {"map": MapSpec("gate", "spatial")}  # sigmoid(Mc + Ms), [N, C, H, W]

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4,
                 num_dilated: int = 2, min_hidden: int = 1, act_layer: str = "relu",
                 gate_layer: str = "sigmoid") -> None:
        super().__init__()
        hidden = reduced_width(channels, reduction, min_hidden)
        # deploy: the shared table swaps this pool for ReduceMean.
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.channel_gate = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.BatchNorm2d(hidden),
            create_act(act_layer),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.spatial_gate = nn.Sequential(
            ConvBNAct(channels, hidden, 1, act_layer=act_layer),
            *[ConvBNAct(hidden, hidden, 3, dilation=dilation, act_layer=act_layer)
              for _ in range(num_dilated)],
            nn.Conv2d(hidden, 1, kernel_size=1),
        )
        self.gate = create_act(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.channel_gate(self.avg_pool(x)) + self.spatial_gate(x)
        return x * (1.0 + self.gate(attn))


ATTENTION.register("bam", BAM, paper="BAM: Bottleneck Attention Module (BMVC 2018)",
                   url="https://arxiv.org/abs/1807.06514")
