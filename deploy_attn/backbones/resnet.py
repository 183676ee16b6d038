"""Deep Residual Learning (He et al., CVPR 2016), with attention after the last BN of the
residual branch and before the add, as SENet, CBAM and ECA-Net place it.
https://arxiv.org/abs/1512.03385

``resnet18_cbam`` is seed 001's BasicBlock (``ca(out) * out`` then ``sa(out) * out``: our
``cbam`` module applies channel then spatial attention the same way); ``resnet50_se`` with
reduction 16 and biased FC layers is the SENet paper's SE-ResNet-50 (28.09M parameters).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import damp_residual, kaiming_init, make_attention, register_backbone


def _downsample(inp: int, oup: int, stride: int) -> nn.Module | None:
    if stride == 1 and inp == oup:
        return None
    return nn.Sequential(nn.Conv2d(inp, oup, 1, stride, bias=False), nn.BatchNorm2d(oup))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, attn: str | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = make_attention(attn, planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, attn: str | None = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on the 3x3
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.attn = make_attention(attn, planes * 4)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attn(self.bn3(self.conv3(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 1000,
                 in_channels: int = 3, attn: str | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(inplanes, planes, stride, attn))
                inplanes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        kaiming_init(self)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                damp_residual(m.bn3 if isinstance(m, Bottleneck) else m.bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def attention_sites(expansion: int, input_size=(224, 224)):
    size = (input_size[0] // 4, input_size[1] // 4)
    sites = []
    for i, planes in enumerate((64, 128, 256, 512)):
        if i:
            size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
        sites.append((planes * expansion, size))
    return sites


register_backbone("resnet18", resnet18, sites=attention_sites(1), paper="ResNet-18 (CVPR 2016)",
                  url="https://arxiv.org/abs/1512.03385")
register_backbone("resnet50", resnet50, sites=attention_sites(4), paper="ResNet-50 (CVPR 2016)",
                  url="https://arxiv.org/abs/1512.03385")
