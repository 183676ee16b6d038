"""ONNX Runtime: sessions (with the verification mode TensorRT files need), batches, runners."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..core.cpu import runtime_isa
from ..core.errors import ArtifactError, first_line
from ..core.onnx_io import attr, load_onnx
from .base import Runner


def env_threads() -> int | None:
    """``OMP_NUM_THREADS`` where it is a positive number, else None. PyTorch honours it;
    ONNX Runtime's own thread pool does not, so the sessions made here take it (one
    variable limits every runtime of a job on a shared machine: two ONNX Runtime
    processes with a pool per core each ran 2.2x slower on 2 cores than with one thread
    each, measured on a Zen 3)."""
    import os

    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def ort_session_options(threads: int | None = None, sequential: bool = False,
                        profile_prefix: str | Path | None = None):
    """ONNX Runtime session options with every graph optimisation; ``threads`` fixes the
    intra-op threads (default: env_threads(), else ONNX Runtime's one per core),
    ``sequential`` turns off inter-op parallelism (as a deployment and
    the benchmarks configure it), ``profile_prefix`` turns on ORT's per-node profiler
    (``session.end_profiling()`` returns its JSON file)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads or env_threads()
    if threads:
        opts.intra_op_num_threads = threads
    if sequential:
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no busy-waiting pool between runs: it would take the cores of the next backend
        # in an interleaved measurement (and of the application beside it in deployment)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def exact_session(model):
    """A CPU session on an ONNX ModelProto (or a model file, an ORT-format one included:
    the graph it stores) with each op computed as the graph states it (graph optimisations
    off: exact integer products, the same on every CPU), on ort_session_options' threads."""
    import onnxruntime as ort

    opts = ort_session_options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def graph_numerics(path: str | Path) -> set[str]:
    """What a graph computes in: "fp16" when any tensor is FLOAT16, "qdq" with
    QuantizeLinear/DequantizeLinear nodes; "cpu-target" for a graph made for a CPU runtime
    (``int8-cpu``, a ``.cpu.onnx`` file), not for TensorRT."""
    import onnx

    model = load_onnx(path, check=False)
    graph, f16 = model.graph, onnx.TensorProto.FLOAT16
    found = set()
    if (any(i.data_type == f16 for i in graph.initializer)
            or any(v.type.tensor_type.elem_type == f16 for v in (*graph.value_info,
                                                                  *graph.input, *graph.output))
            or any(n.op_type == "Cast" and attr(n, "to", None) == f16 for n in graph.node)):
        found.add("fp16")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        found.add("qdq")
    if (str(path).endswith(".cpu.onnx")
            or any(p.key == "deploy_attn.target" for p in model.metadata_props)):
        found.add("cpu-target")
    return found


# deploy: ONNX Runtime's WeightBiasQuantization (a level-1 "basic" optimizer) turns a Conv
# bias fed by DQ'd activations and weights into INT32 with scale x_scale * w_scale, and
# computes bias / scale in the scales' type. With FP16 scales (the INT8 + FP16 form) that
# quotient overflows FP16 (digits mobilenetv2_ca: 131788 at the stem conv), the bias
# becomes Inf -> garbage INT32, and the output's cosine drops from 0.999 to 0.76. Sessions
# on FP16 Q/DQ graphs run without it; verification runs FP16 graphs with no graph
# optimisation at all (VERIFY_NOTE).
FP16_QDQ_DISABLED = ("WeightBiasQuantization",)


def disabled_optimizers(numerics: set[str]) -> list[str]:
    """The ORT optimizers a graph of these ``graph_numerics`` must run without."""
    return list(FP16_QDQ_DISABLED) if {"fp16", "qdq"} <= numerics else []


VERIFY_NOTE = ("FP16-bearing graph: ONNX Runtime CPU with graph optimisations off (each op "
               "as the graph states it; ORT's WeightBiasQuantization miscomputes FP16 Q/DQ "
               "graphs)")
# A TensorRT file's figures must not depend on the checking CPU's integer kernels (x86
# without VNNI saturates 8-bit pair sums, saturation.py): each op as the graph states it,
# as TensorRT computes it (exact integer products, FP32 accumulation; FP16 where stated)
TRT_EMULATION = ("TensorRT emulation: ONNX Runtime CPU with graph optimisations off, each op "
                 "as the graph states it (Q/DQ as exact integer products, FP32 accumulation, "
                 "FP16 where the graph casts to it): the same figures on every CPU")


def verify_unoptimised(numerics: set[str], cpu_file: bool) -> bool:
    """Whether ort_session(verify=True) runs a graph of these ``numerics`` with no graph
    optimisation: a TensorRT file with FP16 or Q/DQ (TRT_EMULATION), a CPU target's file
    with FP16 (VERIFY_NOTE). A CPU target's INT8 runs on the integer kernels it is for."""
    if cpu_file or "cpu-target" in numerics:
        return "fp16" in numerics
    return bool({"fp16", "qdq"} & numerics)


def ort_session(path: str | Path, threads: int | None = None, sequential: bool = False,
                profile_prefix: str | Path | None = None, verify: bool = False,
                options=None):
    """A CPU session on ``path`` with ort_session_options (``options``: another
    deployment's SessionOptions instead); a file ORT cannot load is an ArtifactError.
    ``verify``: the configuration whose numerics the checks trust (verify_unoptimised)."""
    import onnxruntime as ort

    opts = ort_session_options(threads, sequential, profile_prefix) if options is None \
        else options
    # an ORT-format file's numerics are those of the ONNX file it was converted from
    onnx_path = Path(path) if Path(path).suffix != ".ort" else Path(path).with_suffix(".onnx")
    numerics = graph_numerics(onnx_path) if onnx_path.is_file() else set()
    disabled = disabled_optimizers(numerics) if options is None else []
    if verify and verify_unoptimised(numerics, onnx_path != Path(path)):
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif onnx_path != Path(path):
        # replay the optimisations the converter saved in our own ORT file, as a phone does
        opts.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=disabled)
    except Exception as exc:
        first = first_line(exc)
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it: {first}") from None


