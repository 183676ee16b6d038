"""Parity of an ONNX file against its PyTorch reference."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..core.numerics import FP32, ParityResult, Tolerance, compare, seeded_inputs
from ..runtime.ort import OrtRunner
from ..runtime.pytorch import torch_outputs

ROUNDING_FACTOR = 4.0  # FP32 atol >= this x the reference's own FP32 rounding error


def fp32_tolerance(model: nn.Module, x: np.ndarray) -> tuple[Tolerance, float]:
    """The FP32 tolerance for ``model`` on ``x`` and the reference's own FP32 rounding
    error (max |PyTorch FP32 - PyTorch FP64|): atol 1e-4, raised to ROUNDING_FACTOR x that
    error where the function is that ill-conditioned (a deep network with generated
    weights and 1280-channel blocks: mobilenext_sk's PyTorch FP32 is 1.8e-4 off its own
    FP64), since no FP32 artifact can be asked to be closer to PyTorch FP32 than PyTorch
    FP32 is to the exact function. A module that cannot run in FP64 keeps atol 1e-4."""
    import copy
    from dataclasses import replace

    try:
        exact = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            y64 = exact(torch.from_numpy(x).double()).numpy()
        rounding = float(np.abs(torch_outputs(model, x).astype(np.float64) - y64).max())
    except Exception:  # an op without an FP64 kernel: the fixed tolerance
        return FP32, 0.0
    if not np.isfinite(rounding):
        return FP32, 0.0
    return replace(FP32, atol=max(FP32.atol, ROUNDING_FACTOR * rounding)), rounding


def check_onnx(path: str | Path, reference: nn.Module, shapes: Sequence[Sequence[int]],
               tol: Tolerance | None = None, classifier: bool = False,
               seed: int = 1234) -> tuple[list[ParityResult], Tolerance, float]:
    """Run the ONNX file and the reference on the same seeded inputs, one result per shape;
    ``tol`` defaults to fp32_tolerance on the first shape's input. Returns the results,
    the tolerance and the reference's FP32 rounding error."""
    runner = OrtRunner(path)
    rounding = 0.0
    if tol is None:
        tol, rounding = fp32_tolerance(reference, seeded_inputs(shapes[0], seed))
    results = []
    for shape in shapes:
        x = seeded_inputs(shape, seed)
        results.append(compare(runner.run(x), torch_outputs(reference, x), tol,
                               classifier))
    return results, tol, rounding
