"""Timing several runners fairly: interleaved blocks and paired ratios."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core.console import Progress
from ..core.errors import ConfigError

BLOCK = 10  # timed calls per backend per round
SETTLE_S = 0.25  # untimed running before each block (see interleaved_times)


# --- timing ----------------------------------------------------------------------------
def interleaved_times(fns: Mapping[str, Callable[[], Any]], runs: int, warmup: int,
                      step: Progress | None = None, block: int = BLOCK,
                      settle_s: float = SETTLE_S) -> dict[str, list[float]]:
    """Milliseconds per call of each function: ``warmup`` untimed calls each, then rounds
    in which each function in turn runs untimed for ``settle_s`` seconds (at least once)
    and then makes up to ``block`` timed calls (A, B, C, A, B, C, ... in blocks), until
    each has ``runs`` timings.

    deploy: the settling absorbs what the previous runtime leaves behind. ONNX Runtime's
    and OpenMP's worker threads keep spinning for tens of milliseconds after their last
    run; on a 2-core machine they take the core the next runtime's worker needs, and its
    first 3 to 7 runs after a switch took 2-3x its steady time (measured with MobileNetV2,
    6.5 ms steady). One settling call was not enough; 0.25 s is. Without it, whichever
    peer follows the slowest one in the round looks fastest."""
    if runs < 1 or warmup < 0 or block < 1:
        raise ConfigError(f"runs {runs} and block {block} must be >= 1, warmup {warmup} >= 0")
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
            if step:
                step(name)
    times: dict[str, list[float]] = {name: [] for name in fns}
    while any(len(t) < runs for t in times.values()):
        for name, fn in fns.items():
            n = min(block, runs - len(times[name]))
            if n and len(fns) > 1:
                until = time.perf_counter() + settle_s
                fn()
                while time.perf_counter() < until:
                    fn()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
                if step:
                    step(name)
    return times


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # samples per second at the median

    @classmethod
    def of(cls, times_ms: Sequence[float], batch: int) -> "Latency":
        t = np.asarray(times_ms, dtype=np.float64)
        median = float(np.median(t))
        return cls(median, float(np.percentile(t, 90)), float(t.mean()), float(t.min()),
                   batch * 1e3 / median)


def paired(times: Mapping[str, list[float]], a: str, b: str, block: int = BLOCK) -> float:
    """Median over rounds of (a's median / b's median) in that round: > 1, b is faster. A
    neighbour's load on a shared machine moves both peers of a round alike, so this ratio
    holds still where the medians of a whole run drift apart."""
    def rounds(k):
        return [statistics.median(times[k][i:i + block]) for i in range(0, len(times[k]), block)]

    return statistics.median(x / y for x, y in zip(rounds(a), rounds(b)))
