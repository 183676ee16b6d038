"""deploy-attn's TensorRT INT8 forms side by side with NVIDIA TensorRT Model Optimizer's
(``modelopt.onnx.quantization.quantize``) on the same FP32 ONNX and the same calibration
images: max (minmax) and entropy calibration, each with an FP32 and an FP16 remainder.

    python3 benchmarks/vs_modelopt.py [--work DIR]

The model is mobilenetv2_ca trained on scikit-learn's digits (1x32x32, 3 epochs, as
examples/train_digits.py trains it), exported FP32 by deploy-attn; calibration is 128
training PNGs, the figures are on the 540 test images: accuracy, and the cosine of the
logits against PyTorch's. Every artifact runs in the configuration deploy-attn's checks
trust (ONNX Runtime CPU, no graph optimisation for FP16-bearing graphs).

ModelOpt is optional and not a test dependency: its ``[onnx]`` extra pulls
onnxruntime-gpu and CUDA packages, so install it without its dependencies plus the CPU
ones its ONNX path imports:

    pip install --no-deps nvidia-modelopt==0.47.0
    pip install onnx_graphsurgeon onnxslim ml_dtypes nvidia-ml-py tqdm lief
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from common import footer, header, log, parser, print_table, work_dir

import deploy_attn
from deploy_attn.commands.labelled import dataset_arrays, load_dataset
from deploy_attn.core.numerics import compare
from deploy_attn.datasets import TrainConfig, digits, train
from deploy_attn.precision.calib import image_folder
from deploy_attn.precision.common import name_nodes, tensor_ranges
from deploy_attn.precision.fp16 import fp16_remainder
from deploy_attn.precision.int8 import quantize_int8, quantized_nodes
from deploy_attn.registry import get_spec
from deploy_attn.runtime.ort import ort_outputs, ort_session
from deploy_attn.runtime.pytorch import torch_outputs
from deploy_attn.sources import default_preprocess

NAME, SIZE, CALIB, CLASSES, SEED = "mobilenetv2_ca", (32, 32), 128, 10, 0
RECIPE = TrainConfig(epochs=3, lr=0.05)  # examples/train_digits.py's for this model
METHODS = {"minmax": "max", "entropy": "entropy"}  # ours -> ModelOpt's name


def prepare(work: Path):
    """The digits ImageFolders (``train/<digit>/*.png``), the trained checkpoint and the
    FP32 export (cached)."""
    spec = get_spec(NAME)
    pre = default_preprocess(spec.kind, spec.input_shape(1, 1, SIZE))
    if not (work / "digits" / "test").is_dir():
        log("writing the digits as PNGs")
        digits(work / "digits", pre, seed=SEED)
    sets = {s: work / "digits" / s for s in ("train", "test")}
    ckpt = work / "mobilenetv2_ca-digits.pt"
    if not ckpt.is_file():
        log(f"training {NAME} on the digits ({RECIPE.epochs} epochs)")
        x, y = dataset_arrays(load_dataset(sets["train"], "classifier", CLASSES), pre)
        model = deploy_attn.create_model(NAME, channels=1, input_size=SIZE,
                                         num_classes=CLASSES, seed=SEED)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small convolutions: faster and reproducible on one thread
        try:
            train(model, x, y, RECIPE)
        finally:
            torch.set_num_threads(threads)
        torch.save(model.state_dict(), ckpt)
    export = work / "export"
    if not (export / "model.onnx").is_file():
        log("exporting the FP32 graph")
        deploy_attn.export(NAME, out_dir=export, channels=1, input_size=SIZE,
                           num_classes=CLASSES, weights=ckpt)
    return pre, sets, export


def modelopt_int8(src: Path, dst: Path, calib: np.ndarray, method: str, remainder: str) -> float:
    """ModelOpt's INT8 in a subprocess: importing it patches ONNX Runtime's calibrators
    (modelopt/onnx/quantization/ort_patching.py), which would change deploy-attn's own
    calibration in the same process."""
    import subprocess

    data = dst.with_suffix(".calib.npy")
    np.save(data, calib)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--modelopt-worker", str(src), str(dst),
                    str(data), METHODS[method], remainder], check=True)
    data.unlink()
    return time.perf_counter() - t0


def modelopt_worker(src: str, dst: str, data: str, method: str, remainder: str) -> None:
    from modelopt.onnx.quantization import quantize

    logging.getLogger("modelopt").setLevel(logging.ERROR)
    quantize(src, quantize_mode="int8", calibration_data=np.load(data),
             calibration_method=method, high_precision_dtype=remainder, output_path=dst,
             calibration_eps=["cpu"], log_level="ERROR")


def ours_int8(src: Path, dst: Path, calib, method: str, remainder: str, ranges) -> float:
    t0 = time.perf_counter()
    qdq = dst.with_name(dst.stem + ".qdq-fp32.onnx")
    quantize_int8(src, qdq if remainder == "fp16" else dst, calib, method,
                  cache_dir=dst.parent)
    if remainder == "fp16":
        fp16_remainder(qdq, dst, calib, ranges)
    return time.perf_counter() - t0


def placement_summary(path: Path) -> tuple[int, int, int, int]:
    """Q count, DQ count, weighted nodes reading a DQ, Adds with an input through a DQ."""
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    adds = sum(1 for n in model.graph.node if n.op_type == "Add" and any(i in dq for i in n.input))
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear"), \
        len(quantized_nodes(model)), adds


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    import importlib.metadata

    try:
        modelopt_version = importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError as exc:
        sys.exit(f"vs_modelopt.py: ModelOpt is not importable ({exc}); see the install "
                 "lines at the top of this file")
    t0 = time.perf_counter()
    work = work_dir(args.work) / "vs_modelopt"
    pre, sets, export = prepare(work)
    src = export / "model.onnx"
    calib = image_folder(sets["train"], pre, CALIB)
    test, labels = dataset_arrays(load_dataset(sets["test"], "classifier", CLASSES), pre)
    card = deploy_attn.open_export(export).card()
    ref = torch_outputs(card.module, test)
    ranges = tensor_ranges(name_nodes(onnx.load(str(src))), calib.inputs)
    header("deploy-attn vs ModelOpt INT8 (digits-trained mobilenetv2_ca, 1x32x32)", args)
    rows = [["PyTorch FP32", "-", "-", "-", "-", "-", "1.00000",
             f"{100 * float((ref.argmax(1) == labels).mean()):.2f}", "-", "-"]]
    for method in METHODS:
        for remainder in ("fp32", "fp16"):
            for tool, make in (("deploy-attn", ours_int8), (f"ModelOpt {modelopt_version}",
                                                             modelopt_int8)):
                dst = work / f"{'ours' if tool == 'deploy-attn' else 'modelopt'}-{method}-" \
                             f"{remainder}.onnx"
                log(f"{tool}: {method}, {remainder} remainder")
                seconds = make(src, dst, calib.inputs, method, remainder) if make is \
                    modelopt_int8 else make(src, dst, calib, method, remainder, ranges)
                y = ort_outputs(ort_session(dst, verify=True), test)
                q, d, weighted, adds = placement_summary(dst)
                rows.append([tool, method, remainder, f"{q}/{d}", weighted, adds,
                             f"{compare(y, ref).cosine:.5f}",
                             f"{100 * float((y.argmax(1) == labels).mean()):.2f}",
                             f"{dst.stat().st_size / 1e6:.1f} MB", f"{seconds:.0f} s"])
    print_table(["tool", "calibration", "remainder", "Q/DQ", "weighted nodes quantized",
                 "Adds with Q/DQ", "cosine vs PyTorch", "accuracy %", "file", "time"], rows)
    print(f"\n{len(quantized_nodes(onnx.load(str(work / 'ours-minmax-fp32.onnx'))))} of "
          f"{sum(n.op_type in ('Conv', 'Gemm', 'MatMul') for n in onnx.load(str(src)).graph.node)}"
          f" weighted nodes quantized by deploy-attn; calibration {CALIB} training images, "
          f"figures on {len(labels)} test images")
    footer(t0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--modelopt-worker"]:
        modelopt_worker(*sys.argv[2:7])
    else:
        main()
