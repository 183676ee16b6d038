"""The exports a report covers: their records read from disk."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import ConfigError
from ..core.files import read_json
from ..exportdir.layout import ACCURACY_FILE, BENCH_FILE, MAPS_FILE, REPORT_FILE
from ..exportdir.reader import read_report
from ..precision.common import PRECISIONS


# --- reading the export folders ----------------------------------------------------------
def exported_names(export_root: str | Path) -> list[str]:
    """Every folder under ``export_root`` with an export report, sorted."""
    root = Path(export_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / REPORT_FILE).is_file())


@dataclass
class ModelRecord:
    name: str
    directory: Path
    report: dict
    bench: dict | None
    accuracy: dict | None = None  # accuracy.json, written by `deploy-attn accuracy`
    maps: dict | None = None  # maps.json, written by `deploy-attn maps`


def load_records(names: Sequence[str] | None, export_root: str | Path) -> list[ModelRecord]:
    """The reports (and bench results, where saved) of ``names`` (export folder names
    under ``export_root``, or export directories), or of every export under it."""
    root = Path(export_root)
    chosen = list(names) if names else exported_names(root)
    if not chosen:
        raise ConfigError(f"no exports under {root}: run 'deploy-attn export NAME' first")
    records = []
    for name in chosen:
        # an export directory given as such, else a folder under the root
        directory = Path(name) if (Path(name) / REPORT_FILE).is_file() else root / name
        bench_path, accuracy_path = directory / BENCH_FILE, directory / ACCURACY_FILE
        report = read_report(directory)
        maps_path = directory / MAPS_FILE
        records.append(ModelRecord(report["name"], directory, report,
                                   read_json(bench_path) if bench_path.is_file() else None,
                                   read_json(accuracy_path) if accuracy_path.is_file()
                                   else None,
                                   read_json(maps_path) if maps_path.is_file() else None))
    return records


# --- figures per precision ---------------------------------------------------------------
def worst_result(results: list[dict]) -> dict:
    """One row summarising several batches: the largest errors, the lowest cosine."""
    if not results:
        return {}
    return {"max_abs": max(r["max_abs"] for r in results),
            "max_rel": max(r["max_rel"] for r in results),
            "cosine": min(r["cosine"] for r in results),
            "finite": all(r["finite"] for r in results),
            "top1_agreement": min((r["top1_agreement"] for r in results
                                   if r.get("top1_agreement") is not None), default=None),
            "batches": ", ".join(str(r["batch"]) for r in results)}


def precision_entries(report: dict) -> dict[str, dict]:
    """precision -> its parity entry (results, tolerance, ok, details), FP32 included."""
    entries = report.get("precisions", {})
    return dict(sorted(entries.items(), key=lambda kv: PRECISIONS.index(kv[0])
                       if kv[0] in PRECISIONS else len(PRECISIONS)))
