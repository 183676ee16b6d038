"""What ``deploy-attn list`` shows: every registered name with its rewrites and costs."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .models import build
from .registry import get_spec, list_models
from .rewrite import patch_for_deploy


def count_costs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Parameters and multiply-adds (FlopCounterMode FLOPs / 2: convs and matmuls) at a shape."""
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(input_shape))
    macs = counter.get_total_flops() // 2
    return {"params": params, "params_m": round(params / 1e6, 3), "macs": macs,
            "gmacs": round(macs / 1e9, 4)}


def zoo_rows(pattern: str = "*", costs: bool = True) -> list[dict]:
    rows = []
    for name in list_models(pattern):
        spec = get_spec(name)
        with torch.random.fork_rng(devices=[]):
            model = build(spec).eval()
        _, applied = patch_for_deploy(model, approximate=True)
        row = {
            "name": name, "kind": spec.kind, "paper": spec.paper, "url": spec.url,
            "default_input": list(spec.input_shape()[1:]),
            "exact_rewrites": sorted({a.target for a in applied if a.exact}),
            "approximate_rewrites": sorted({a.target for a in applied if not a.exact}),
        }
        if costs:
            row.update(count_costs(model, spec.input_shape()))
        rows.append(row)
    return rows
