"""INT8 for TensorRT: calibrated ranges and explicit Q/DQ under NVIDIA's placement rules
(docs/TENSORRT.md, sections 2 and 3)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from ..core.errors import ConfigError
from ..core.onnx_io import load_onnx
from .calib import CalibData
from .common import CALIB_METHODS, PRECISION_METADATA, PrecisionArtifact, name_nodes, \
    save_artifact, set_metadata, write_model
from .placement import QUANTIZED_OPS, finish_placement, int8_placement


# --- INT8 ----------------------------------------------------------------------------
class _Reader:
    """ONNX Runtime CalibrationDataReader over an array, one model batch at a time."""

    def __init__(self, name: str, inputs: np.ndarray, batch: int) -> None:
        self._items = iter([{name: inputs[i:i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self):
        return next(self._items, None)


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """The Conv/ConvTranspose/Gemm/MatMul nodes of a Q/DQ graph that read a DQ output."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in QUANTIZED_OPS and any(i in dq for i in n.input)]


ENTROPY_BINS, ENTROPY_LEVELS = 2048, 128  # TensorRT's histogram of |x|, 7 bits + sign


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = ENTROPY_LEVELS) -> float:
    """The clipping threshold of a histogram of |x| that minimises the KL divergence
    between the clipped distribution and its ``levels``-level quantization (the method of
    NVIDIA's "8-bit Inference with TensorRT", GTC 2017: outliers folded into the last
    kept bin, each quantized level spread evenly over the bins that were non-zero)."""
    hist = np.asarray(hist, dtype=np.float64).copy()
    hist[0] = 0.0  # the spike of exact zeros (ReLU, padding) is exactly representable
    if hist.sum() == 0 or len(hist) <= levels:
        return float(edges[-1])
    best, best_i = np.inf, len(hist)
    for i in range(levels, len(hist) + 1):
        ref = hist[:i].copy()
        ref[-1] += hist[i:].sum()
        level = np.arange(i) * levels // i  # which quantized level each kept bin falls in
        nonzero = hist[:i] > 0
        counts = np.bincount(level, weights=hist[:i], minlength=levels)
        used = np.bincount(level, weights=nonzero, minlength=levels)
        q = np.where(nonzero, counts[level] / np.maximum(used[level], 1), 0.0)
        p_sum, q_sum = ref.sum(), q.sum()
        mask = ref > 0
        if q_sum == 0 or (q[mask] == 0).any():
            continue  # the quantized distribution cannot represent a non-empty bin
        kl = float(np.sum(ref[mask] / p_sum * np.log((ref[mask] / p_sum) / (q[mask] / q_sum))))
        if kl < best:
            best, best_i = kl, i
    return float(edges[best_i])


def _entropy_ranges(src: Path, reader: _Reader, op_types: Sequence[str] | None,
                    cache: Path) -> None:
    """Entropy (KL) calibration as TensorRT does it, written to ONNX Runtime's calibration
    cache. ONNX Runtime's own entropy calibrator histograms signed values and spreads its
    quantized bins over both signs, so 128 bins model 64 levels per side (a 7-bit grid,
    which picks clipping thresholds far too low: cosine 0.32 on mobilenetv2_ca where
    minmax gave 0.85), and its pure-Python search took minutes. Here ONNX Runtime's
    percentile collector gathers the histograms of |x| and the search is vectorised; each
    range is the observed one clipped to the threshold (so asymmetric activations keep
    their sign range)."""
    from onnxruntime.quantization import CalibrationMethod, save_tensors_data
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator

    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(
            src, list(op_types) if op_types else None,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"symmetric": True, "num_bins": ENTROPY_BINS, "percentile": 100.0})
        calibrator.collect_data(reader)
        ranges = {}
        for name, (hist, edges, low, high) in calibrator.collector.histogram_dict.items():
            t = np.float32(entropy_threshold(hist, edges))
            ranges[name] = (np.array(max(low, -t), np.float32),
                            np.array(min(high, t), np.float32), hist, edges)
        save_tensors_data(TensorsData(CalibrationMethod.Entropy, ranges), cache)


