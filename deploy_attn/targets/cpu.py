"""CPU deployment targets beside the ONNX files: OpenVINO IR (``model[.P].xml/.bin``),
ONNX Runtime's mobile format (``model[.P].ort`` plus the operator config a minimal
mobile build needs) and the ONNX graph for ONNX Runtime on a CPU (``model[.P].cpu.onnx``),
and OpenVINO as a second runtime for every artifact.

Each target's graph takes the CPU graph forms (``graph/cpu_forms.py``) measured to help on its
runtime (``TARGET_FORMS``) and, for the CPU it is for (``TARGET_CPUS``, ``--target-cpu``),
INT8 weights that cannot saturate on x86 CPUs without VNNI (``saturation.py``); the ONNX
files themselves keep the TensorRT form.

OpenVINO is optional (``pip install "deploy-attn[openvino]"``); without it the OpenVINO
parts say so in one line, and ``check``/``bench`` list them as skipped with the reason.
OpenVINO runs an artifact as its graph states it: FP32 inference precision (a CPU with
BF16 support would otherwise default to BF16), FP16 weights and Casts as given, and the
Q/DQ graphs through its low-precision transformations, i.e. as real INT8 kernels.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from ..core.errors import ArtifactError, first_line
from ..core.files import atomic_path
from ..core.onnx_io import load_onnx
from ..graph.cpu_forms import FORM_NAMES, apply_forms
from ..precision.saturation import portable_weights
from ..runtime.openvino import require_openvino
from ..runtime.ort import disabled_optimizers, graph_numerics

FORMATS = ("openvino", "ort", "onnx-cpu")
ORT_OPERATORS = "required_operators.config"  # for ONNX Runtime's minimal (mobile) build


RUNTIMES = {"openvino": "OpenVINO CPU, FP32 inference precision (Q/DQ as INT8 kernels)",
            "ort": "ONNX Runtime CPU on the ORT-format file",
            "onnx-cpu": "ONNX Runtime CPU on the CPU-form ONNX file"}
SUFFIXES = {"openvino": ".xml", "ort": ".ort", "onnx-cpu": ".cpu.onnx"}
# whose integer kernels run each target's INT8 (saturation.KERNELS)
KERNEL = {"openvino": "onednn", "ort": "mlas", "onnx-cpu": "mlas"}
# The graph forms each target gets, chosen by benchmarks/forms.py (README, "CPU graph
# forms"): a form is kept for a runtime where it made the graph faster on some model and
# slower (beyond timing noise) on none. global_pool made no difference anywhere (OpenVINO
# runs GlobalAveragePool as its ReduceMean); gate_product helps ONNX Runtime, whose Mul is
# one pass each, and not OpenVINO, which fuses x * a * b already. The ORT format runs
# without ONNX Runtime's x86 NCHWc layouts, where no form helped: it keeps the graph.
# ``--target-forms measure`` times them on the exporting machine instead (measure_forms).
# REQUIRED_FORMS are a target's for correctness, whatever they cost, and are never timed:
# OpenVINO's CPU plugin miscomputes a quantized ReduceMax (graph/cpu_forms.py, max_after_qdq), a
# Concat -> Q without AMX (quantized_concat) and runs CA's quantized Concats in U8 at one
# scale (README, "OpenVINO's INT8 gap": unsplit).
CORRECTNESS_FORMS = ("max_after_qdq", "quantized_concat")  # for a runtime's bugs, never speed
REQUIRED_FORMS = {"openvino": (*CORRECTNESS_FORMS, "unsplit"), "onnx-cpu": (), "ort": ()}
TARGET_FORMS = {"openvino": REQUIRED_FORMS["openvino"] + ("axis_pool",),
                "onnx-cpu": ("axis_pool", "unsplit", "gate_product"),
                "ort": ()}
SPEED_FORMS = {fmt: tuple(f for f in FORM_NAMES if f not in (*req, *CORRECTNESS_FORMS))
               for fmt, req in REQUIRED_FORMS.items()}
TARGET_FORM_CHOICES = {"fixed": "TARGET_FORMS, chosen by benchmarks/forms.py on x86",
                       "measure": "each speed form timed on this machine's target runtime"}


# The CPU a target (and int8-cpu) is for. portable: INT8 weights within the pair bound
# (saturation.portable_weights), so a CPU without VNNI computes what a VNNI CPU does.
TARGET_CPUS = {
    "portable": "every x86 and ARM CPU: INT8 weights within the 8-bit pair bound, so no "
                "pair sum saturates on a CPU without VNNI",
    "vnni": "CPUs with exact 8-bit dot products (AVX512-VNNI, AVX-VNNI, AMX, ARM): full "
            "8-bit weights; an x86 CPU without VNNI computes them otherwise (see the "
            "saturation report)",
}
PORTABLE_FORM = "portable_int8"  # the forms entry: INT8 layers whose weights were refitted


def forms_note(forms: dict[str, int] | None) -> str:
    """The graph forms a target's graph took, as the CLI and the report print them."""
    if not forms:
        return "the TensorRT graph as it is"
    return "graph forms: " + ", ".join(f"{k} ({v})" for k, v in forms.items())


