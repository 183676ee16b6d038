"""SCSA: Exploring the Synergistic Effects Between Spatial and Channel Attention (Si, Xu,
Zhu, Li, Liu, Lu, Zhu; 2024).
https://arxiv.org/abs/2407.05128
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.activations import create_act
from ..layers.conv import require, require_divisible
from ..map_capture import MapSpec
from ..registry import ATTENTION


def _gate(name: str, softmax_dim: int) -> nn.Module:
    """The paper code's gates: 'softmax' over ``softmax_dim``, else an activation name."""
    return nn.Softmax(dim=softmax_dim) if name == "softmax" else create_act(name)


class SCSA(nn.Module):
    """SMSA then PCSA: a shared multi-semantic spatial attention (means along H and along
    W, four channel groups through depthwise 1-D convs of sizes 3/5/7/9, GroupNorm, gate)
    followed by a progressive channel-wise self-attention (down-sample by the window,
    GroupNorm, depthwise 1x1 q/k/v, attention between channels per head, mean, gate).

    Layer names follow the paper's code; its einops rearranges are plain reshapes here
    (with ``-1`` for the batch, so no deploy twin is needed), and its unused ``fuse_bn``
    argument is dropped. ``window_size=-1`` pools globally instead of by windows.
    """

    _DOWN_SAMPLE = ("avg_pool", "max_pool", "recombination")

    # the shared SMSA gate runs along H, then along W; then the PCSA channel gate
    attention_maps = {"h": MapSpec("sa_gate", "axis", 0), "w": MapSpec("sa_gate", "axis", 1),
                      "channel": MapSpec("ca_gate", "channel")}

    def __init__(self, channels: int, head_num: int = 8, window_size: int = 7,
                 group_kernel_sizes: Sequence[int] = (3, 5, 7, 9), qkv_bias: bool = False,
                 down_sample_mode: str = "avg_pool", attn_drop_ratio: float = 0.0,
                 gate_layer: str = "sigmoid") -> None:
        super().__init__()
        require(channels % 4 == 0,
                f"channels={channels} must be divisible by 4 (one group per 1-D kernel)")
        require_divisible(channels, head_num, "channels", "head_num")
        require(len(group_kernel_sizes) == 4 and all(k % 2 == 1 for k in group_kernel_sizes),
                f"group_kernel_sizes={tuple(group_kernel_sizes)} must be four odd sizes")
        require(down_sample_mode in self._DOWN_SAMPLE,
                f"unknown down_sample_mode '{down_sample_mode}'; "
                f"choose from {', '.join(self._DOWN_SAMPLE)}")
        require(window_size > 0 or window_size == -1,
                f"window_size={window_size} must be positive, or -1 for a global average pool")
        require(window_size != -1 or down_sample_mode == "avg_pool",
                f"window_size=-1 pools globally by average; it contradicts "
                f"down_sample_mode='{down_sample_mode}'")
        self.head_num = head_num
        self.head_dim = channels // head_num
        self.scaler = self.head_dim ** -0.5
        self.window_size = window_size
        self.down_sample_mode = down_sample_mode
        self.group_chans = gc = channels // 4

        # SMSA: depthwise 1-D convs, shared by the H and the W direction.
        k_l, k_s, k_m, k_g = group_kernel_sizes
        self.local_dwc = nn.Conv1d(gc, gc, k_l, padding=k_l // 2, groups=gc)
        self.global_dwc_s = nn.Conv1d(gc, gc, k_s, padding=k_s // 2, groups=gc)
        self.global_dwc_m = nn.Conv1d(gc, gc, k_m, padding=k_m // 2, groups=gc)
        self.global_dwc_l = nn.Conv1d(gc, gc, k_g, padding=k_g // 2, groups=gc)
        self.sa_gate = _gate(gate_layer, softmax_dim=2)
        self.norm_h = nn.GroupNorm(4, channels)
        self.norm_w = nn.GroupNorm(4, channels)

        # PCSA
        self.conv_d: nn.Module = nn.Identity()
        if window_size == -1:
            self.down_func: nn.Module = nn.AdaptiveAvgPool2d(1)
        elif down_sample_mode == "recombination":
            # space-to-channels (b c (h p) (w q) -> b (c p q) h w), then conv_d: run as
            # one conv on conv_d's weights, see _down_sample
            self.down_func = nn.Identity()
            self.conv_d = nn.Conv2d(channels * window_size ** 2, channels, 1, bias=False)
        elif down_sample_mode == "avg_pool":
            self.down_func = nn.AvgPool2d(window_size, stride=window_size)
        else:
            self.down_func = nn.MaxPool2d(window_size, stride=window_size)
        self.norm = nn.GroupNorm(1, channels)
        self.q = nn.Conv2d(channels, channels, 1, bias=qkv_bias, groups=channels)
        self.k = nn.Conv2d(channels, channels, 1, bias=qkv_bias, groups=channels)
        self.v = nn.Conv2d(channels, channels, 1, bias=qkv_bias, groups=channels)
        self.attn_drop = nn.Dropout(attn_drop_ratio)
        self.ca_gate = _gate(gate_layer, softmax_dim=1)

    def check_input(self, h: int, w: int) -> None:
        """The PCSA window must fit the input (and tile it, for 'recombination')."""
        if self.window_size == -1:
            return
        ws = self.window_size
        require(h >= ws and w >= ws,
                f"SCSA input {h}x{w} is smaller than its window_size={ws}; "
                f"use an input of at least {ws}x{ws} or a smaller window_size")
        if self.down_sample_mode == "recombination":
            require(h % ws == 0 and w % ws == 0,
                    f"SCSA 'recombination' needs H and W divisible by window_size={ws}, "
                    f"got {h}x{w}")

    def _directional(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """SMSA along one axis: ``[N, C, L]`` means -> per-group 1-D convs -> norm -> gate."""
        parts = torch.split(x, self.group_chans, dim=1)
        convs = (self.local_dwc, self.global_dwc_s, self.global_dwc_m, self.global_dwc_l)
        return self.sa_gate(norm(torch.cat([conv(p) for conv, p in zip(convs, parts)], dim=1)))

    def _down_sample(self, x: torch.Tensor) -> torch.Tensor:
        if self.down_sample_mode == "recombination":
            # deploy: space-to-channels then a 1x1 conv is one conv with kernel = stride =
            # window on the same weights, without the 6-D tensor pixel_unshuffle exports as
            weight = self.conv_d.weight
            ws = self.window_size
            return F.conv2d(x, weight.reshape(weight.shape[0], -1, ws, ws), stride=ws)
        return self.conv_d(self.down_func(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        # SMSA: (N, C, H, 1) and (N, C, 1, W) gates
        x_h_attn = self._directional(x.mean(dim=3), self.norm_h).unsqueeze(3)
        x_w_attn = self._directional(x.mean(dim=2), self.norm_w).unsqueeze(2)
        x = x * x_h_attn * x_w_attn

        # PCSA: attention between the channels of each head, over down-sampled positions
        y = self.norm(self._down_sample(x))
        # deploy: -1 for the batch; head_num, head_dim and the token count are static
        heads = (-1, self.head_num, self.head_dim, y.shape[2] * y.shape[3])
        q, k, v = self.q(y).reshape(heads), self.k(y).reshape(heads), self.v(y).reshape(heads)
        attn = self.attn_drop((q @ k.transpose(-2, -1) * self.scaler).softmax(dim=-1))
        # the mean over positions of (attn @ v), per channel: (N, C, 1, 1)
        attn = (attn @ v).mean(dim=-1).reshape(-1, c, 1, 1)
        return self.ca_gate(attn) * x


ATTENTION.register("scsa", SCSA,
                   paper="SCSA: Exploring the Synergistic Effects Between Spatial and "
                         "Channel Attention (2024)",
                   url="https://arxiv.org/abs/2407.05128")
