"""The Python API: deploy_attn.export(model, ...)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn

from .core.console import Progress, silent
from .core.errors import ConfigError
from .exportdir.config import CONFIG_FIELDS, ExportConfig
from .jobs.export import ExportResult, export_job
from .sources import SourceOptions, load_source

_SOURCE_FIELDS = {f.name for f in fields(SourceOptions)}


def export(model: nn.Module | str, *, input_shape: Sequence[int] | None = None,
           progress: Progress = silent, **options: Any) -> ExportResult:
    """Export ``model`` (an ``nn.Module``, a registry name, ``FILE.py:CALLABLE``,
    ``package.module:CALLABLE``, ``timm:NAME`` or ``torchvision:NAME``) through the same
    job as ``deploy-attn export``: the same artifacts and report.

    ``input_shape`` is ``(1, C, H, W)``; ``options`` are ExportConfig fields (``out_dir``,
    ``precisions``, ``calib_dir``, ``dynamic_batch``, ...) and SourceOptions fields
    (``model_args``, ``weights``, ``task``, ``mean``, ``std``, ``seed``, ...). The caller's
    module is never changed."""
    unknown = sorted(set(options) - CONFIG_FIELDS - _SOURCE_FIELDS)
    if unknown:
        raise ConfigError(f"export() got unknown option(s) {', '.join(unknown)}")
    source = {k: v for k, v in options.items() if k in _SOURCE_FIELDS}
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 4 or shape[0] != 1:
            raise ConfigError(f"input_shape {shape}: give (1, C, H, W); a dynamic batch is "
                              "dynamic_batch=True")
        source.update(channels=shape[1], input_size=shape[2:])
    config = {k: v for k, v in options.items() if k in CONFIG_FIELDS}
    for key in ("precisions", "exclude", "formats"):
        if isinstance(config.get(key), str):
            config[key] = (config[key],)
    for key in ("out_dir", "calib_dir"):
        if config.get(key) is not None:
            config[key] = Path(config[key])
    if source.get("weights") is not None:
        source["weights"] = Path(source["weights"])
    card = load_source(model, SourceOptions(**source))
    return export_job(card, ExportConfig(**config), progress)
