"""Tolerances and the comparison of an output with its reference; seeded inputs."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import ArtifactError


@dataclass(frozen=True)
class Tolerance:
    """FP32: pass when every element satisfies |test - ref| <= atol + rtol * |ref|
    (np.allclose). Reduced precisions: pass when the output is finite and its cosine
    similarity to the reference is at least ``min_cosine`` (elementwise bounds mean
    little once weights are rounded to 11 or 8 bits)."""

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float | None = None


FP32 = Tolerance()
FP16 = Tolerance(min_cosine=0.9999)
INT8 = Tolerance(min_cosine=0.99)
TOLERANCES = {"fp32": FP32, "fp16": FP16, "int8": INT8, "int8-fp32": INT8, "int8-cpu": INT8}


@dataclass(frozen=True)
class ParityResult:
    batch: int
    max_abs: float
    max_rel: float  # |test - ref| / (|ref| + atol): bounded where ref crosses zero
    cosine: float
    finite: bool
    ok: bool
    top1_agreement: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def seeded_inputs(shape: Sequence[int], seed: int = 1234) -> np.ndarray:
    """The inputs every check uses: standard normal, seeded, float32."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=gen).numpy()


def compare(test: np.ndarray, ref: np.ndarray, tol: Tolerance = FP32,
            classifier: bool = False) -> ParityResult:
    """Error figures of ``test`` against ``ref`` and whether they are within ``tol``."""
    test = np.asarray(test, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if test.shape != ref.shape:
        raise ArtifactError(f"output shape {test.shape} differs from the reference {ref.shape}")
    finite = bool(np.isfinite(test).all())
    diff = np.abs(test - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / (np.abs(ref) + tol.atol)).max()) if diff.size else 0.0
    a, b = test.ravel(), ref.ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
    if tol.min_cosine is None:
        ok = finite and bool(np.all(diff <= tol.atol + tol.rtol * np.abs(ref)))
    else:
        ok = finite and cosine >= tol.min_cosine
    top1 = None
    if classifier and ref.ndim == 2:
        top1 = float((test.argmax(1) == ref.argmax(1)).mean())
    return ParityResult(ref.shape[0], max_abs, max_rel, cosine, finite, ok, top1)


DEGENERATE = 1e-2  # input_dependence below this: the output is nearly the same for any input


def input_dependence(outputs: np.ndarray) -> float:
    """How much a batch of outputs varies with the input: the RMS of each output's
    deviation from the batch mean over the RMS of the outputs. A randomly initialised
    classifier answers nearly the same for every input (about 1e-4); any artifact then
    passes parity, so the figure is reported beside it."""
    y = np.asarray(outputs, dtype=np.float64)
    total = float(np.sqrt((y ** 2).mean()))
    return float(np.sqrt(((y - y.mean(0)) ** 2).mean())) / total if total > 0 else 0.0
