"""Loading a user's checkpoint into a registered model, safely and with clear errors."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .errors import CheckpointError


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state_dict (nor a dict with a 'state_dict' or "
                              "'model' entry holding one)")
    # checkpoints saved from nn.DataParallel / DistributedDataParallel
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _preview(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` (``torch.load(weights_only=True)``) into ``model`` strictly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: cannot be loaded with weights_only=True: {first}") from None
    state = _state_dict(obj, path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    conflicts = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
    if missing or unexpected or conflicts:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_preview(unexpected)}")
        if conflicts:
            parts.append(f"{len(conflicts)} shape conflicts: {_preview(conflicts, 2)}")
        raise CheckpointError(f"{path} does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state)
    return model.eval()
