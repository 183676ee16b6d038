"""Small shared conv blocks and argument checks."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..core.errors import ConfigError
from .activations import create_act


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going more than 10 % below it
    (the rule MobileNetV2 and the Coordinate Attention code use for widths)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def require(condition: bool, message: str) -> None:
    """Raise a ConfigError naming the constraint when a constructor argument cannot work."""
    if not condition:
        raise ConfigError(message)


def require_divisible(value: int, divisor: int, what: str, by: str) -> None:
    require(divisor > 0 and value % divisor == 0,
            f"{what}={value} must be divisible by {by}={divisor}")


def reduced_width(channels: int, reduction: int, min_hidden: int = 1) -> int:
    """Hidden width of a bottleneck MLP: ``max(min_hidden, channels // reduction)``, never
    0 (seed CPCA's ``in_chans // 16`` is 0 below 16 channels)."""
    require(reduction > 0, f"reduction={reduction} must be positive")
    return max(1, min_hidden, channels // reduction)


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, groups: int = 1, dilation: int = 1,
                 act_layer: str | Callable[[], nn.Module] = "relu", norm_eps: float = 1e-5,
                 norm_momentum: float = 0.1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                      dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=norm_eps, momentum=norm_momentum),
            create_act(act_layer),
        )
