"""EMAX: Enhanced Multi-scale Attention with eXpressive learning (seed 003, a blog post;
no paper). It extends EMA: Efficient Multi-Scale Attention (ICASSP 2023).
https://arxiv.org/abs/2305.13563
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.conv import require
from ..map_capture import MapSpec
from ..registry import ATTENTION
from ..swaps import deploy_twin
from .ema import EMA


def _gate(channels: int, hidden: int) -> nn.Sequential:
    """SE-style gate: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(channels, hidden, kernel_size=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, kernel_size=1),
        nn.Sigmoid(),
    )


class EMAX(EMA):
    """EMA's spatial attention plus a gated SE channel branch and a global gate:
    ``f = EMA(x) + gamma * x * channel_gate(x)``, output ``f * global_attn(f)``.

    The seed's "dynamic grouping" fed the pooled input to ``group_controller`` (a Linear
    to ``factor`` logits), drew a group count per sample with ``torch.multinomial``,
    clamped it to ``[1, factor]`` and grouped by the batch's mode. That made eval outputs
    random, and the tracer froze whichever count it drew. It could not have worked for
    any other count: the GroupNorm and both convs are built for ``channels // factor``
    channels per group, so only ``groups == factor`` runs, and the draw (indices
    ``0 .. factor-1``) can never even yield ``factor``. Here the count is always
    ``factor``; ``group_controller`` stays, unused, so seed checkpoints load (the deploy
    form drops it). ``gamma`` starts at zero as in the seed.
    """

    attention_maps = {**EMA.attention_maps, "channel": MapSpec("channel_gate", "channel"),
                      "global": MapSpec("global_attn", "channel")}

    def __init__(self, channels: int, factor: int = 8, reduction: int = 16) -> None:
        super().__init__(channels, factor)
        hidden = channels // reduction if reduction > 0 else 0
        require(hidden >= 1,
                f"channels={channels} // reduction={reduction} must be at least 1 "
                "(the hidden width of the channel and global gates)")
        self.channel_gate = _gate(channels, hidden)
        self.group_controller = nn.Linear(channels, factor)  # seed checkpoints; unused
        self.gamma = nn.Parameter(torch.zeros(1))
        self.global_attn = _gate(channels, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.spatial(x) + self.gamma * (x * self.channel_gate(x))
        return fused * self.global_attn(fused)


@deploy_twin(EMAX)
class EMAXDeploy(EMAX):
    """drops the unused group_controller (the forward is unchanged)"""

    def on_deploy(self) -> None:
        del self.group_controller


ATTENTION.register("emax", EMAX,
                   paper="EMAX: EMA with dynamic grouping, channel and global gates "
                         "(blog post, seed 003; fixed group count)",
                   url="https://arxiv.org/abs/2305.13563")
