"""U-Net: Convolutional Networks for Biomedical Image Segmentation (Ronneberger et al.,
MICCAI 2015), small, for 1-channel CT slices as seed 004 describes: attention after each
encoder block, at the bridge and after each decoder fusion. https://arxiv.org/abs/1505.04597

Modules whose cost is quadratic in H*W (PAM, DANet, Non-local, MHSA) sit at the bridge only,
where the map is 1/16 of the input. The output is per-pixel class logits [N, K, H, W].
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.conv import ConvBNAct, require
from .common import GLOBAL_ATTENTION, kaiming_init, make_attention, register_backbone

WIDTHS = (16, 32, 64, 128)
BRIDGE = 256


class DoubleConv(nn.Sequential):
    def __init__(self, inp: int, oup: int, attn: str | None = None) -> None:
        super().__init__(ConvBNAct(inp, oup, 3), ConvBNAct(oup, oup, 3), make_attention(attn, oup))


class UNet(nn.Module):
    def __init__(self, num_classes: int = 2, in_channels: int = 1, attn: str | None = None,
                 widths: tuple[int, ...] = WIDTHS, bridge: int = BRIDGE) -> None:
        super().__init__()
        local = None if attn in GLOBAL_ATTENTION else attn
        self.encoders = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.encoders.append(DoubleConv(c, w, local))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bridge = DoubleConv(c, bridge, attn)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        c = bridge
        for w in reversed(widths):
            self.ups.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.decoders.append(DoubleConv(2 * w, w, local))
            c = w
        self.head = nn.Conv2d(c, num_classes, 1)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)

    def check_input(self, h: int, w: int) -> None:
        k = 2 ** len(self.encoders)
        require(h % k == 0 and w % k == 0, f"UNet input {h}x{w} must be a multiple of {k}")


def attention_sites(input_size=(128, 128)):
    h, w = input_size
    bridge = [(BRIDGE, (h >> len(WIDTHS), w >> len(WIDTHS)))]
    return [(c, (h >> i, w >> i)) for i, c in enumerate(WIDTHS)] + bridge, bridge


_SITES, _BRIDGE_SITES = attention_sites()


register_backbone("unet", UNet, sites=_SITES, global_sites=_BRIDGE_SITES,
                  paper="U-Net (MICCAI 2015), small", url="https://arxiv.org/abs/1505.04597",
                  input_size=(128, 128), channels=1, num_classes=None)