def target_graph(fmt: str, onnx_path: Path, cpu: str = "portable",
                 forms: tuple[str, ...] | None = None
                 ) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The graph ``fmt``'s file is made from: ``onnx_path`` in ``forms`` (default: the
    target's TARGET_FORMS), with portable INT8 weights when ``cpu`` is "portable", and the
    rewrites each form made (the forms that made none left out)."""
    model = load_onnx(onnx_path)
    try:
        counts = apply_forms(model, TARGET_FORMS[fmt] if forms is None else forms)
    except Exception as exc:  # a graph the forms' shape inference cannot read
        raise ArtifactError(f"{onnx_path}: no {fmt} graph form: {first_line(exc)}") from None
    if cpu == "portable":
        counts[PORTABLE_FORM] = portable_weights(model)["layers"]
    return model, {k: v for k, v in counts.items() if v}


def write_target(fmt: str, onnx_path: Path, cpu: str = "portable",
                 forms: tuple[str, ...] | None = None
                 ) -> tuple[list[str], dict[str, int], onnx.ModelProto]:
    """The ``fmt`` form of an ONNX file, beside it, for ``cpu`` (TARGET_CPUS), in ``forms``
    (target_graph): the names of the files written, the rewrites each form made and the
    graph the files hold."""
    dst = onnx_path.with_suffix(SUFFIXES[fmt])
    model, counts = target_graph(fmt, onnx_path, cpu, forms)
    if fmt == "onnx-cpu":
        with atomic_path(dst) as tmp:
            onnx.save(model, str(tmp))
        return [dst.name], counts, model
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".form-") as tmp:
        src = Path(tmp) / onnx_path.name
        onnx.save(model, str(src))
        writer = write_ir if fmt == "openvino" else write_ort
        return writer(src, dst), counts, model


def write_ir(onnx_path: Path, xml: Path) -> list[str]:
    """The OpenVINO IR of an ONNX file (weights stored as the ONNX has them: no FP16
    compression of FP32 weights); the names of the files written."""
    ov = require_openvino()
    # read_model, not convert_model: convert_model's offline transformations throw on the
    # INT8 + FP16 form (OpenVINO 2026.4: TransposeFQ mixes f32 and f16 constants), and
    # compile_model applies the full CPU pipeline to the IR either way
    try:
        ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    except Exception as exc:
        first = first_line(exc)
        raise ArtifactError(f"{onnx_path}: OpenVINO cannot convert it: {first}") from None
    return [xml.name, xml.with_suffix(".bin").name]


def _replays(ort_file: Path) -> bool:
    """Whether ONNX Runtime loads ``ort_file`` replaying its saved runtime optimisations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    try:
        ort.InferenceSession(str(ort_file), so, providers=["CPUExecutionProvider"])
    except Exception:  # ORT raises its own types; any failure to load is the answer
        return False
    return True


def write_ort(onnx_path: Path, dst: Path) -> list[str]:
    """ONNX Runtime's ORT format of an ONNX file and the operator config of a minimal
    (mobile) build that runs it; the names of the files written.

    As ``convert_onnx_models_to_ort`` does in its runtime style (portable: the basic
    optimisations are applied, the rest are saved and replayed on the device, with no x86
    NCHWc layout), with one difference: an FP16 Q/DQ graph converts without ORT's
    WeightBiasQuantization, which miscomputes it (parity.FP16_QDQ_DISABLED). The config
    lists the operators of the file with and without its saved optimisations, since a
    device may apply either. Where ONNX Runtime cannot replay the optimisations it saved
    (1.32, on a U8 Q/DQ graph with CA's Concat: "Not enough produced nodes in the runtime
    optimization record"; a device would fail to load it), the file holds them applied."""
    import onnxruntime as ort
    from onnxruntime.tools.ort_format_model import create_config_from_models

    disabled = ["NchwcTransformer", *disabled_optimizers(graph_numerics(onnx_path))]
    operators = dst.with_name(dst.stem + "." + ORT_OPERATORS)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".ort-") as tmp:
        forms = {mode: Path(tmp) / f"{mode}.ort" for mode in ("save", "apply")}
        for mode, path in forms.items():
            so = ort.SessionOptions()
            so.log_severity_level = 3  # the converter's constant-folding notes are noise here
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.optimized_model_filepath = str(path)
            so.add_session_config_entry("session.save_model_format", "ORT")
            so.add_session_config_entry("session.qdqisint8allowed", "0")
            so.add_session_config_entry("optimization.minimal_build_optimizations", mode)
            try:
                ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"],
                                     disabled_optimizers=disabled)
            except Exception as exc:
                first = first_line(exc)
                raise ArtifactError(f"{onnx_path}: no ORT-format file: {first}") from None
        config = Path(tmp) / ORT_OPERATORS
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # its own level
        create_config_from_models(list(forms.values()), config, enable_type_reduction=False)
        lines = [line for line in config.read_text().splitlines()
                 if not line.startswith("# - ")]  # the temporary files' paths
        replays = _replays(forms["save"])
        lines.insert(1, f"# - {dst.name}, with and without its saved runtime optimisations"
                     if replays else f"# - {dst.name}, its runtime optimisations applied "
                     "(ONNX Runtime could not replay them saved)")
        config.write_text("\n".join(lines) + "\n")
        forms["save" if replays else "apply"].replace(dst)
        config.replace(operators)
    return [dst.name, operators.name]
