"""Stages: FP32 ONNX -> FP16 ONNX with FP32 islands, and FP32 ONNX -> INT8 Q/DQ ONNX.

TensorRT 10.12 deprecated its FP16/INT8 builder flags and 11.0 removed them: precision now
lives in the graph, built strongly typed. The same graphs run in ONNX Runtime on the CPU,
so every precision decision is made and verified here (see shared TENSORRT.md).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import ConfigError
from ..graph_rewrite import Graph
from .artifacts import atomic_path
from .calib import CalibData
from .onnx_io import load_onnx, toposort
from .parity import compare, ort_batches, ort_outputs, ort_session
from .placement import QUANTIZED_OPS, finish_placement, int8_placement

# Artifacts, in the order a job makes them: int8-fp32 before int8 (the INT8 + FP16 form is
# derived from the FP32-remainder graph), int8-cpu last.
PRECISIONS = ("fp32", "fp16", "int8-fp32", "int8", "int8-cpu")
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8", "int8-fp32")
FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take FP16 scales from opset 19
AUTOCAST_MAX = 512.0  # NVIDIA ModelOpt AutoCast: keep a node FP32 above this magnitude
FP16_MAX = 65504.0
CALIB_METHODS = ("minmax", "entropy", "percentile")
PRECISION_METADATA = "deploy_attn.precision"  # ONNX metadata: which precision stage wrote it


@dataclass(frozen=True)
class KeptNode:
    name: str
    op_type: str
    reason: str


@dataclass
class PrecisionArtifact:
    path: Path
    details: dict = field(default_factory=dict)


def _name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (block lists and reports refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


def _set_metadata(model: onnx.ModelProto, key: str, value: object) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = json.dumps(value)
            return
    model.metadata_props.add(key=key, value=json.dumps(value))


def tensor_ranges(model: onnx.ModelProto, inputs: np.ndarray) -> dict[str, float]:
    """Max |value| of every float tensor the graph computes, over ``inputs``."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in known and types.get(out) == TensorProto.FLOAT:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
                known.add(out)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = ort_session(path)
        names = [o.name for o in session.get_outputs()]
        ranges: dict[str, float] = {session.get_inputs()[0].name: float(np.abs(inputs).max())}
        for outs in ort_batches(session, inputs):
            for name, value in zip(names, outs):
                if np.issubdtype(value.dtype, np.floating) and value.size:
                    ranges[name] = max(ranges.get(name, 0.0), float(np.abs(value).max()))
    return ranges