def verification_runtime(path: str | Path) -> str:
    """How ``ort_session(path, verify=True)`` runs the graph, for the report."""
    numerics = graph_numerics(path)
    if verify_unoptimised(numerics, False):
        return VERIFY_NOTE if "cpu-target" in numerics else TRT_EMULATION
    if "qdq" in numerics:
        return runtime_isa("ONNX Runtime CPU, all graph optimisations")
    return "ONNX Runtime CPU, all graph optimisations (FP32 kernels)"


def ort_batches(session, x: np.ndarray) -> Iterator[list[np.ndarray]]:
    """Every output of ``session`` on ``x``, one list per run: a dynamic-batch model runs
    ``x`` at once, a static-batch one in slices of its batch."""
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else x.shape[0]
    if x.shape[0] % fixed:
        raise ArtifactError(f"batch {x.shape[0]} is not a multiple of the model's batch {fixed}")
    for i in range(0, x.shape[0], fixed):
        try:
            outs = session.run(None, {inp.name: x[i:i + fixed]})
        except Exception as exc:  # ORT's pybind errors: a graph foreign to these inputs
            first = first_line(exc)
            raise ArtifactError(f"ONNX Runtime cannot run the graph on input "
                                f"{list(x[i:i + fixed].shape)} ('{inp.name}' is "
                                f"{inp.shape}): {first}") from None
        yield outs


def ort_outputs(session, x: np.ndarray) -> np.ndarray:
    """The first output for a batch; a static-batch model is run one slice at a time."""
    return np.concatenate([outs[0] for outs in ort_batches(session, x)])


# --- runners -----------------------------------------------------------------------------
def ort_options(threads: int) -> dict:
    """The session options every ONNX Runtime backend uses, read back from the options
    object its sessions are made with (stated in the result)."""
    opts = ort_session_options(threads, sequential=True)
    return {"provider": "CPUExecutionProvider",
            "graph_optimization_level": opts.graph_optimization_level.name,
            "intra_op_num_threads": opts.intra_op_num_threads,
            "inter_op_num_threads": opts.inter_op_num_threads,
            "execution_mode": opts.execution_mode.name,
            "allow_spinning": opts.get_session_config_entry("session.intra_op.allow_spinning")}


class OrtRunner(Runner):
    """ONNX Runtime CPU on an ONNX or ORT-format file, loaded once. With ``threads``: as a
    deployment configures it (every graph optimisation: fusions, NCHWc layouts, Q/DQ ->
    QLinear ops; that many intra-op threads, no inter-op parallelism). With ``verify``: the
    configuration whose numerics the checks trust (verify_unoptimised). Neither: every
    optimisation, ONNX Runtime's own thread choice. ``options``: another deployment's
    SessionOptions, as they are."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, verify: bool = False,
                 options=None):
        self.path = Path(path)
        self.session = ort_session(path, threads, sequential=bool(threads), verify=verify,
                                   options=options)

    def run(self, x: np.ndarray) -> np.ndarray:
        return ort_outputs(self.session, x)

    def outputs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        order = [o.name for o in self.session.get_outputs()]
        runs = list(ort_batches(self.session, x))
        return {n: np.concatenate([r[order.index(n)] for r in runs]) for n in names}

    def timed(self, x: np.ndarray) -> Callable[[], Any]:
        feed = {self.session.get_inputs()[0].name: x}
        return lambda: self.session.run(None, feed)
