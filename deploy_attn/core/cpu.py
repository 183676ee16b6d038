"""The CPU an export, a check or a benchmark ran on: its instruction sets, and whether its
8-bit dot products are exact.

x86 CPUs without VNNI multiply u8 x s8 with ``vpmaddubsw``, which adds each pair of
adjacent products in int16 and saturates there (OpenVINO's "saturation issue", ONNX
Runtime's ``reduce_range``); VNNI (AVX512-VNNI, AVX-VNNI) and AMX accumulate 8-bit
products in int32, as ARM's dot-product instructions and TensorRT on a GPU do. The same
INT8 file can therefore compute differently on two CPUs (``saturation.py``).
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

X86_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
ARM_FLAGS = ("asimddp", "i8mm")  # /proc/cpuinfo's names for dotprod and i8mm
EXACT_X86 = ("avx512_vnni", "avx_vnni", "amx_int8")
# oneDNN honours ONEDNN_MAX_CPU_ISA in release builds and OpenVINO's CPU plugin its own
# OV_CPU_MAX_ISA: with either at AVX2 (or below), OpenVINO computes as a CPU without VNNI
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA")
NO_VNNI_LIMITS = ("SSE41", "AVX", "AVX2", "AVX512_CORE")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the model name only
        return model, frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "CPU part") and model == platform.machine():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags |= set(value.split())
            break  # every core lists the same
    return model, frozenset(flags)


def cpu_isa() -> dict:
    """This CPU: machine, model, the ISA flags that decide INT8 arithmetic (dotprod and
    i8mm on ARM under their own names), the ISA limits set in the environment, and how
    8-bit dot products are accumulated here (``int8_dot``: "exact" or "saturating")."""
    model, flags = _cpuinfo()
    machine = platform.machine().lower()
    arm = machine in ("aarch64", "arm64") or machine.startswith("arm")
    if arm:
        names = {"asimddp": "dotprod", "i8mm": "i8mm"}
        present = [names[f] for f in ARM_FLAGS if f in flags]
        exact = True  # sdot/udot and widening multiplies accumulate in int32
    else:
        present = [f for f in X86_FLAGS if f in flags]
        exact = any(f in flags for f in EXACT_X86)
    limits = {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)}
    return {"machine": machine, "model": model, "isa": present, "limits": limits,
            "int8_dot": "exact" if exact else "saturating",
            "openvino_int8_dot": "saturating" if not exact or openvino_limited() else "exact"}


def openvino_limited() -> bool:
    """Whether the environment limits OpenVINO to an ISA without VNNI."""
    return any(os.environ.get(k, "").upper() in NO_VNNI_LIMITS for k in ISA_LIMITS)


def isa_line(cpu: dict | None = None) -> str:
    """One line naming the CPU, e.g. for a report header or the pytest session header."""
    cpu = cpu or cpu_isa()
    limits = "".join(f", {k}={v}" for k, v in cpu.get("limits", {}).items())
    return (f"CPU {cpu['model']} ({cpu['machine']}): {' '.join(cpu['isa']) or 'no listed ISA'}"
            f"; 8-bit dot products {cpu['int8_dot']}{limits}")


def int8_isa(openvino: bool = False) -> str:
    """The instruction set a runtime's 8-bit kernels use here (OpenVINO honours the
    environment's ISA limits)."""
    cpu = cpu_isa()
    if openvino and openvino_limited():
        return next(os.environ[k] for k in ISA_LIMITS if os.environ.get(k)).lower()
    best = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx2", "dotprod",
                        "i8mm") if f in cpu["isa"]]
    return best[0] if best else cpu["machine"]


def runtime_isa(runtime: str) -> str:
    """A runtime's integer-kernel label on this CPU, e.g. for an informational check line."""
    openvino = runtime.startswith("OpenVINO")
    dot = cpu_isa()["openvino_int8_dot" if openvino else "int8_dot"]
    return f"{runtime}, integer kernels on {int8_isa(openvino)} ({dot} 8-bit dot products)"

