"""Stage: ONNX -> onnxsim-simplified ONNX, checked again."""
from __future__ import annotations

from pathlib import Path

import onnx

from ..core.errors import ArtifactError
from ..core.files import atomic_path
from ..core.onnx_io import load_onnx


def simplify_onnx(src: str | Path, dst: str | Path) -> Path:
    """Constant-fold and clean ``src`` with onnxsim and write the result to ``dst``."""
    import onnxsim

    model = load_onnx(src)
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ArtifactError(f"{src}: onnxsim could not validate the simplified model")
    with atomic_path(dst) as tmp:
        onnx.save(simplified, str(tmp))
        load_onnx(tmp)
    return Path(dst)
