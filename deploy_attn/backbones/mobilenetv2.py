"""MobileNetV2: Inverted Residuals and Linear Bottlenecks (Sandler et al., CVPR 2018),
laid out as in the Coordinate Attention paper's code (Hou et al., CVPR 2021):
https://arxiv.org/abs/1801.04381, https://arxiv.org/abs/2103.02907

Attention sits after the depthwise conv + BN + ReLU6 of every inverted-residual block with
expansion != 1, before the linear 1x1 projection.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.conv import ConvBNAct, make_divisible
from .common import damp_residual, kaiming_init, make_attention, register_backbone

# t (expansion), c (output channels), n (repeats), s (first stride)
CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int,
                 attn: str | None = None) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.identity = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, 1, act_layer="relu6"))
        layers.append(ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act_layer="relu6"))
        if expand_ratio != 1:
            layers.append(make_attention(attn, hidden))
        layers += [nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.identity else self.conv(x)


def _blocks(width_mult: float):
    """(inp, oup, stride, t) per block, and the last feature width."""
    divisor = 4 if width_mult == 0.1 else 8
    inp = make_divisible(32 * width_mult, divisor)
    blocks = []
    for t, c, n, s in CONFIG:
        oup = make_divisible(c * width_mult, divisor)
        for i in range(n):
            blocks.append((inp, oup, s if i == 0 else 1, t))
            inp = oup
    return blocks, inp


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 attn: str | None = None) -> None:
        super().__init__()
        blocks, last = _blocks(width_mult)
        divisor = 4 if width_mult == 0.1 else 8
        stem = blocks[0][0]  # the first block's input width
        layers: list[nn.Module] = [ConvBNAct(in_channels, stem, 3, 2, act_layer="relu6")]
        layers += [InvertedResidual(i, o, s, t, attn) for i, o, s, t in blocks]
        self.features = nn.Sequential(*layers)
        out = make_divisible(1280 * width_mult, divisor) if width_mult > 1.0 else 1280
        self.conv = ConvBNAct(last, out, 1, act_layer="relu6")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(out, num_classes)
        kaiming_init(self)
        for block in self.features:
            if isinstance(block, InvertedResidual) and block.identity:
                damp_residual(block.conv[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.conv(self.features(x)))
        return self.classifier(x.flatten(1))  # deploy: flatten, not view(b, -1)


def attention_sites(input_size=(224, 224), width_mult: float = 1.0):
    blocks, _ = _blocks(width_mult)
    h, w = (input_size[0] + 1) // 2, (input_size[1] + 1) // 2  # stem stride 2
    sites = []
    for inp, _, s, t in blocks:
        h, w = (h + s - 1) // s, (w + s - 1) // s
        if t != 1:
            sites.append((round(inp * t), (h, w)))
    return sites


register_backbone("mobilenetv2", MobileNetV2, sites=attention_sites(),
                  paper="MobileNetV2 (CVPR 2018), CA-paper layout",
                  url="https://arxiv.org/abs/1801.04381")
