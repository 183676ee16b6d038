"""Our rewritten, simplified graph vs the plain ``torch.onnx.export`` of the same reference
module without rewrites (same dynamo exporter, same opset, then the same onnxsim), for
every attention module and mobilenetv2_ca: ONNX Runtime FP32 latency and node counts.

    python3 benchmarks/rewrites_vs_plain.py [NAMES...] [--runs 40] [--threads 2] [--profile]

``--profile`` adds, per module, ONNX Runtime's kernel time by op type for both graphs
(its profiler, same threads), and times a third graph: ours with each one-axis ReduceMean
turned back into the AveragePool the plain export has, to isolate what that rewrite costs
on this CPU.
"""
from __future__ import annotations

import time
from pathlib import Path

import onnx
from common import (NOT_SLOWER, exported, footer, header, measure, parser, plain_export,
                    print_table, profile_table, profiles, work_dir)

import deploy_attn
from deploy_attn.checks.parity import check_onnx
from deploy_attn.core.numerics import FP32, seeded_inputs
from deploy_attn.core.onnx_io import op_counts
from deploy_attn.registry import get_spec
from deploy_attn.runtime.ort import OrtRunner



def pools_as_averagepool(src: Path, dst: Path) -> int:
    """``src`` with every one-axis ReduceMean over H or W of a 4-D tensor replaced by the
    equivalent AveragePool (kernel [H, 1] or [1, W], valid at the exported size only);
    returns how many were replaced."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.value_info, *model.graph.input]}
    axes = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in model.graph.initializer}
    nodes, swapped = [], 0
    for node in model.graph.node:
        reduce = node.op_type == "ReduceMean" and len(node.input) > 1
        ax = axes.get(node.input[1]) if reduce else None
        shape = dims.get(node.input[0], [])
        if ax in ([2], [3]) and len(shape) == 4 and all(shape):
            kernel = [shape[2], 1] if ax == [2] else [1, shape[3]]
            node = onnx.helper.make_node("AveragePool", [node.input[0]], list(node.output),
                                         name=node.name, kernel_shape=kernel)
            swapped += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return swapped


def main() -> None:
    names = deploy_attn.list_models(kind="attention") + ["mobilenetv2_ca"]
    p = parser(__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=names)
    p.add_argument("--profile", action="store_true",
                   help="also print ORT's kernel time per op type for both graphs")
    args = p.parse_args()
    t0 = time.perf_counter()
    work = work_dir(args.work)
    paths = {n: (exported(n, work), *plain_export(n, work)) for n in args.names}
    header("Rewritten + simplified graph (ours) vs plain torch.onnx.export + onnxsim", args)
    rows, slower, failed, same = [], [], [], []
    found: dict[str, dict[str, dict[str, float]]] = {}
    swaps: list[list] = []
    for name in args.names:
        ours, plain, why = paths[name]
        ops_ours = op_counts(onnx.load(str(ours)))
        n_ours = sum(ops_ours.values())
        if plain is None:
            failed.append(name)
            rows.append([name, n_ours, "-", "-", "-", "-", f"plain export fails: {why}"])
            continue
        model = deploy_attn.create_model(name)
        shape = get_spec(name).input_shape()
        err = max(r.max_abs for r in check_onnx(plain, model, [shape])[0])
        note = "" if err <= FP32.atol else f"plain output off by {err:.2g}"
        if op_counts(onnx.load(str(plain))) == ops_ours:
            same.append(name)
            note = (note + "; " if note else "") + "same ops as plain: the difference is noise"
        x = seeded_inputs(shape)
        ms = measure({"ours": OrtRunner(ours, args.threads).timed(x),
                      "plain": OrtRunner(plain, args.threads).timed(x)}, args)
        ratio = ms["plain"] / ms["ours"]
        if ratio < NOT_SLOWER and name not in same:
            slower.append(name)
        rows.append([name, n_ours, len(onnx.load(str(plain)).graph.node),
                     f"{ms['ours']:.3f}", f"{ms['plain']:.3f}", f"{ratio:.2f}x", note])
        if args.profile:
            found[name] = profiles({"ours": ours, "plain": plain}, x, args.threads,
                                   args.runs, runtimes=("ort",))["ort"]
            pooled = ours.with_name("ours.avgpool.onnx")
            if pools_as_averagepool(ours, pooled):
                ms = measure({"ours": OrtRunner(ours, args.threads).timed(x),
                              "pooled": OrtRunner(pooled, args.threads).timed(x),
                              "plain": OrtRunner(plain, args.threads).timed(x)}, args)
                swaps.append([name, f"{ms['ours']:.3f}", f"{ms['pooled']:.3f}",
                              f"{ms['plain']:.3f}", f"{ms['plain'] / ms['pooled']:.2f}x"])
    print_table(["module", "nodes ours", "nodes plain", "ours ms", "plain ms",
                 "plain/ours", "note"], rows)
    print(f"\nplain/ours > 1: the rewritten graph is faster. Plain export failed for "
          f"{len(failed)}: {', '.join(failed) or 'none'}. {len(same)} modules export to the "
          "same ops either way (their rewrites only change what the exporter already "
          "handles); their spread shows the timing noise of sub-millisecond graphs here.")
    print(f"target 'rewritten graph never slower than the plain export' (plain/ours >= "
          f"{NOT_SLOWER} where the graphs differ): "
          f"{'met' if not slower else 'NOT met for ' + ', '.join(slower)}")
    if swaps:
        print("\nours with its one-axis ReduceMean back as AveragePool (interleaved again):")
        print_table(["module", "ours ms", "ours, AveragePool ms", "plain ms",
                     "plain / ours-AveragePool"], swaps)
    for name, prof in found.items():
        profile_table(f"{name}: ONNX Runtime kernel ms per run by op type (profiler)", prof)
    footer(t0)


if __name__ == "__main__":
    main()