def static_qdq(model: onnx.ModelProto, dst: str | Path | None, calib: CalibData, method: str, *,
               precision: str, activation_type: str, op_types: Sequence[str] | None,
               exclude: Sequence[str], extra_options: dict, reduce_range: bool = False,
               include: Sequence[str] | None = None,
               cache_dir: str | Path | None = None,
               metadata: dict | None = None) -> onnx.ModelProto:
    """ONNX Runtime's ``quantize_static`` in QDQ format with per-channel INT8 weights on
    ``model`` (nodes named), calibrated on ``calib`` by ``method`` (entropy by
    _entropy_ranges), with ``precision`` and the calibration in its metadata (plus
    ``metadata``), written atomically to ``dst`` (None: not written, for a caller that
    edits it first); ``include`` limits quantization to those nodes.
    ``activation_type`` is "int8" or "uint8"; the calibration cache
    (per precision and method) is kept in ``cache_dir`` for re-quantizing with other
    exclusions. Returns the quantized model."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIB_METHODS:
        raise ConfigError(f"calibration method '{method}': choose from {', '.join(CALIB_METHODS)}")
    inp = model.graph.input[0]
    batch = inp.type.tensor_type.shape.dim[0].dim_value or len(calib.inputs)
    root = logging.getLogger()  # quantize_static logs a pre-processing hint at WARNING
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "named.onnx", Path(tmp) / "quantized.onnx"
        onnx.save(model, str(src))
        cache = Path(cache_dir or tmp) / f"calib-{precision}-{method}.json"
        if method == "entropy" and not cache.is_file():
            _entropy_ranges(src, _Reader(inp.name, calib.inputs, batch), op_types, cache)
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(src), str(out), _Reader(inp.name, calib.inputs, batch),
                quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8, per_channel=True,
                activation_type={"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activation_type],
                reduce_range=reduce_range, op_types_to_quantize=list(op_types) if op_types else None,
                nodes_to_exclude=list(exclude),
                nodes_to_quantize=list(include) if include else None,
                calibrate_method={"minmax": CalibrationMethod.MinMax,
                                  "entropy": CalibrationMethod.Entropy,
                                  "percentile": CalibrationMethod.Percentile}[method],
                calibration_cache_path=cache,
                extra_options={"CalibPercentile": 99.999, **extra_options})
        finally:
            root.setLevel(level)
        q = load_onnx(out)
    set_metadata(q, PRECISION_METADATA, precision)
    set_metadata(q, "deploy_attn.calibration", calib.as_dict())
    for key, value in (metadata or {}).items():
        set_metadata(q, key, value)
    if dst is not None:
        write_model(q, dst)
    return q


def quantize_int8(src: str | Path, dst: str | Path, calib: CalibData, method: str = "minmax",
                  exclude: Sequence[str] = (), cache_dir: str | Path | None = None
                  ) -> PrecisionArtifact:
    """Explicit Q/DQ INT8 in the form TensorRT accepts (ONNX Runtime's quantize_static,
    QDQ format, symmetric, per-channel weights), calibrated on ``calib``, placed by
    NVIDIA's rules (placement.py), with an FP32 remainder (``int8-fp32``; fp16_remainder
    makes the ``int8`` form from it)."""
    src = Path(src)
    model = name_nodes(load_onnx(src))
    placement = int8_placement(model)
    targets = placement.candidates
    if not targets:
        raise ConfigError(f"{src}: no {'/'.join(QUANTIZED_OPS)} nodes to quantize, so an INT8 "
                          "graph would be the FP32 graph; use fp32 or fp16 for this model")
    unknown = sorted(set(exclude) - set(targets))
    if unknown:
        raise ConfigError(f"--exclude: {', '.join(unknown)} not among the quantizable nodes "
                          f"({', '.join(targets[:6])}{', ...' if len(targets) > 6 else ''})")
    chosen = placement.quantized(exclude)
    if not chosen:
        placement.residual = {}
    adds = list(placement.residual)
    note = ""
    if chosen:
        q = static_qdq(  # written once placed
            model, None, calib, method, precision="int8-fp32", activation_type="int8",
            op_types=QUANTIZED_OPS + ("Add",), exclude=(), include=chosen + adds,
            cache_dir=cache_dir,
            extra_options={
                # deploy: TensorRT takes symmetric INT8 only (zero point 0), per-tensor
                # activations and per-channel weights; Conv/Gemm/MatMul and Add outputs
                # stay float so they fuse with what follows; biases stay float (TensorRT
                # quantizes them).
                "ActivationSymmetric": True, "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS) + ["Add"],
                "QuantizeBias": False,
                "QDQOpTypePerChannelSupportToAxis": {"ConvTranspose": 1, "MatMul": 1},
            })
        residual = finish_placement(q, placement, chosen)
        write_model(q, dst)
    else:  # every candidate is a layer TensorRT runs faster unquantized
        q, residual = model, 0
        note = ("no node meets the INT8 placement rules: the graph has no Q/DQ, and "
                "TensorRT runs these layers in FP16/FP32")
        set_metadata(q, "deploy_attn.calibration", calib.as_dict())
        save_artifact(q, dst, "int8-fp32", calib)
    ops = [n.op_type for n in q.graph.node]
    return PrecisionArtifact(Path(dst), {
        "method": method, "calibration": calib.as_dict(),
        "quantized_nodes": len(chosen), "candidate_nodes": len(targets),
        "excluded_nodes": list(exclude), "placement": placement.as_dict(),
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "residual_adds_quantized": residual, **({"note": note} if note else {}),
        "scheme": "QDQ, symmetric INT8, per-tensor activations, per-channel weights, "
                  "inputs of Conv/ConvTranspose/Gemm/MatMul and the residual input of skip "
                  "Adds, placed by NVIDIA's rules; gates unquantized"})


def leave_fp32(int8: onnx.ModelProto, fp32: onnx.ModelProto,
               names: Sequence[str]) -> onnx.ModelProto:
    """A copy of the INT8 graph in which the nodes ``names`` take their FP32 inputs and
    weights again (their Q/DQ bypassed): what excluding them from quantization gives,
    without recalibrating or re-quantizing."""
    original = {n.name: n for n in fp32.graph.node}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(int8)
    have = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name in names:
            del node.input[:]
            node.input.extend(original[node.name].input)
            for name in original[node.name].input:
                if name in fp32_inits and name not in have:
                    model.graph.initializer.append(fp32_inits[name])
                    have.add(name)
    return model
