"""Stage: numerical parity of an ONNX artifact against the reference PyTorch model."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import ArtifactError, first_line


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


DEGENERATE = 1e-2  # input_dependence below this: the output is nearly the same for any input


def input_dependence(outputs: np.ndarray) -> float:
    """How much a batch of outputs varies with the input: the RMS of each output's
    deviation from the batch mean over the RMS of the outputs. A randomly initialised
    classifier answers nearly the same for every input (about 1e-4); any artifact then
    passes parity, so the figure is reported beside it."""
    y = np.asarray(outputs, dtype=np.float64)
    total = float(np.sqrt((y ** 2).mean()))
    return float(np.sqrt(((y - y.mean(0)) ** 2).mean())) / total if total > 0 else 0.0


def torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def ort_session_options(threads: int | None = None, sequential: bool = False,
                        profile_prefix: str | Path | None = None):
    """ONNX Runtime session options with every graph optimisation; ``threads`` fixes the
    intra-op threads, ``sequential`` turns off inter-op parallelism (as a deployment and
    the benchmarks configure it), ``profile_prefix`` turns on ORT's per-node profiler
    (``session.end_profiling()`` returns its JSON file)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
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


def graph_numerics(path: str | Path) -> set[str]:
    """What a graph computes in: "fp16" when any tensor is FLOAT16, "qdq" with
    QuantizeLinear/DequantizeLinear nodes; "cpu-target" for a graph made for a CPU runtime
    (``int8-cpu``, a ``.cpu.onnx`` file), not for TensorRT."""
    import onnx

    from .onnx_io import load_onnx

    model = load_onnx(path, check=False)
    graph, f16 = model.graph, onnx.TensorProto.FLOAT16
    found = set()
    if (any(i.data_type == f16 for i in graph.initializer)
            or any(v.type.tensor_type.elem_type == f16 for v in (*graph.value_info,
                                                                  *graph.input, *graph.output))
            or any(n.op_type == "Cast" and a.name == "to" and a.i == f16
                   for n in graph.node for a in n.attribute)):
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
                profile_prefix: str | Path | None = None, verify: bool = False):
    """A CPU session on ``path`` with ort_session_options; a file ORT cannot load is an
    ArtifactError. ``verify``: the configuration whose numerics the checks trust
    (verify_unoptimised)."""
    import onnxruntime as ort

    opts = ort_session_options(threads, sequential, profile_prefix)
    # an ORT-format file's numerics are those of the ONNX file it was converted from
    onnx_path = Path(path) if Path(path).suffix != ".ort" else Path(path).with_suffix(".onnx")
    numerics = graph_numerics(onnx_path) if onnx_path.is_file() else set()
    disabled = disabled_optimizers(numerics)
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
    from .isa import runtime_isa

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


def check_onnx(path: str | Path, reference: nn.Module, shapes: Sequence[Sequence[int]],
               tol: Tolerance | None = None, classifier: bool = False,
               seed: int = 1234) -> tuple[list[ParityResult], Tolerance, float]:
    """Run the ONNX file and the reference on the same seeded inputs, one result per shape;
    ``tol`` defaults to fp32_tolerance on the first shape's input. Returns the results,
    the tolerance and the reference's FP32 rounding error."""
    session = ort_session(path)
    rounding = 0.0
    if tol is None:
        tol, rounding = fp32_tolerance(reference, seeded_inputs(shapes[0], seed))
    results = []
    for shape in shapes:
        x = seeded_inputs(shape, seed)
        results.append(compare(ort_outputs(session, x), torch_outputs(reference, x), tol,
                               classifier))
    return results, tol, rounding
