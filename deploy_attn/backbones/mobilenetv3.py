"""Searching for MobileNetV3 (Howard et al., ICCV 2019), Large and Small.
https://arxiv.org/abs/1905.02244

Laid out as torchvision's ``mobilenet_v3_large`` / ``mobilenet_v3_small`` (the same module
paths: 5,483,032 and 2,542,856 parameters; BatchNorm eps 0.001, momentum 0.01): inverted
residuals with hard-swish or ReLU, and squeeze-and-excitation with a hard-sigmoid gate
in the blocks the paper gives one (squeeze to a quarter of the expanded channels,
rounded to 8s). A torchvision state_dict loads through the SqueezeExcitation layout
mapping (fc1/fc2 are 1x1 convs there, Linear layers here).

``mobilenetv3_<size>_<attention>`` replaces the SE of those blocks by that module, on the
expanded channels (the module's own defaults).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..attention.se import SqueezeExcite
from ..layers.conv import ConvBNAct, make_divisible
from .common import damp_residual, kaiming_init, make_attention, register_backbone

BN = {"norm_eps": 1e-3, "norm_momentum": 0.01}
ACTS = {"RE": "relu", "HS": "hardswish"}
# input, kernel, expanded, output, SE, activation, stride (torchvision's tables)
LARGE = [(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
         (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
         (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
         (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
         (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
         (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
         (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
         (160, 5, 960, 160, True, "HS", 1)]
SMALL = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
         (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
         (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
         (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
         (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
         (96, 5, 576, 96, True, "HS", 1)]
HEAD = {"large": 1280, "small": 1024}


class InvertedResidualV3(nn.Module):
    def __init__(self, inp: int, kernel: int, hidden: int, oup: int, use_se: bool, act: str,
                 stride: int, attn: str | None = None) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if hidden != inp:
            layers.append(ConvBNAct(inp, hidden, 1, act_layer=ACTS[act], **BN))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden,
                                act_layer=ACTS[act], **BN))
        if use_se:
            layers.append(SqueezeExcite(hidden, rd_channels=make_divisible(hidden // 4, 8),
                                        gate_layer="hardsigmoid") if attn is None
                          else make_attention(attn, hidden))
        layers.append(ConvBNAct(hidden, oup, 1, act_layer="identity", **BN))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


class MobileNetV3(nn.Module):
    def __init__(self, size: str = "large", num_classes: int = 1000, in_channels: int = 3,
                 attn: str | None = None) -> None:
        super().__init__()
        table = {"large": LARGE, "small": SMALL}[size]
        layers: list[nn.Module] = [ConvBNAct(in_channels, table[0][0], 3, 2,
                                             act_layer="hardswish", **BN)]
        layers += [InvertedResidualV3(*row, attn=attn) for row in table]
        last = 6 * table[-1][3]
        layers.append(ConvBNAct(table[-1][3], last, 1, act_layer="hardswish", **BN))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last, HEAD[size]), nn.Hardswish(),
                                        nn.Dropout(0.2), nn.Linear(HEAD[size], num_classes))
        kaiming_init(self)
        for m in self.modules():
            if isinstance(m, InvertedResidualV3) and m.use_res_connect:
                damp_residual(m.block[-1][1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def mobilenetv3_large(**kwargs) -> MobileNetV3:
    return MobileNetV3("large", **kwargs)


def mobilenetv3_small(**kwargs) -> MobileNetV3:
    return MobileNetV3("small", **kwargs)


def attention_sites(size: str, input_size=(224, 224)):
    """(expanded channels, size after the depthwise conv) of the blocks with SE."""
    h, w = (input_size[0] + 1) // 2, (input_size[1] + 1) // 2
    sites = []
    for _, _, hidden, _, use_se, _, stride in {"large": LARGE, "small": SMALL}[size]:
        h, w = (h + stride - 1) // stride, (w + stride - 1) // stride
        if use_se:
            sites.append((hidden, (h, w)))
    return sites


for _size, _builder in (("large", mobilenetv3_large), ("small", mobilenetv3_small)):
    register_backbone(f"mobilenetv3_{_size}", _builder, sites=attention_sites(_size),
                      paper=f"MobileNetV3-{_size.capitalize()} (ICCV 2019), torchvision layout",
                      url="https://arxiv.org/abs/1905.02244")
