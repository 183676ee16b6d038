"""What ``deploy-attn list`` shows: every registered name with its rewrites and costs.

Counting multiply-adds runs each model once, which takes ~20 s for the whole zoo on two
cores; the rows only change with the code, so they are cached under the user's cache
directory, keyed by a hash of the package sources and the torch version.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .core.files import write_json
from .models import build
from .registry import get_spec, list_models
from .swaps import patch_for_deploy


def count_costs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Parameters and multiply-adds (FlopCounterMode FLOPs / 2: convs and matmuls) at a shape."""
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(input_shape))
    macs = counter.get_total_flops() // 2
    return {"params": params, "params_m": round(params / 1e6, 3), "macs": macs,
            "gmacs": round(macs / 1e9, 4)}


def zoo_row(name: str) -> dict:
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        model = build(spec).eval()
    _, applied = patch_for_deploy(model, approximate=True)
    return {
        "name": name, "kind": spec.kind, "paper": spec.paper, "url": spec.url,
        "default_input": list(spec.input_shape()[1:]),
        "exact_rewrites": sorted({a.target for a in applied if a.exact}),
        "approximate_rewrites": sorted({a.target for a in applied if not a.exact}),
        **count_costs(model, spec.input_shape()),
    }


def cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deploy-attn"
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(source.read_bytes())
    return root / f"zoo-{digest.hexdigest()[:16]}.json"


def zoo_rows(pattern: str = "*", progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per registered name matching ``pattern`` (computed rows are cached)."""
    names = list_models(pattern)
    path = cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    missing = [n for n in names if n not in cache]
    for i, name in enumerate(missing, 1):
        if progress:
            progress(f"[{i}/{len(missing)}] counting parameters and multiply-adds: {name}")
        cache[name] = zoo_row(name)
    if missing:
        try:
            write_json(path, cache)
        except OSError:
            pass  # a read-only home only costs the next run the same time again
    return [cache[n] for n in names]
