"""GroupNorm in a form TensorRT imports without shape arithmetic.

# deploy: ``nn.GroupNorm`` exports through the dynamo exporter as Reshape +
# InstanceNormalization with a reshape target computed by ``Shape`` when the batch is
# dynamic. ONNX's own GroupNormalization is no better a target: opset 18 defines its
# scale/bias per *group* (PyTorch's are per channel; the op was redefined in opset 21),
# so it would need the same Mul/Add anyway and a high opset. The decomposition here is
# Reshape(-1, G, K) -> InstanceNormalization -> Reshape(-1, C, *spatial) -> Mul -> Add
# with constant targets: InstanceNormalization is supported by TensorRT and ONNX Runtime
# at every opset we export, and it is the same function (biased variance, same eps).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GroupNormDeploy(nn.GroupNorm):
    """nn.GroupNorm with a static-reshape, InstanceNormalization forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])  # deploy: static at export time (fixed input size)
        k = (self.num_channels // self.num_groups) * int(torch.Size(spatial).numel())
        y = F.instance_norm(x.reshape(-1, self.num_groups, k), eps=self.eps)
        y = y.reshape((-1, self.num_channels) + spatial)
        if self.affine:
            shape = (1, self.num_channels) + (1,) * len(spatial)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y
