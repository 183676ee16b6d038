"""Stage: FP32 ONNX -> a CPU-tuned INT8 Q/DQ ONNX (``int8-cpu``) for ONNX Runtime on x86.

Not a TensorRT input: the TensorRT form (precision.quantize_int8: symmetric INT8
activations, Q/DQ only on the inputs of Conv/Gemm/MatMul) runs *slower* than FP32 on ONNX
Runtime's CPU provider, because ORT only replaces a Q/DQ group by an integer kernel when
the whole group is quantized, ``DQ -> op -> Q``:

* Conv outputs carry no Q in the TensorRT form, so ORT cannot form ``QLinearConv``: every
  conv stays FP32, and each Q/DQ pair (plus a DequantizeLinear of every weight, per run)
  is an extra pass over memory. MobileNetV2: 151 DequantizeLinear and 51 QuantizeLinear
  left after ORT's optimiser, 2 of 52 convs integer.
* With the conv output quantized but activations symmetric (zero point 0 in INT8), the
  ``ReLU6`` (Clip 0..6) between a conv and its Q cannot be folded into the Q (the Q still
  represents negatives), so ORT keeps float Clips and NHWC<->NCHW Transposes around them.
* With asymmetric UINT8 activations (zero point at 0 after a ReLU6) the Clip is exactly
  the Q's saturation and is removed; every Conv, Add, Concat, Gemm becomes a QLinear*
  kernel (U8S8, AVX512-VNNI where present) and the graph stays INT8 between layers. That
  is ONNX Runtime's own recommended CPU form, and what this stage writes, except that
  attention gates and the multiplies they feed stay FP32 (gate_paths).

TensorRT rejects it (UINT8, non-zero zero points), so it is a separate artifact,
``model.int8-cpu.onnx``, checked with the same INT8 parity threshold.
"""
from __future__ import annotations

from pathlib import Path

import onnx

from ..core.onnx_io import load_onnx
from ..graph.cpu_forms import apply_forms
from ..graph.view import Graph
from .calib import CalibData
from .common import PrecisionArtifact, name_nodes, write_model
from .int8 import static_qdq
from .saturation import portable_weights

PRECISION = "int8-cpu"
GATES = ("Softmax", "Sigmoid", "HardSigmoid")
# ops that only move a gate's values on their way to the op they scale
MOVES = ("Reshape", "Split", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand",
         "Slice", "Gather", "Concat", "Identity")
TARGET_METADATA = "deploy_attn.target"


def gate_paths(model: onnx.ModelProto) -> list[str]:
    """Names of the gates (GATES), the ops that move their outputs, and the ops those
    outputs feed: the nodes left float so attention weights reach their multiply in FP32.

    deploy: a UINT8 gate output is saturated at its calibrated maximum (SK's branch
    softmax: calibrated up to 0.72, reaching 1.0 on other inputs, cosine 0.54) or rounded
    to a few levels (MHSA's softmax over 1024 positions, cosine 0.91); in FP32 both stay
    above 0.9999. ONNX Runtime quantizes a tensor whenever any consumer is quantized, so
    the whole path has to be excluded, not the gate alone."""
    consumers = Graph(model).consumers
    keep: dict[str, None] = {}
    todo = [n for n in model.graph.node if n.op_type in GATES]
    while todo:
        node = todo.pop()
        if node.name in keep:
            continue
        keep[node.name] = None
        if node.op_type in GATES or node.op_type in MOVES:
            todo += [c for o in node.output for c in consumers.get(o, [])]
    return list(keep)


def quantize_int8_cpu(src: str | Path, dst: str | Path, calib: CalibData,
                      method: str = "minmax", reduce_range: bool = False,
                      float_gates: bool = True, cache_dir: str | Path | None = None,
                      portable: bool = True, forms: tuple[str, ...] = ()) -> PrecisionArtifact:
    """INT8 Q/DQ for ONNX Runtime CPU: UINT8 asymmetric activations, INT8 symmetric
    per-channel weights, every op type ORT has an integer kernel for, calibrated on
    ``calib``; with ``float_gates`` the gates and the paths to the ops they scale stay
    FP32 (gate_paths). ``portable`` refits the weights to the 8-bit pair bound
    (saturation.portable_weights), so x86 CPUs without VNNI compute what VNNI CPUs do;
    ``reduce_range`` (7-bit weights) does the same at a higher accuracy cost. ``forms``
    (graph/cpu_forms.FORMS names) are applied to the FP32 graph first, so the graph quantized is the
    one ONNX Runtime's CPU target runs (calibration then measures its tensors)."""
    model = load_onnx(src)
    applied = apply_forms(model, forms) if forms else {}
    model = name_nodes(model)
    excluded = gate_paths(model) if float_gates else []
    q = static_qdq(model, None, calib, method, precision=PRECISION, activation_type="uint8",
                   op_types=None, exclude=excluded, extra_options={},
                   reduce_range=reduce_range, cache_dir=cache_dir,
                   metadata={TARGET_METADATA: "onnxruntime-cpu (not a TensorRT input)"})
    refit = portable_weights(q) if portable else None
    write_model(q, dst)
    ops = [n.op_type for n in q.graph.node]
    dq_out = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = sorted({n.op_type for n in q.graph.node if n.op_type != "QuantizeLinear"
                        and n.op_type != "DequantizeLinear" and set(n.input) & dq_out})
    return PrecisionArtifact(Path(dst), {
        "method": method, "calibration": calib.as_dict(),
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "quantized_op_types": quantized, "reduce_range": reduce_range,
        "float_nodes": excluded, "portable_int8": refit,
        "forms": {k: v for k, v in applied.items() if v},
        "scheme": "QDQ for ONNX Runtime CPU: UINT8 asymmetric per-tensor activations, INT8 "
                  "symmetric per-channel weights, all ops with integer kernels (Conv, Add, "
                  "Mul, Concat, Gemm, ...) except gates and the paths to the ops they scale"
                  f"{'' if float_gates else ' (gates quantized too)'}; not accepted by TensorRT"})
