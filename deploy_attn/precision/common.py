"""What every precision stage shares: the names, the artifact record, tensor ranges."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..core.files import atomic_path
from ..core.onnx_io import load_onnx
from ..runtime.ort import ort_batches, ort_session
from .calib import CalibData


# Artifacts, in the order a job makes them: int8-fp32 before int8 (the INT8 + FP16 form is
# derived from the FP32-remainder graph), int8-cpu last.
PRECISIONS = ("fp32", "fp16", "int8-fp32", "int8", "int8-cpu")
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8", "int8-fp32")
FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take FP16 scales from opset 19


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


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (block lists and reports refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


def set_metadata(model: onnx.ModelProto, key: str, value: object) -> None:
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


def write_model(model: onnx.ModelProto, dst: str | Path) -> None:
    """Write ``model`` atomically to ``dst``, once the written file passes the full check."""
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
        load_onnx(tmp)


def save_artifact(model: onnx.ModelProto, dst: str | Path, precision: str, calib: CalibData) -> None:
    set_metadata(model, PRECISION_METADATA, precision)
    if calib.preprocess:
        set_metadata(model, "deploy_attn.preprocess", calib.preprocess.as_dict())
    write_model(model, dst)
