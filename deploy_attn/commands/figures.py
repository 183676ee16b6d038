"""Figures as PNG bytes: latency and parity plots for reports, and the helper maps uses."""
from __future__ import annotations

import io

from ..core.numerics import FP16, FP32, INT8
from .records import ModelRecord, precision_entries, worst_result


# --- plots -----------------------------------------------------------------------------
def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def latency_plot(records: list[ModelRecord]) -> bytes | None:
    """Median latency (log scale) per model, one bar per measured backend; p90 as whisker."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    measured = [r for r in records if r.bench]
    if not measured:
        return None
    backends = list(dict.fromkeys(b["backend"] for r in measured for b in r.bench["backends"]
                                  if b.get("latency")))
    if not backends:
        return None
    fig = Figure(figsize=(max(6.0, 1.3 * len(measured) * max(1, len(backends)) / 3 + 2), 4))
    ax = fig.subplots()
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        xs, ys, err = [], [], []
        for j, r in enumerate(measured):
            b = next((b for b in r.bench["backends"] if b["backend"] == backend
                      and b.get("latency")), None)
            if b:
                xs.append(j + (i - (len(backends) - 1) / 2) * width)
                ys.append(b["latency"]["median_ms"])
                err.append(b["latency"]["p90_ms"] - b["latency"]["median_ms"])
        ax.bar(xs, ys, width, yerr=[[0] * len(err), err], label=backend, capsize=2)
    ax.set_xticks(range(len(measured)), [r.name for r in measured], rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("median latency, ms (log; whisker: p90)")
    ax.set_title("Latency by backend")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(backends), 4))
    return png_bytes(fig)


def parity_plot(records: list[ModelRecord]) -> bytes | None:
    """Per module: FP32 max abs error, and 1 - cosine of each reduced precision (log)."""
    from matplotlib.figure import Figure

    precisions = list(dict.fromkeys(p for r in records for p in precision_entries(r.report)))
    if not precisions:
        return None
    fig = Figure(figsize=(max(10.0, 1.2 * len(records) + 4), 4.5))
    ax_abs, ax_cos = fig.subplots(1, 2)
    names = [r.name for r in records]
    fp32 = [worst_result(precision_entries(r.report).get("fp32", {}).get("results", [])).get("max_abs")
            for r in records]
    ax_abs.bar(range(len(records)), [v or 0 for v in fp32], color="tab:blue")
    ax_abs.axhline(FP32.atol, color="tab:red", ls="--", lw=1, label=f"atol {FP32.atol:g}")
    ax_abs.set_title("FP32: max abs error vs PyTorch", fontsize=10)
    reduced = [p for p in precisions if p != "fp32"]
    width = 0.8 / max(1, len(reduced))
    for i, p in enumerate(reduced):
        xs, ys = [], []
        for j, r in enumerate(records):
            w = worst_result(precision_entries(r.report).get(p, {}).get("results", []))
            if w:
                xs.append(j + (i - (len(reduced) - 1) / 2) * width)
                ys.append(max(1.0 - w["cosine"], 1e-12))
        ax_cos.bar(xs, ys, width, label=p)
    for limit, label in ((1 - FP16.min_cosine, "fp16 limit"), (1 - INT8.min_cosine, "int8 limit")):
        ax_cos.axhline(limit, ls="--", lw=1, color="gray")
        ax_cos.text(len(records) - 0.5, limit, label, fontsize=7, va="bottom", ha="right")
    ax_cos.set_title("FP16 / INT8: 1 - cosine vs PyTorch", fontsize=10)
    for ax in (ax_abs, ax_cos):
        ax.set_yscale("log")
        ax.set_xticks(range(len(records)), names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    ax_abs.legend(fontsize=8)
    if reduced:
        ax_cos.legend(fontsize=8)
    fig.suptitle("Parity error by module")
    fig.subplots_adjust(wspace=0.3)
    return png_bytes(fig)
