"""Every attention module on MobileNetV2 (each registered mobilenetv2_<attn>): ONNX Runtime
FP32 latency overhead over plain mobilenetv2, next to its parameter and multiply-add
overhead (zoo.count_costs). All models timed interleaved in one loop.

    python3 benchmarks/attention_overhead.py [NAMES...] [--runs 30] [--threads 2]
"""
from __future__ import annotations

import time

from common import exported, footer, header, measure, parser, print_table, work_dir

import deploy_attn
from deploy_attn.core.numerics import seeded_inputs
from deploy_attn.registry import get_spec
from deploy_attn.runtime.ort import OrtRunner
from deploy_attn.zoo import zoo_rows

BASE = "mobilenetv2"


def main() -> None:
    p = parser(__doc__.splitlines()[0], runs=30)
    p.add_argument("names", nargs="*", default=deploy_attn.list_models(f"{BASE}_*"))
    args = p.parse_args()
    t0 = time.perf_counter()
    work = work_dir(args.work)
    names = [BASE] + [n for n in args.names if n != BASE]
    paths = {n: exported(n, work) for n in names}
    costs = {r["name"]: r for r in zoo_rows(f"{BASE}*") if r["name"] in names}
    header(f"Attention modules on {BASE}: ONNX Runtime FP32 overhead vs cost overhead", args)
    x = seeded_inputs(get_spec(BASE).input_shape())
    ms = measure({n: OrtRunner(paths[n], args.threads).timed(x) for n in names}, args)
    base, rows = costs[BASE], []
    for n in sorted(names, key=ms.get):
        c = costs[n]
        dp = 100 * (c["params"] / base["params"] - 1)
        dm = 100 * (c["macs"] / base["macs"] - 1)
        dl = 100 * (ms[n] / ms[BASE] - 1)
        rows.append([n.removeprefix(f"{BASE}_") if n != BASE else f"{BASE} (plain)",
                     f"{c['params_m']:.2f}", f"{dp:+.1f}%", f"{c['gmacs']:.3f}", f"{dm:+.1f}%",
                     f"{ms[n]:.2f}", f"{dl:+.0f}%",
                     f"{dl / dm:.0f}x" if n != BASE and abs(dm) >= 0.05 else "-"])
    print_table(["attention", "params M", "params +", "GMACs", "MACs +", "ORT ms",
                 "latency +", "latency+/MACs+"], rows)
    shape = "x".join(map(str, get_spec(BASE).input_shape()))
    print(f"\nOverheads relative to plain {BASE} at {shape}; latency+/MACs+: how many times "
          "more the latency grows than the multiply-adds.")
    footer(t0)


if __name__ == "__main__":
    main()
