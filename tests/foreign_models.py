"""Modules written in other people's key layouts, for the checkpoint-layout and
model-source tests (torchvision and timm cannot be installed beside the CPU torch here).

Each follows the public original's structure and attribute names, written anew for
these tests; they compute the same functions as deploy-attn's registry models:

* ``OfficialMBV2CA``: github:houqb/CoordAttention ``mbv2_ca.py`` (flat Sequentials, the CA
  gates as ``conv2``/``conv3``, ``expand`` before the product, ``view(x.size(0), -1)``);
* ``TorchvisionMobileNetV2``: torchvision ``models/mobilenetv2.py``;
* ``TimmSEResNet50`` / ``TimmECAResNet18``: timm ``ResNet`` blocks with ``layers/
  squeeze_excite.py``'s ``SEModule`` (1x1 convs) and ``layers/eca.py``'s ``EcaModule``
  under the attribute ``se``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MBV2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn_relu6(inp: int, oup: int, k: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(nn.Conv2d(inp, oup, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


# --- github:houqb/CoordAttention mbv2_ca.py layout --------------------------------------------
class HSigmoidOfficial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU6(inplace=True)

    def forward(self, x):
        return self.relu(x + 3) / 6


class HSwishOfficial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sigmoid = HSigmoidOfficial()

    def forward(self, x):
        return x * self.sigmoid(x)


class CoordAttOfficial(nn.Module):
    def __init__(self, inp: int, oup: int, groups: int = 32) -> None:
        super().__init__()
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        mip = max(8, inp // groups)
        self.conv1 = nn.Conv2d(inp, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv2 = nn.Conv2d(mip, oup, 1)  # the H gate
        self.conv3 = nn.Conv2d(mip, oup, 1)  # the W gate
        self.relu = HSwishOfficial()

    def forward(self, x):
        _, _, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = self.relu(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv2(x_h).sigmoid().expand(-1, -1, h, w)
        a_w = self.conv3(x_w.permute(0, 1, 3, 2)).sigmoid().expand(-1, -1, h, w)
        return x * a_w * a_h


class InvertedResidualOfficial(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = round(inp * t)
        self.identity = stride == 1 and inp == oup
        dw = [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
              nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        pw_linear = [nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        if t == 1:
            self.conv = nn.Sequential(*dw, *pw_linear)
        else:
            self.conv = nn.Sequential(nn.Conv2d(inp, hidden, 1, bias=False),
                                      nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True), *dw,
                                      CoordAttOfficial(hidden, hidden), *pw_linear)

    def forward(self, x):
        return x + self.conv(x) if self.identity else self.conv(x)


class OfficialMBV2CA(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers, inp = [conv_bn_relu6(3, 32, 3, 2)], 32
        for t, c, n, s in MBV2_SETTING:
            for i in range(n):
                layers.append(InvertedResidualOfficial(inp, c, s if i == 0 else 1, t))
                inp = c
        self.features = nn.Sequential(*layers)
        self.conv = conv_bn_relu6(inp, 1280, 1)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.avgpool(self.conv(self.features(x)))
        return self.classifier(x.view(x.size(0), -1))


# --- torchvision mobilenet_v2 layout -------------------------------------------------------------
class InvertedResidualTorchvision(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = int(round(inp * t))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [conv_bn_relu6(inp, hidden, 1)] if t != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchvisionMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        features, inp = [conv_bn_relu6(3, 32, 3, 2)], 32
        for t, c, n, s in MBV2_SETTING:
            for i in range(n):
                features.append(InvertedResidualTorchvision(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(conv_bn_relu6(inp, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --- timm ResNet blocks with SEModule / EcaModule ------------------------------------------------
def timm_make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


class TimmSEModule(nn.Module):
    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 8) -> None:
        super().__init__()
        rd = timm_make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.bn = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        s = self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * self.gate(s)


class TimmEcaModule(nn.Module):
    def __init__(self, channels: int, gamma: float = 2, beta: float = 1) -> None:
        super().__init__()
        t = int(abs(math.log(channels, 2) + beta) / gamma)
        k = max(t if t % 2 else t + 1, 3)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y).view(x.shape[0], -1, 1, 1).sigmoid()
        return x * y.expand_as(x)


def _downsample(inp: int, oup: int, stride: int) -> nn.Module | None:
    if stride == 1 and inp == oup:
        return None
    return nn.Sequential(nn.Conv2d(inp, oup, 1, stride, bias=False), nn.BatchNorm2d(oup))


class TimmBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, attn) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = attn(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x):
        out = self.se(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        return self.act2(out + (x if self.downsample is None else self.downsample(x)))


class TimmBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, attn) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.se = attn(planes * 4)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.act3(out + (x if self.downsample is None else self.downsample(x)))


class TimmResNet(nn.Module):
    def __init__(self, block, layers, attn, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(inplanes, planes, 2 if i and not j else 1, attn))
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def TimmSEResNet50(num_classes: int = 1000) -> TimmResNet:  # noqa: N802 (timm's name)
    return TimmResNet(TimmBottleneck, [3, 4, 6, 3], TimmSEModule, num_classes)


def TimmECAResNet18(num_classes: int = 1000) -> TimmResNet:  # noqa: N802
    return TimmResNet(TimmBasicBlock, [2, 2, 2, 2], TimmEcaModule, num_classes)


# --- a user's own module (the Python-object source) ---------------------------------
class SmallNet(nn.Module):
    """A small classifier with an SE-style gate written by hand."""

    def __init__(self, width: int = 16, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1), nn.Sigmoid())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x * self.gate(x)
        return self.head(x.mean((2, 3)))


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded weights and BatchNorm statistics away from their identity init, so a key
    mapped onto the wrong tensor changes the output."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight")) or ".1.weight" in name:
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * (0.5 / max(1, t[0].numel()) ** 0.5))
    return model.eval()


class TinySegmenter(nn.Module):
    """Per-pixel class logits at the input's size (a user's segmentation model)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        return self.head(self.body(x))


class TorchvisionSqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation``: 1x1 convs ``fc1``/``fc2`` with bias."""

    def __init__(self, channels: int, squeeze: int, activation, gate) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = activation, gate

    def forward(self, x):
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


def torchvision_layout(model: nn.Module) -> nn.Module:
    """``model`` (deploy-attn's EfficientNet-B0 or MobileNetV3, laid out as torchvision's)
    with every SE swapped for torchvision's conv-based SqueezeExcitation holding the same
    weights: a model in torchvision's exact key layout that computes the same function."""
    import copy

    from deploy_attn.attention.se import SqueezeExcite

    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SqueezeExcite):
                fc1, fc2 = child.fc[0], child.fc[2]
                se = TorchvisionSqueezeExcitation(fc1.in_features, fc1.out_features,
                                                  child.fc[1], child.fc[3])
                with torch.no_grad():
                    se.fc1.weight.copy_(fc1.weight[:, :, None, None])
                    se.fc1.bias.copy_(fc1.bias)
                    se.fc2.weight.copy_(fc2.weight[:, :, None, None])
                    se.fc2.bias.copy_(fc2.bias)
                setattr(module, name, se)
    return model.eval()
