"""FP16: FP32 islands where values overflow, and the FP16 remainder of an INT8 graph."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..core.onnx_io import attr, load_onnx, toposort
from ..graph.view import Graph
from .calib import CalibData
from .common import FP16_QDQ_OPSET, KeptNode, PrecisionArtifact, name_nodes, save_artifact, \
    tensor_ranges

AUTOCAST_MAX = 512.0  # NVIDIA ModelOpt AutoCast: keep a node FP32 above this magnitude
FP16_MAX = 65504.0


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
    g = Graph(model)
    graph, producer, consumers, outputs = g.graph, g.producer, g.consumers, g.outputs
    to = {n.name: attr(n, "to", None) for n in graph.node if n.op_type == "Cast"}
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
        is_cast16 = n.op_type == "Cast" and attr(n, "to", None) == TensorProto.FLOAT16
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


def convert_fp16(src: str | Path, dst: str | Path, calib: CalibData,
                 threshold: float = AUTOCAST_MAX,
                 ranges: dict[str, float] | None = None) -> PrecisionArtifact:
    """FP16 weights and compute, FP32 graph inputs/outputs, measured FP32 islands behind
    Casts (``ranges``: the FP32 graph's tensor magnitudes on ``calib``, measured here when
    not given)."""
    model = name_nodes(load_onnx(src))
    ranges = ranges if ranges is not None else tensor_ranges(model, calib.inputs)
    fp16, details = _to_fp16(model, ranges, threshold)
    save_artifact(fp16, dst, "fp16", calib)
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
    save_artifact(fp16, dst, "int8", calib)
    details.update(remainder="fp16", opset=max(opset, FP16_QDQ_OPSET))
    return PrecisionArtifact(Path(dst), details)
