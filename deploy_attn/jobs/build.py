"""The build job: ONNX artifact (exported first if missing) -> strongly typed TensorRT
engine -> engine parity against the reference PyTorch model -> report.json."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..core.console import Progress, silent
from ..core.errors import ParityError
from ..core.files import write_json
from ..engine.build import build_engine
from ..engine.config import DEFAULT_WORKSPACE_MIB, EngineConfig, engine_path_for
from ..engine.sidecar import read_sidecar
from ..exportdir.config import ExportConfig
from ..exportdir.layout import REPORT_FILE, artifact_name
from ..exportdir.reader import read_report
from ..exportdir.transaction import directory_lock
from ..runtime.tensorrt import require_tensorrt
from .export import export_adding
from .verify import engine_parity

if TYPE_CHECKING:
    from ..sources import ModelCard


def build_job(directory: Path, precision: str, *, min_batch: int | None = None,
              opt_batch: int | None = None, max_batch: int | None = None,
              workspace_mib: int | None = None, progress: Progress = silent,
              fresh: tuple[ModelCard, ExportConfig] | None = None) -> dict:
    """Build ``model.<precision>.engine`` in the export directory and check it; returns
    the engine's report entry. Fails first, before any work, without TensorRT or a GPU.
    A missing ONNX artifact is exported first (``fresh``: the card and config of a new
    export where the directory has none)."""
    directory = Path(directory)
    exported = (directory / REPORT_FILE).is_file()
    # the Docker hint names the model (an -o folder may be called anything)
    require_tensorrt(read_report(directory)["name"] if exported else
                     fresh[0].name if fresh else directory.name, precision)
    onnx_path = directory / artifact_name(precision)
    if not onnx_path.is_file():
        progress(f"{onnx_path} is missing: exporting it first")
        export_adding(directory, [precision], progress, fresh)
    cfg = EngineConfig.from_onnx(onnx_path, precision, min_batch=min_batch,
                                 opt_batch=opt_batch, max_batch=max_batch,
                                 workspace_mib=workspace_mib or DEFAULT_WORKSPACE_MIB)
    engine = build_engine(onnx_path, engine_path_for(directory, precision), cfg, progress)
    parity = engine_parity(directory, engine, precision, progress)
    sidecar = read_sidecar(engine)
    entry = {"file": engine.name, "parity": parity, "trtexec": sidecar["trtexec"],
             "environment": sidecar["environment"], "build_seconds": sidecar["seconds"]}
    with directory_lock(directory):  # read-modify-write: no export may publish meanwhile
        report = read_report(directory)
        report.setdefault("engines", {})[precision] = entry
        write_json(directory / REPORT_FILE, report)
    if not parity["ok"]:
        raise ParityError(f"{report['name']}: TensorRT {precision} engine vs PyTorch: cosine "
                          f"{parity['cosine']:.6f}, max abs {parity['max_abs']:.3g}; engine "
                          f"kept at {engine} for inspection, see {directory / REPORT_FILE}")
    return entry
