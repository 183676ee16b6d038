"""PyTorch eager (the user's starting point) vs ONNX Runtime FP32 of our exported graph vs
ONNX Runtime INT8, both forms: the TensorRT-valid Q/DQ (``int8``) and the CPU-tuned one
(``int8-cpu``, deploy_attn/precision/cpu_int8.py). Batch 1, 224x224, 2 threads.

    python3 benchmarks/eager_vs_ort.py [--runs 40] [--threads 2]
"""
from __future__ import annotations

import time

from common import exported, header, footer, measure, parser, print_table, quantized, work_dir

import deploy_attn
from deploy_attn.core.numerics import seeded_inputs
from deploy_attn.registry import get_spec
from deploy_attn.runtime.ort import OrtRunner
from deploy_attn.runtime.pytorch import TorchRunner

MODELS = ("mobilenetv2", "mobilenetv2_ca", "resnet18_cbam", "resnet50_se")
TARGET_ORT_VS_EAGER = 2.5  # on mobilenetv2_ca, issue 6


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS))
    args = p.parse_args()
    t0 = time.perf_counter()
    work = work_dir(args.work)
    artifacts = {n: (exported(n, work), quantized(n, work)) for n in args.models}
    header("PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8", args)
    rows, ratios = [], {}
    for name in args.models:
        fp32, q = artifacts[name]
        x = seeded_inputs(get_spec(name).input_shape())
        ms = measure({"eager": TorchRunner(deploy_attn.create_model(name)).timed(x),
                      "fp32": OrtRunner(fp32, args.threads).timed(x),
                      "int8": OrtRunner(q["int8"][0], args.threads).timed(x),
                      "int8-cpu": OrtRunner(q["int8-cpu"][0], args.threads).timed(x)}, args)
        ratios[name] = {k: ms["eager"] / v for k, v in ms.items()}
        rows.append([name, f"{ms['eager']:.2f}", f"{ms['fp32']:.2f}",
                     f"{ms['int8']:.2f}", f"{ms['int8-cpu']:.2f}",
                     f"{ms['eager'] / ms['fp32']:.2f}x",
                     f"{ms['fp32'] / ms['int8']:.2f}x", f"{ms['fp32'] / ms['int8-cpu']:.2f}x",
                     f"{q['int8'][1]:.4f}", f"{q['int8-cpu'][1]:.4f}"])
    print_table(["model", "eager ms", "ORT fp32 ms", "ORT int8 ms", "ORT int8-cpu ms",
                 "fp32 vs eager", "int8 vs fp32", "int8-cpu vs fp32", "int8 cos",
                 "int8-cpu cos"], rows)
    print("\n'A vs B' = B's median / A's median (> 1: A is faster). int8: TensorRT-valid Q/DQ "
          "(symmetric INT8, Conv/Gemm/MatMul inputs); int8-cpu: ORT CPU form (UINT8 "
          "activations, all ops); cos: cosine to PyTorch FP32 on 8 seeded inputs.")
    if "mobilenetv2_ca" in ratios:
        r = ratios["mobilenetv2_ca"]
        print(f"target ORT FP32 >= {TARGET_ORT_VS_EAGER}x eager on mobilenetv2_ca: "
              f"{r['fp32']:.2f}x -> {'met' if r['fp32'] >= TARGET_ORT_VS_EAGER else 'NOT met'}")
    for form in ("int8", "int8-cpu"):
        faster = [n for n, r in ratios.items() if r[form] > r["fp32"]]
        print(f"target ORT {form} faster than ORT FP32: {len(faster)}/{len(ratios)} models "
              f"({', '.join(faster) or 'none'})")
    footer(t0)


if __name__ == "__main__":
    main()
