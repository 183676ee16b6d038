"""Graph forms chosen on the machine that exports (``--target-forms measure``).

``targets.TARGET_FORMS`` holds the speed forms ``benchmarks/forms.py`` chose on the x86
machines this project is built on. A user's CPU may differ (an ARM board running the ``ort``
target, another ISA): here each speed form that changes the user's FP32 graph is timed alone
against the graph without it, on the target's own runtime (OpenVINO, ONNX Runtime on the
ONNX file, ONNX Runtime on the ORT-format file), interleaved in one run, and kept where it
is at least ``HELPS`` faster. The forms a target needs for correctness
(``targets.REQUIRED_FORMS``) are kept whatever the timing says.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from ..core.console import Progress, silent
from ..core.numerics import seeded_inputs
from ..core.onnx_io import load_onnx
from ..graph.cpu_forms import apply_forms
from ..runtime.backends import target_runner
from ..runtime.timing import interleaved_times, paired
from .cpu import REQUIRED_FORMS, SPEED_FORMS, write_ort

HELPS = 1.03  # kept where the graph with it is at least 3 % faster (above timing noise)
RUNS, WARMUP, THREADS = 30, 3, 2
BASE = "without"


def _runner(fmt: str, path: Path, x, threads: int):
    if fmt == "ort":
        ort_file = path.with_suffix(".ort")
        write_ort(path, ort_file)
        path = ort_file
    return target_runner(fmt, path, threads).timed(x)


def measure_forms(fmt: str, onnx_path: Path, input_shape: tuple[int, ...],
                  runs: int = RUNS, threads: int = THREADS,
                  progress: Progress = silent) -> dict:
    """The forms ``fmt``'s graph takes on this machine: the required ones and each speed
    form that changes ``onnx_path`` and times at least HELPS faster alone; with the
    measured speed-ups (time without / time with, batch 1) and how they were taken."""
    x = seeded_inputs((1,) + tuple(input_shape[1:]))
    with tempfile.TemporaryDirectory(prefix=".forms-", dir=Path(onnx_path).parent) as tmp:
        graphs = {BASE: Path(tmp) / "base.onnx"}
        onnx.save(load_onnx(onnx_path), str(graphs[BASE]))
        for form in SPEED_FORMS[fmt]:
            model = load_onnx(onnx_path)
            if apply_forms(model, (form,))[form]:
                graphs[form] = Path(tmp) / f"{form}.onnx"
                onnx.save(model, str(graphs[form]))
        speedup = {}
        if len(graphs) > 1:
            progress(f"{fmt}: time {', '.join(g for g in graphs if g != BASE)} against the "
                     f"graph without ({runs} interleaved runs each, {threads} threads)")
            runners = {k: _runner(fmt, path, x, threads) for k, path in graphs.items()}
            times = interleaved_times(runners, runs, WARMUP)
            del runners
            speedup = {f: round(paired(times, BASE, f), 4) for f in graphs if f != BASE}
    chosen = [f for f in REQUIRED_FORMS[fmt]] + [f for f, r in speedup.items() if r >= HELPS]
    return {"forms": chosen, "speedup": speedup, "required": list(REQUIRED_FORMS[fmt]),
            "helps": HELPS, "runs": runs, "threads": threads, "batch": 1}
