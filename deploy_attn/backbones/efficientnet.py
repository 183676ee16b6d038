"""EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks (Tan, Le;
ICML 2019), B0. https://arxiv.org/abs/1905.11946

Laid out as torchvision's ``efficientnet_b0`` (the same module paths, 5,288,548
parameters): MBConv blocks of a 1x1 expansion (all but the first stage), a depthwise
k x k conv, squeeze-and-excitation and a linear 1x1 projection, SiLU throughout; the SE
squeezes to a quarter of the block's *input* channels, as the paper does. A torchvision
state_dict loads through the SqueezeExcitation layout mapping (its fc1/fc2 are 1x1 convs,
ours Linear layers: the same weights).

``efficientnet_b0_<attention>`` replaces each block's SE by that module, on the expanded
channels, with SiLU as its activation where the module takes one (``act_layer``), as
EfficientNet does; modules without an activation argument keep their own.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..attention.se import SqueezeExcite
from ..layers.conv import ConvBNAct, make_divisible
from .common import damp_residual, kaiming_init, make_attention, register_backbone

# expand ratio, kernel, stride, input channels, output channels, layers (torchvision B0)
STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
          (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
          (6, 3, 1, 192, 320, 1)]
ACT = "silu"


class MBConv(nn.Module):
    def __init__(self, inp: int, oup: int, expand: int, kernel: int, stride: int,
                 attn: str | None = None) -> None:
        super().__init__()
        hidden = make_divisible(inp * expand, 8)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if hidden != inp:
            layers.append(ConvBNAct(inp, hidden, 1, act_layer=ACT))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act_layer=ACT))
        if attn is None:  # the paper's SE: squeeze to a quarter of the block's input
            layers.append(SqueezeExcite(hidden, rd_channels=max(1, inp // 4), act_layer=ACT))
        else:
            layers.append(make_attention(attn, hidden, act_layer=ACT))
        layers.append(ConvBNAct(hidden, oup, 1, act_layer="identity"))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # stochastic depth is training-only: the identity at inference
        return x + self.block(x) if self.use_res_connect else self.block(x)


class EfficientNetB0(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3,
                 attn: str | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(in_channels, STAGES[0][3], 3, 2, act_layer=ACT)]
        for expand, kernel, stride, inp, oup, n in STAGES:
            layers.append(nn.Sequential(*[MBConv(inp if i == 0 else oup, oup, expand, kernel,
                                                 stride if i == 0 else 1, attn)
                                          for i in range(n)]))
        layers.append(ConvBNAct(STAGES[-1][4], 1280, 1, act_layer=ACT))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        kaiming_init(self)
        for m in self.modules():
            if isinstance(m, MBConv) and m.use_res_connect:
                damp_residual(m.block[-1][1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def attention_sites(input_size=(224, 224)):
    """(expanded channels, size after the depthwise conv) of every block: the SE sites."""
    h, w = (input_size[0] + 1) // 2, (input_size[1] + 1) // 2
    sites = []
    for expand, _, stride, inp, oup, n in STAGES:
        for i in range(n):
            s = stride if i == 0 else 1
            h, w = (h + s - 1) // s, (w + s - 1) // s
            sites.append((make_divisible((inp if i == 0 else oup) * expand, 8), (h, w)))
    return sites


register_backbone("efficientnet_b0", EfficientNetB0, sites=attention_sites(),
                  paper="EfficientNet-B0 (ICML 2019), torchvision layout",
                  url="https://arxiv.org/abs/1905.11946")
