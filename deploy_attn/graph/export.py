"""Stage: a (deploy) PyTorch module -> an ONNX file, checked and shape-inferred."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from ..core.errors import ConfigError, DeployAttnError, first_line
from ..core.files import atomic_path
from ..core.onnx_io import load_onnx

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# torch.onnx converts its opset-18 graph down on request, but its converter asserts on the
# ReduceMean/ReduceMax of attention pooling at 17 (axes as an input there); no model
# with pooling exports below 18
MIN_OPSET = 18
DEFAULT_OPSET = 18


@contextlib.contextmanager
def _quiet():
    # The dynamo exporter prints progress lines and warnings of its own.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def max_opset() -> int:
    """The newest opset onnx knows (the exporter converts to any opset up to it)."""
    return onnx.defs.onnx_opset_version()


def check_opset(opset: int) -> int:
    """``opset`` if the exporter can write it, else a ConfigError saying which it can."""
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset():
        raise ConfigError(f"opset {opset}: deploy-attn writes opsets {MIN_OPSET} to "
                          f"{max_opset()} (below {MIN_OPSET} torch.onnx's converter cannot "
                          "write the ReduceMean/ReduceMax of attention pooling)")
    return opset


def _interrupt_in(exc: BaseException) -> BaseException | None:
    """A KeyboardInterrupt (or subclass) among the causes of ``exc``, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, *,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = False) -> Path:
    """Export ``model`` with torch.export (the dynamo exporter) and validate the file.

    With a dynamic batch the example input has batch 2: torch.export specialises sizes
    0 and 1, so a batch-1 example would bake the batch in.
    """
    check_opset(opset)
    shape = tuple(input_shape)
    if dynamic_batch:
        shape = (max(2, shape[0]),) + shape[1:]
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    kwargs: dict = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    path = Path(path)
    with atomic_path(path) as tmp, _quiet(), torch.no_grad():
        try:
            torch.onnx.export(model.eval(), (example,), str(tmp), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                              external_data=False, **kwargs)
        except DeployAttnError:
            raise
        except Exception as exc:
            interrupt = _interrupt_in(exc)
            if interrupt is not None:  # torch.export wraps a Ctrl-C / SIGTERM in its error
                raise interrupt from None
            first = first_line(exc)
            raise DeployAttnError(f"torch.onnx.export failed for {type(model).__name__}: "
                                  f"{first}") from exc
        proto = load_onnx(tmp)
        wrote = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if wrote != opset:
            raise ConfigError(f"--opset {opset}: the exporter wrote opset {wrote} instead; "
                              f"choose one of {MIN_OPSET} to {max_opset()}")
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.save(proto, str(tmp))
    return path
