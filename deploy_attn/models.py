"""``create_model``: a registry name -> a reference module with seeded, realistic weights."""
from __future__ import annotations

import contextlib
import zlib
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn

from .core.errors import ConfigError
from .registry import ModelSpec, get_spec


def _seed_for(name: str, seed: int) -> int:
    return (zlib.crc32(name.encode()) + seed) % (2**31)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's RNG seeded for the block and restored afterwards (the caller's RNG state is
    left as it was), so a module builds with the same weights in every process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def seeded_init(model: nn.Module, seed: int, bn_stats: bool = True) -> None:
    """Deterministic weights with ranges a trained network would have.

    PyTorch's default init leaves BatchNorm at identity statistics and zero-initialised
    residual scales (DANet's gamma, Shuffle Attention's weights) at zero; a parity check
    of a branch multiplied by zero proves nothing, so such constants get seeded noise, and
    with ``bn_stats`` so do BatchNorm statistics (backbones re-estimate theirs instead).
    """
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        flat = p.detach().flatten()
        if flat.numel() and bool((flat == flat[0]).all()):  # constant init (0, 1, a scale)
            noise = 0.25 * torch.randn(p.shape, generator=gen)
            p.add_(noise if flat[0] == 0 else p * noise)
    for m in model.modules() if bn_stats else ():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.uniform_(0.5, 1.5, generator=gen)


def create_model(name: str, *, channels: int | None = None,
                 input_size: tuple[int, int] | None = None, seed: int = 0,
                 **kwargs: Any) -> nn.Module:
    """The reference (paper-faithful) module for ``name``, in eval mode.

    The same name, arguments and seed always give the same weights, so an exported file
    can be checked later against a fresh ``create_model``. ``input_size`` is validated
    against the module's constraints (e.g. SCSA's window) when given.
    """
    spec = get_spec(name)
    seed = _seed_for(name, seed)
    with seeded(seed):
        model = build(spec, channels=channels, input_size=input_size, **kwargs)
    seeded_init(model, seed, bn_stats=spec.kind != "backbone")
    if spec.kind == "backbone":
        recalibrate_bn(model, spec.input_shape(8, channels, input_size), seed,
                       classifier=spec.num_classes is not None)
    return model.eval()


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm layer's running statistics by their cumulative mean over
    ``batches`` (forward passes in train mode), then restore each layer's own momentum
    and leave the model in eval mode; the number of BatchNorm layers (0: nothing run)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    return len(bns)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, shape: tuple[int, ...], seed: int, batches: int = 4,
                   classifier: bool = False) -> None:
    """Re-estimate BatchNorm statistics on seeded random batches, so a network with
    generated weights has activations in realistic ranges instead of vanishing or
    exploding through depth (parity on such a network would prove nothing)."""
    gen = torch.Generator().manual_seed(seed)
    calib = [torch.randn(shape, generator=gen) for _ in range(batches)]
    if not reestimate_bn(model, calib):
        return
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if classifier and head:
        _standardize_logits(model, head[-1], calib)


@torch.no_grad()
def _standardize_logits(model: nn.Module, head: nn.Linear, calib: list[torch.Tensor]) -> None:
    """Centre each class's logit over the calibration batches and scale all logits to unit
    spread, folded into the classifier: with generated weights the top-1 class then
    depends on the input (as in a trained network) instead of being fixed by the biases,
    so top-1 agreement means something. One global scale, not one per class: a per-class
    division would magnify rounding error in classes the input barely moves."""
    logits = torch.cat([model(x) for x in calib])
    mean = logits.mean(0)
    scale = (logits - mean).std().clamp_min(1e-6)
    head.weight.div_(scale)
    head.bias.sub_(mean).div_(scale)


def build(spec: ModelSpec, *, channels: int | None = None,
          input_size: tuple[int, int] | None = None, **kwargs: Any) -> nn.Module:
    """Construct ``spec``'s module (weights as PyTorch initialises them)."""
    args = {**spec.kwargs, **kwargs}
    if spec.kind == "attention":
        if "num_classes" in args:
            raise ConfigError(f"{spec.name} is an attention module; --num-classes applies to backbones")
        model = spec.builder(channels or spec.channels, **args)
    else:
        if channels is not None:
            args["in_channels"] = channels
        model = spec.builder(**args)
    check = getattr(model, "check_input", None)
    if check is not None:
        check(*(input_size or spec.input_size))
    return model
