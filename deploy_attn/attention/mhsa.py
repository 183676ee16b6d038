"""Attention Is All You Need (Vaswani et al.; NeurIPS 2017): multi-head self-attention,
applied to the H*W positions of a feature map.
https://arxiv.org/abs/1706.03762
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.conv import require_divisible
from ..map_capture import MapSpec
from ..registry import ATTENTION
from ..swaps import deploy_twin


class MultiHeadSelfAttention(nn.Module):
    """Tokens are the H*W positions, embedding dim the channels: one qkv Linear, scaled
    dot-product attention per head, an output Linear, back to ``[N, C, H, W]``.

    As seed 004's MultiHeadSelfAttention (the same layer names, so its weights load);
    like it, the block returns the attention output without a residual connection.
    """

    attention_maps = {"attention": MapSpec("softmax", "rows")}  # [N, heads, HW, HW]

    def __init__(self, channels: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        require_divisible(channels, num_heads, "channels", "num_heads")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.qkv_proj = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.out_proj = nn.Linear(channels, channels)
        self.softmax = nn.Softmax(dim=-1)  # no parameters: a module so that it can be hooked

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(head_dim)) v on ``[N, heads, S, head_dim]`` tensors."""
        return self.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5) @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        qkv = self.qkv_proj(tokens).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, HW, head_dim)
        out = self.attend(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return self.out_proj(out).transpose(1, 2).reshape(b, c, h, w)


@deploy_twin(MultiHeadSelfAttention)
class MultiHeadSelfAttentionDeploy(MultiHeadSelfAttention):
    """the Linears as 1x1 convs on the feature map (no token transposes); q, k, v as 4-D
    reshapes of a channel split instead of one 5-D tensor; static reshapes, -1 batch"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]  # deploy: static at export; the batch is only ever -1
        # deploy: a Linear over the channels of each position is a 1x1 conv on the same
        # weights; 3-D MatMul + Add would also come back from onnxsim as Reshape-Gemm-Reshape
        qkv = F.conv2d(x, self.qkv_proj.weight[:, :, None, None], self.qkv_proj.bias)
        # deploy: Split on channels, each part one 4-D reshape (no 5-D tensor to slice)
        q, k, v = (t.reshape(-1, self.num_heads, self.head_dim, h * w).transpose(-2, -1)
                   for t in qkv.split(c, dim=1))
        out = self.attend(q, k, v).transpose(-2, -1).reshape(-1, c, h, w)
        return F.conv2d(out, self.out_proj.weight[:, :, None, None], self.out_proj.bias)


ATTENTION.register("mhsa", MultiHeadSelfAttention,
                   paper="Multi-head self-attention over feature-map positions "
                         "(Attention Is All You Need, NeurIPS 2017)",
                   url="https://arxiv.org/abs/1706.03762")
