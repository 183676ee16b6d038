"""Reading an export back: its report and its rebuilt reference."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ArtifactError
from ..precision.calib import verification_data
from ..sources import ModelCard, rebuild
from .config import ExportConfig, config_from_report
from .layout import FAILED_REPORT, MODEL_FILE, REPORT_FILE, REPORT_VERSION


# --- an export read back from its directory -----------------------------------------------------
def upgrade_report(report: dict, where: str | Path) -> dict:
    """``report`` in this version's shape (REPORT_VERSION): a version-1 report's FP32
    parity becomes ``precisions["fp32"]``; a report newer than this version is refused."""
    version = report.get("report_version", 1)
    if not isinstance(version, int) or version > REPORT_VERSION:
        raise ArtifactError(f"{where}: report version {version} is newer than this deploy-attn "
                            f"reads ({REPORT_VERSION}); upgrade deploy-attn or export again")
    if version < 2 and "parity" in report:
        fp32 = {"file": report.get("files", {}).get("fp32", MODEL_FILE), **report["parity"]["fp32"]}
        report = {k: v for k, v in report.items() if k != "parity"}
        report["precisions"] = {"fp32": fp32, **report.get("precisions", {})}
    return {"report_version": REPORT_VERSION, **report}


def read_report(directory: Path) -> dict:
    """The report.json of an export directory; ArtifactError if it is missing or corrupt."""
    import json

    path = Path(directory) / REPORT_FILE
    try:
        report = json.loads(path.read_text())
        report["name"], report["config"], report["model"]
        report = upgrade_report(report, path)
    except FileNotFoundError:
        failed = path.with_name(FAILED_REPORT)
        hint = f" (its last run failed: see {failed})" if failed.is_file() else ""
        raise ArtifactError(f"{path}: no export report{hint}; run 'deploy-attn export' "
                            "first") from None
    except KeyError as exc:
        raise ArtifactError(f"{path}: report has no {exc} entry (an older or foreign "
                            "report); export again") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: corrupt export report ({type(exc).__name__})") from None
    return report


@dataclass
class OpenExport:
    """An export directory read back: its report, config, and (built on first use) the
    reference it was checked against."""

    directory: Path
    report: dict
    cfg: ExportConfig
    _card: ModelCard | None = None

    @property
    def name(self) -> str:
        return self.report["name"]

    def card(self) -> ModelCard:
        if self._card is None:
            self._card = rebuild(self.report["model"], self.report["input_shape"],
                                 self.directory, self.name)
        return self._card

    def verify_inputs(self, count: int) -> np.ndarray:
        """The export's verification inputs (held-out calibration images, else the seeded
        set), ``count`` of them."""
        pre = self.card().preprocess
        return verification_data(pre, tuple(self.report["input_shape"]), self.cfg.calib_dir,
                                 self.cfg.calib_count, count).inputs


def open_export(directory: Path, card: ModelCard | None = None) -> OpenExport:
    """An export directory read back; ``card``: its reference where the caller holds it
    already (the run that just wrote the export), instead of rebuilding it."""
    report = read_report(directory)
    return OpenExport(Path(directory), report, config_from_report(report, directory), card)
