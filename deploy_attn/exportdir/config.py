"""The export's configuration, and the one a report records."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..core.errors import ConfigError
from ..graph.export import DEFAULT_OPSET, check_opset
from ..precision.common import CALIB_METHODS, PRECISIONS
from ..precision.fp16 import AUTOCAST_MAX
from ..sources import ModelCard
from ..targets.cpu import FORMATS, TARGET_CPUS, TARGET_FORM_CHOICES
from .layout import DEFAULT_ROOT


@dataclass(frozen=True)
class ExportConfig:
    """How to export a model (the model itself comes as a ModelCard)."""

    out_dir: Path | None = None  # default: export/<card name>
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    approximate: bool = False
    precisions: tuple[str, ...] = ()  # beyond fp32, which is always exported first
    calib_dir: Path | None = None
    calib_count: int = 32
    calib_method: str = "minmax"
    exclude: tuple[str, ...] = ()  # INT8 nodes kept FP32; ("auto",) chooses by sensitivity
    sensitivity: bool = False
    fp16_threshold: float = AUTOCAST_MAX
    verify_count: int = 8
    formats: tuple[str, ...] = ()  # CPU targets beside the ONNX files: openvino, ort
    target_cpu: str = "portable"  # the CPU the CPU targets and int8-cpu are for (TARGET_CPUS)
    target_forms: str = "fixed"  # the CPU targets' graph forms: TARGET_FORMS, or measured here
    # False only for a diagnosis in a scratch folder (``deploy-attn maps`` on a model not
    # exported yet): a precision that misses its threshold is kept and recorded, not raised
    strict: bool = True

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ConfigError(f"unknown precision {', '.join(bad)}; choose from "
                              f"{', '.join(PRECISIONS)}")
        check_opset(self.opset)
        for what, value in (("calib_count", self.calib_count),
                            ("verify_count", self.verify_count)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{what} {value!r} must be a positive integer")
        if not self.fp16_threshold > 0:
            raise ConfigError(f"fp16 threshold {self.fp16_threshold}: must be positive (a "
                              "node stays FP32 above it)")
        if self.calib_method not in CALIB_METHODS:
            raise ConfigError(f"calibration method '{self.calib_method}': choose from "
                              f"{', '.join(CALIB_METHODS)}")
        stages = [p for p in self.precisions if p != "fp32"]
        for flag, given in (("--exclude", self.exclude), ("--sensitivity", self.sensitivity)):
            if given and not {"int8", "int8-fp32"} & set(stages):
                raise ConfigError(f"{flag} does nothing without --precision int8")
        if self.calib_dir is not None and not stages:
            raise ConfigError("--calib-dir does nothing without --precision fp16 or int8")

        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ConfigError(f"unknown format {', '.join(bad)}; choose from {', '.join(FORMATS)}")
        if self.target_cpu not in TARGET_CPUS:
            raise ConfigError(f"target CPU '{self.target_cpu}': choose from "
                              f"{', '.join(TARGET_CPUS)}")
        if self.target_forms not in TARGET_FORM_CHOICES:
            raise ConfigError(f"target forms '{self.target_forms}': choose from "
                              f"{', '.join(TARGET_FORM_CHOICES)}")
        if self.target_forms != "fixed" and not self.formats and "int8-cpu" not in stages:
            raise ConfigError("--target-forms does nothing without --format or "
                              "--precision int8-cpu")

    def directory(self, card: ModelCard) -> Path:
        return Path(self.out_dir) if self.out_dir else DEFAULT_ROOT / card.name


# --- the config a report records, and back ----------------------------------------------
CONFIG_FIELDS = {f.name for f in fields(ExportConfig)}


_PATHS, _TUPLES = ("calib_dir",), ("precisions", "exclude", "formats")


def config_dict(cfg: ExportConfig) -> dict:
    """``cfg`` as JSON values (absolute paths), everything but the output directory."""
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in _PATHS and value is not None:
            value = str(Path(value).resolve())
        out[f.name] = list(value) if f.name in _TUPLES and value is not None else value
    del out["out_dir"]
    return out


def config_from_report(report: dict, directory: Path) -> ExportConfig:
    """The ExportConfig that produced ``report`` (settings an older report lacks take
    their defaults)."""
    c = {k: v for k, v in report["config"].items() if k in CONFIG_FIELDS}
    for k in _PATHS:
        c[k] = Path(c[k]) if c.get(k) else None
    for k in _TUPLES:
        if c.get(k) is not None:
            c[k] = tuple(c[k])
    return ExportConfig(**{**c, "out_dir": Path(directory)})
