"""Shared backbone plumbing: attention by registry name, and registering every
``{backbone}_{attention}`` combination whose constraints the backbone's widths satisfy."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..models import build
from ..registry import ATTENTION, BACKBONES

# Modules whose cost is quadratic in H*W (an HW x HW attention map): placed only where a
# backbone's feature map is small (the UNet bridge), not in every block.
GLOBAL_ATTENTION = frozenset({"pam", "danet", "nonlocal", "mhsa"})

Sites = Sequence[tuple[int, tuple[int, int]]]  # (channels, (h, w)) where attention sits


def make_attention(name: str | None, channels: int, **overrides: Any) -> nn.Module:
    """The attention module ``name`` (registry defaults) for ``channels``; Identity if None.
    ``overrides`` set the module's arguments it has (e.g. ``act_layer="silu"`` in
    EfficientNet); those it does not take are ignored."""
    if name is None:
        return nn.Identity()
    import inspect

    spec = ATTENTION.get(name)
    accepted = inspect.signature(spec.builder).parameters
    return build(spec, channels=channels,
                 **{k: v for k, v in overrides.items() if k in accepted})


def fits(attn: str, sites: Sites) -> bool:
    """Whether ``attn`` can be built at every site (channels and input size)."""
    spec = ATTENTION.get(attn)
    with torch.random.fork_rng(devices=[]):
        for channels, size in dict.fromkeys(sites):
            try:
                build(spec, channels=channels, input_size=size)
            except ConfigError:
                return False
    return True


def register_backbone(name: str, builder: Callable[..., nn.Module], *, sites: Sites,
                      paper: str, url: str = "", input_size: tuple[int, int] = (224, 224),
                      channels: int = 3, num_classes: int | None = 1000,
                      global_sites: Sites | None = None, **kwargs: Any) -> list[str]:
    """Register ``name`` (no attention) and ``name_<attn>`` for each attention module that
    fits ``sites``; modules in GLOBAL_ATTENTION only where the backbone gives them
    ``global_sites`` (small maps). Returns the registered names."""
    from .. import attention as _zoo  # noqa: F401  (fills ATTENTION)

    common = dict(paper=paper, url=url, input_size=input_size, channels=channels,
                  num_classes=num_classes)
    BACKBONES.register(name, builder, kwargs={**kwargs, "attn": None}, **common)
    names = [name]
    for attn in ATTENTION.names():
        where = global_sites if attn in GLOBAL_ATTENTION else sites
        if where is not None and fits(attn, where):
            full = f"{name}_{attn}"
            BACKBONES.register(full, builder, kwargs={**kwargs, "attn": attn}, **common)
            names.append(full)
    return names


RESIDUAL_GAMMA = 0.2


def damp_residual(bn: nn.BatchNorm2d, gamma: float = RESIDUAL_GAMMA) -> None:
    """Start the last BN of a residual branch small, as zero-init-residual training does
    (Goyal et al. 2017; torchvision's ``zero_init_residual``): trained residual networks
    keep branches small, and a generated network whose branches are not amplifies
    rounding error through depth far beyond what a trained one does."""
    nn.init.constant_(bn.weight, gamma)


def kaiming_init(model: nn.Module) -> None:
    """He init for convs, unit BN, small normal for classifiers (torchvision's scheme).

    Fan-out He init assumes many output channels; a conv with one output channel (a
    spatial logit map, e.g. GCNet's C -> 1 context conv) would get weights of std sqrt(2),
    softmax logits of std ~60 at 2048 channels and a near one-hot, chaotic attention, so
    those use fan-in."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            mode = "fan_in" if m.out_channels == 1 else "fan_out"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


