"""What each graph pass is worth on ONNX Runtime: the reference module exported as it is
(dynamo exporter + onnxsim, no passes) against the same graph with the graph passes, with
and without ``expand_before_broadcast``, timed interleaved in one run.

    python3 benchmarks/graph_passes.py [--runs 40] [--threads 2]

Models: the attention modules whose exported reference has an Expand before a
broadcasting multiply (ECA's ``expand_as``, CAM's and DANet's max-subtraction) and the
official Coordinate Attention code's MobileNetV2 (``tests/foreign_models.py``, its
``expand(-1, -1, h, w)`` and hand-written h_swish). Batch 1, default input sizes.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import onnx
from common import REPO, footer, header, log, measure, parser, print_table, work_dir

import deploy_attn
from deploy_attn.checks.parity import check_onnx
from deploy_attn.core.numerics import seeded_inputs
from deploy_attn.graph.export import export_onnx
from deploy_attn.graph.passes import PASSES, apply_passes
from deploy_attn.graph.simplify import simplify_onnx
from deploy_attn.registry import get_spec
from deploy_attn.runtime.ort import OrtRunner

sys.path.insert(0, str(REPO))
from tests.foreign_models import OfficialMBV2CA, randomize  # noqa: E402

MODULES = ("eca", "cam", "danet")
WITHOUT_EXPAND = tuple(p for p in PASSES if p.name != "expand_before_broadcast")


def variants(name: str, model, shape, work: Path) -> dict[str, Path]:
    """The exported graph with no passes, with all but the Expand pass, and with all."""
    directory = work / "graph_passes" / name
    out = {k: directory / f"{k}.onnx" for k in ("exported", "passes_no_expand", "all_passes")}
    if all(p.is_file() for p in out.values()):
        return out
    log(f"export {name}")
    raw = directory / "raw.onnx"
    export_onnx(model, shape, raw)
    simplify_onnx(raw, out["exported"])
    for key, passes in (("passes_no_expand", WITHOUT_EXPAND), ("all_passes", PASSES)):
        graph = onnx.load(str(raw))
        apply_passes(graph, passes)
        onnx.save(graph, str(directory / f"{key}.raw.onnx"))
        simplify_onnx(directory / f"{key}.raw.onnx", out[key])
    for path in out.values():  # every variant computes the reference function
        assert all(r.ok for r in check_onnx(path, model, [shape])[0]), path
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    t0 = time.perf_counter()
    work = work_dir(args.work)
    models = [(n, deploy_attn.create_model(n), get_spec(n).input_shape()) for n in MODULES]
    models.append(("official mbv2_ca", randomize(OfficialMBV2CA()), (1, 3, 224, 224)))
    header("Graph passes on the exported reference graphs (ONNX Runtime FP32)", args)
    rows = []
    for name, model, shape in models:
        paths = variants(name.replace(" ", "_"), model, shape, work)
        x = seeded_inputs(shape)
        times = measure({k: OrtRunner(p, args.threads).timed(x) for k, p in paths.items()}, args)
        nodes = {k: len(onnx.load(str(p)).graph.node) for k, p in paths.items()}
        expands = sum(n.op_type == "Expand" for n in onnx.load(str(paths["exported"])).graph.node)
        rows.append([name, f"{nodes['exported']}/{nodes['passes_no_expand']}/{nodes['all_passes']}",
                     expands, f"{times['exported']:.3f}", f"{times['passes_no_expand']:.3f}",
                     f"{times['all_passes']:.3f}",
                     f"{times['passes_no_expand'] / times['all_passes']:.2f}x",
                     f"{times['exported'] / times['all_passes']:.2f}x"])
    print_table(["model", "nodes (exported/no Expand pass/all)", "Expands", "exported ms",
                 "passes w/o Expand pass ms", "all passes ms", "Expand pass gain",
                 "all vs exported"], rows)
    footer(t0)


if __name__ == "__main__":
    main()