def fp32_islands(model: onnx.ModelProto, ranges: dict[str, float],
                 threshold: float = AUTOCAST_MAX) -> list[KeptNode]:
    """Nodes to keep in FP32, by measurement: an input or output whose magnitude exceeds
    ``threshold`` on the calibration inputs, or an initializer beyond the FP16 range."""
    inits = {i.name: i for i in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        big_init = [n for n in node.input if n in inits and inits[n].data_type == TensorProto.FLOAT
                    and np.abs(numpy_helper.to_array(inits[n])).max(initial=0) > FP16_MAX]
        peak = max((ranges.get(t, 0.0) for t in list(node.input) + list(node.output)), default=0.0)
        if big_init:
            kept.append(KeptNode(node.name, node.op_type,
                                 f"initializer {big_init[0]} exceeds the FP16 range {FP16_MAX:g}"))
        elif peak > threshold:
            kept.append(KeptNode(node.name, node.op_type,
                                 f"activation magnitude {peak:.4g} > {threshold:g}"))
    return kept


def _drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Remove Cast(FP32->FP16) -> Cast(FP16->FP32) between two FP32 islands: the converter
    inserts them at every island boundary, and the round trip through FP16 would
    overflow exactly the values the islands exist to keep (e.g. CAM's energies)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    to = {n.name: next((a.i for a in n.attribute if a.name == "to"), None) for n in graph.node
          if n.op_type == "Cast"}
    removed = set()
    for second in [n for n in graph.node if n.op_type == "Cast" and to[n.name] == TensorProto.FLOAT]:
        first = producer.get(second.input[0])
        if first is None or first.op_type != "Cast" or to[first.name] != TensorProto.FLOAT16:
            continue
        source = first.input[0]
        if second.output[0] in outputs:
            continue
        for user in consumers.get(second.output[0], []):
            for k, name in enumerate(user.input):
                if name == second.output[0]:
                    user.input[k] = source
        removed.add(id(second))
        if all(id(u) in removed for u in consumers.get(first.output[0], [])):
            removed.add(id(first))
    keep = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(keep)
    return len(removed)


def fp16_overflows(model: onnx.ModelProto, ranges: dict[str, float]) -> list[str]:
    """Tensors the FP16 graph casts to FP16 although their measured FP32 magnitude
    exceeds the FP16 range: they become Inf on any FP16 runtime. (ONNX Runtime's CPU
    provider computes some FP16 ops in FP32 and may not show it, so this is checked
    from the measured ranges rather than by running the graph.)"""
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    half = {v.name for v in inferred if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    found = []
    for n in model.graph.node:
        is_cast16 = n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16
                                                for a in n.attribute)
        # a tensor computed in FP16 keeps its FP32 name; a Cast to FP16 gets a new one
        for name in ([n.input[0]] if is_cast16 else [o for o in n.output if o in half]):
            peak = ranges.get(name, 0.0)
            if peak > FP16_MAX:
                found.append(f"{name} (|x| up to {peak:.4g})")
    return found


def _to_fp16(model: onnx.ModelProto, ranges: dict[str, float], threshold: float,
             keep: Callable[[onnx.ModelProto, set[str]], set[str]] | None = None
             ) -> tuple[onnx.ModelProto, dict]:
    """``model`` in FP16 with FP32 inputs/outputs and measured FP32 islands behind Casts
    (``keep`` may add nodes to the islands). The conversion is onnxconverter-common's
    float16 converter with a node block list (ONNX Runtime's bundled copy of it names
    inserted Casts after the tensor, and emits duplicates when one tensor feeds two
    blocked nodes)."""
    from onnxconverter_common.float16 import convert_float_to_float16

    kept = fp32_islands(model, ranges, threshold)
    block = {k.name for k in kept}
    if keep is not None:
        block = keep(model, block)
    fp16 = toposort(convert_float_to_float16(model, keep_io_types=True,
                                             node_block_list=sorted(block)))
    round_trips = _drop_cast_round_trips(fp16)
    return fp16, {
        "fp32_kept_nodes": [asdict(k) for k in kept], "threshold": threshold,
        "casts": sum(n.op_type == "Cast" for n in fp16.graph.node),
        "cast_round_trips_removed": round_trips, "overflows": fp16_overflows(fp16, ranges),
        "converter": "onnxconverter_common.float16 (keep_io_types, node_block_list)"}


def _write(model: onnx.ModelProto, dst: str | Path) -> None:
    """Write ``model`` atomically to ``dst``, once the written file passes the full check."""
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
        load_onnx(tmp)


def _save(model: onnx.ModelProto, dst: str | Path, precision: str, calib: CalibData) -> None:
    _set_metadata(model, PRECISION_METADATA, precision)
    if calib.preprocess:
        _set_metadata(model, "deploy_attn.preprocess", calib.preprocess.as_dict())
    _write(model, dst)


def convert_fp16(src: str | Path, dst: str | Path, calib: CalibData,
                 threshold: float = AUTOCAST_MAX,
                 ranges: dict[str, float] | None = None) -> PrecisionArtifact:
    """FP16 weights and compute, FP32 graph inputs/outputs, measured FP32 islands behind
    Casts (``ranges``: the FP32 graph's tensor magnitudes on ``calib``, measured here when
    not given)."""
    model = _name_nodes(load_onnx(src))
    ranges = ranges if ranges is not None else tensor_ranges(model, calib.inputs)
    fp16, details = _to_fp16(model, ranges, threshold)
    _save(fp16, dst, "fp16", calib)
    return PrecisionArtifact(Path(dst), details)


def _qdq_follows_consumers(model: onnx.ModelProto, block: set[str]) -> set[str]:
    """The FP32 islands plus the DequantizeLinear nodes that feed only island nodes and
    the QuantizeLinear nodes that feed only those: a quantized input of an FP32 node
    stays an FP32 Q/DQ pair, with no Cast between the DQ and its consumer (TensorRT fuses
    a DQ only into the op that reads it directly)."""
    consumers = Graph(model).consumers
    block = set(block)
    for op in ("DequantizeLinear", "QuantizeLinear"):
        for n in model.graph.node:
            users = consumers.get(n.output[0], [])
            if n.op_type == op and users and all(u.name in block for u in users):
                block.add(n.name)
    return block


def fp16_remainder(qdq: str | Path, dst: str | Path, calib: CalibData,
                   ranges: dict[str, float], threshold: float = AUTOCAST_MAX
                   ) -> PrecisionArtifact:
    """The INT8 form TensorRT users build: the Q/DQ graph ``qdq`` (FP32 remainder) with
    everything it does not quantize in FP16, by the FP16 stage's rule (``ranges``
    measured on the FP32 graph, whose node and tensor names it shares; the same islands
    and overflow check). Q/DQ scales become FP16, so DequantizeLinear outputs FP16 into
    the ops TensorRT fuses it with; that needs opset 19, which the graph is converted to
    when older."""
    from onnx import version_converter

    source = load_onnx(qdq)
    opset = next((o.version for o in source.opset_import if o.domain in ("", "ai.onnx")), 0)
    model = version_converter.convert_version(source, FP16_QDQ_OPSET) \
        if opset < FP16_QDQ_OPSET else source
    # the converters keep the metadata (the calibration record, the quantizer's own)
    fp16, details = _to_fp16(model, ranges, threshold, keep=_qdq_follows_consumers)
    _save(fp16, dst, "int8", calib)
    details.update(remainder="fp16", opset=max(opset, FP16_QDQ_OPSET))
    return PrecisionArtifact(Path(dst), details)


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
    _set_metadata(q, PRECISION_METADATA, precision)
    _set_metadata(q, "deploy_attn.calibration", calib.as_dict())
    for key, value in (metadata or {}).items():
        _set_metadata(q, key, value)
    if dst is not None:
        _write(q, dst)
    return q


def quantize_int8(src: str | Path, dst: str | Path, calib: CalibData, method: str = "minmax",
                  exclude: Sequence[str] = (), cache_dir: str | Path | None = None
                  ) -> PrecisionArtifact:
    """Explicit Q/DQ INT8 in the form TensorRT accepts (ONNX Runtime's quantize_static,
    QDQ format, symmetric, per-channel weights), calibrated on ``calib``, placed by
    NVIDIA's rules (placement.py), with an FP32 remainder (``int8-fp32``; fp16_remainder
    makes the ``int8`` form from it)."""
    src = Path(src)
    model = _name_nodes(load_onnx(src))
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
        _write(q, dst)
    else:  # every candidate is a layer TensorRT runs faster unquantized
        q, residual = model, 0
        note = ("no node meets the INT8 placement rules: the graph has no Q/DQ, and "
                "TensorRT runs these layers in FP16/FP32")
        _set_metadata(q, "deploy_attn.calibration", calib.as_dict())
        _save(q, dst, "int8-fp32", calib)
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


def int8_sensitivity(src: str | Path, int8: str | Path, score: Callable[[Path], float],
                     progress: Callable[[str], None] | None = None,
                     base: float | None = None) -> list[dict]:
    """Per quantized node: the score (e.g. cosine vs the reference) of the INT8 graph with
    that node alone left FP32, and its gain over the INT8 graph's own score ``base``
    (scored here when not given); most sensitive first."""
    fp32 = _name_nodes(load_onnx(src))
    q = load_onnx(int8)
    targets = quantized_nodes(q)
    base = score(Path(int8)) if base is None else base
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one.onnx"
        for i, name in enumerate(targets, 1):
            if progress and (i == 1 or i % 10 == 0 or i == len(targets)):
                progress(f"int8 sensitivity [{i}/{len(targets)}]")
            onnx.save(leave_fp32(q, fp32, [name]), str(path))
            s = score(path)
            rows.append({"node": name,
                         "op_type": next(n.op_type for n in fp32.graph.node if n.name == name),
                         "score_with_node_fp32": s, "gain": s - base})
    rows.sort(key=lambda r: -r["gain"])
    return rows


def auto_exclude(src: str | Path, int8: str | Path, rows: list[dict],
                 score: Callable[[Path], float], target: float, base: float,
                 max_fraction: float = 0.25,
                 confirm: Callable[[list[str]], float] | None = None) -> list[str]:
    """The fewest most-sensitive nodes to leave FP32 for ``score >= target`` (none when
    the INT8 graph's own score ``base`` meets it), at most ``max_fraction`` of the
    quantized nodes. Candidates are scored on the bypassed graph (cheap); ``confirm(nodes)``,
    when given, re-quantizes with ``nodes`` excluded and scores that, and nodes are added
    until the real artifact meets the target too (recalibrating without them shifts the
    scales of their neighbours); its last call is with the nodes returned."""
    if base >= target:
        return []
    fp32, q = _name_nodes(load_onnx(src)), load_onnx(int8)
    candidates = rows[: max(1, int(len(rows) * max_fraction))]
    chosen: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.onnx"
        for row in candidates:
            chosen.append(row["node"])
            onnx.save(leave_fp32(q, fp32, chosen), str(path))
            if score(path) >= target:
                break
    if confirm is not None:
        rest = iter(candidates[len(chosen):])
        while confirm(chosen) < target and (row := next(rest, None)) is not None:
            chosen.append(row["node"])
    return chosen


def cosine_scorer(reference_outputs: np.ndarray, inputs: np.ndarray) -> Callable[[Path], float]:
    """Cosine similarity of an ONNX file's outputs on ``inputs`` to ``reference_outputs``
    (in the runtime configuration the checks trust)."""
    def score(path: Path) -> float:
        return compare(ort_outputs(ort_session(path, verify=True), inputs),
                       reference_outputs).cosine

    return score
