"""MobileNeXt: Rethinking Bottleneck Structure for Efficient Mobile Network Design
(Zhou, Hou, Chen, Feng, Yan; ECCV 2020). https://arxiv.org/abs/2007.02269
Laid out as the official code (github:zhoudaquan/rethinking_bottleneck_design,
``mobilenext/codebase/models/mnext.py``): the same Sequential indices, so its
checkpoints load as they are; 3,535,416 parameters at width 1.0 (the official training
log's count, the paper's 3.5M).

The sandglass block: depthwise 3x3 + BN + ReLU6 on the wide input, 1x1 reduction + BN
(linear), 1x1 expansion + BN + ReLU6, depthwise 3x3 + BN (linear, carrying the stride),
and an identity shortcut over the wide tensors. Blocks that change the width at stride 1
drop both depthwise convs, at stride 2 the first one.

Attention goes where the Coordinate Attention authors put it in MobileNeXt: after the
first depthwise conv (+ BN + ReLU6), on the wide input ("adding the attention block after
the first depthwise 3x3 convolution works better", houqb/CoordAttention). The five blocks
without a first depthwise conv get none. No official MobileNeXt + CA code exists; with
CA's own configuration (reduction 32, at least 8 hidden) there the model has 3,971,626
parameters, not the CA table's 4.09M, which no placement consistent with the paper's
figure reproduces (README, "MobileNeXt").
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..layers.conv import ConvBNAct, make_divisible
from .common import damp_residual, kaiming_init, make_attention, register_backbone

# t (reduction ratio), c (output channels), n (repeats), s (first stride)
CONFIG = [(2, 96, 1, 2), (6, 144, 1, 1), (6, 192, 3, 2), (6, 288, 3, 2), (6, 384, 4, 1),
          (6, 576, 4, 2), (6, 960, 3, 1), (6, 1280, 1, 1)]


def _dw(channels: int, stride: int, act: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
              nn.BatchNorm2d(channels)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


def _pw(inp: int, oup: int, act: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(inp, oup, 1, bias=False), nn.BatchNorm2d(oup)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class SandGlass(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int, keep_3x3: bool = False,
                 attn: str | None = None) -> None:
        super().__init__()
        hidden = inp // t
        if hidden < oup / 6.0:
            hidden = make_divisible(math.ceil(oup / 6.0), 16)
        self.identity = False
        full = t == 2 or keep_3x3 or inp == oup
        if full:  # dw -> [attention] -> pw reduce -> pw expand -> dw
            first = _dw(inp, 1, act=True)
            if attn is not None:
                first.append(make_attention(attn, inp))
            layers = first + _pw(inp, hidden, act=False) + _pw(hidden, oup, act=True) + \
                _dw(oup, stride, act=False)
            self.identity = t != 2 and not keep_3x3 and inp == oup and stride == 1
        else:  # the width changes: pw reduce -> pw expand [-> dw with the stride]
            layers = _pw(inp, hidden, act=False) + _pw(hidden, oup, act=True)
            if stride == 2:
                layers += _dw(oup, 2, act=False)
        self.has_attention = full and attn is not None
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.identity else self.conv(x)


def _blocks(width_mult: float) -> tuple[list[tuple[int, int, int, int, bool]], int]:
    """(inp, oup, stride, t, keep_3x3) per block, and the stem width."""
    divisor = 4 if width_mult == 0.1 else 8
    inp = stem = make_divisible(32 * width_mult, divisor)
    blocks = []
    for t, c, n, s in CONFIG:
        oup = make_divisible(c * width_mult, divisor)
        if c == 1280 and width_mult < 1:
            oup = 1280
        for i in range(n):
            blocks.append((inp, oup, s if i == 0 else 1, t, n == 1 and s == 1 and i == 0))
            inp = oup
    return blocks, stem


class MobileNeXt(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 attn: str | None = None) -> None:
        super().__init__()
        blocks, stem = _blocks(width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, stem, 3, 2, act_layer="relu6")]
        layers += [SandGlass(i, o, s, t, keep, attn) for i, o, s, t, keep in blocks]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(blocks[-1][1], num_classes))
        kaiming_init(self)
        for block in self.features:
            if isinstance(block, SandGlass) and block.identity:
                damp_residual(block.conv[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))  # deploy: flatten, not view(b, -1)


def attention_sites(input_size=(224, 224), width_mult: float = 1.0):
    """(channels, size) where attention runs: the input of each block with a first
    depthwise conv."""
    blocks, _ = _blocks(width_mult)
    h, w = (input_size[0] + 1) // 2, (input_size[1] + 1) // 2  # stem stride 2
    sites = []
    for inp, oup, s, t, keep in blocks:
        if t == 2 or keep or inp == oup:
            sites.append((inp, (h, w)))
        h, w = (h + s - 1) // s, (w + s - 1) // s
    return sites


register_backbone("mobilenext", MobileNeXt, sites=attention_sites(),
                  paper="MobileNeXt (ECCV 2020), official-code layout",
                  url="https://arxiv.org/abs/2007.02269")
