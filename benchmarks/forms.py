"""What each CPU graph form (``deploy_attn.graph.cpu_forms``) is worth on each CPU runtime:
our FP32 deploy graph (the TensorRT form) against the same graph with each form alone,
with all of them, and with all but one, on OpenVINO and on ONNX Runtime, timed interleaved
in one run, and on ONNX Runtime on the ORT-format conversion (the ``ort`` target, which runs
without the x86 NCHWc layouts). The forms a target's graph gets (``targets.TARGET_FORMS``)
come from this table: a form is kept for a runtime where it is measured to help and never
to hurt. Each runtime's graphs are timed in their own interleaved loop, and each ratio is
the median over rounds of the ratio of two graphs' medians in the same round (a
neighbour's load on a shared machine moves both alike).

    python3 benchmarks/forms.py [MODELS...] [--runs 40] [--threads 2] [--profile]

Models: mobilenetv2, mobilenetv2_ca, resnet18_cbam, resnet50_se and the official
Coordinate Attention code's MobileNetV2 (``tests/foreign_models.py``). Batch 1, default
input sizes. ``--profile`` adds OpenVINO's per-layer counters and ONNX Runtime's profiler
by op type for the TensorRT form and the all-forms graph of each model.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import onnx
from common import (NOT_SLOWER, REPO, exported, footer, header, log, paired, parser,
                    print_table, profile_table, profiles, work_dir)

import deploy_attn
from deploy_attn.checks.parity import check_onnx
from deploy_attn.core.numerics import seeded_inputs
from deploy_attn.graph.cpu_forms import FORM_NAMES, apply_forms
from deploy_attn.registry import get_spec
from deploy_attn.runtime.openvino import OpenVINORunner, openvino_missing
from deploy_attn.runtime.ort import OrtRunner
from deploy_attn.runtime.timing import interleaved_times
from deploy_attn.targets.cpu import TARGET_FORMS, write_ort

sys.path.insert(0, str(REPO))
from tests.foreign_models import OfficialMBV2CA, randomize  # noqa: E402

RUNTIMES = {"ov": "OpenVINO", "ort": "ONNX Runtime", "ortmobile": "ORT format"}
TARGETS = {"ov": "openvino", "ort": "onnx-cpu", "ortmobile": "ort"}
MODELS = ("mobilenetv2", "mobilenetv2_ca", "resnet18_cbam", "resnet50_se", "official_mbv2_ca")
HELPS = 1.03  # a form "helps" where it makes the graph at least 3 % faster


def source(name: str, work: Path):
    """(module, input shape, FP32 deploy graph) of a registry model or the official CA."""
    if name != "official_mbv2_ca":
        return deploy_attn.create_model(name), get_spec(name).input_shape(), exported(name, work)
    model = randomize(OfficialMBV2CA(num_classes=1000)).eval()
    directory = work / name
    if not (directory / "model.onnx").is_file():
        log(f"export {name}")
        deploy_attn.export(model, input_shape=(1, 3, 224, 224), out_dir=directory)
    return model, (1, 3, 224, 224), directory / "model.onnx"


def variants(base: Path, model, shape) -> dict[str, tuple[Path, dict[str, int]]]:
    """The graph with each applicable form alone, all of them, and all but each one."""
    counts = apply_forms(onnx.load(str(base)), FORM_NAMES)
    applicable = [f for f in FORM_NAMES if counts[f]]
    combos = {"tensorrt form": ()}
    combos.update({f: (f,) for f in applicable})
    if len(applicable) > 1:
        combos["all"] = tuple(applicable)
        combos.update({f"all - {f}": tuple(a for a in applicable if a != f)
                       for f in applicable} if len(applicable) > 2 else {})
    out = {}
    for key, forms in combos.items():
        path = base.with_name("form." + (key.replace(" ", "") if forms else "base") + ".onnx")
        graph = onnx.load(str(base))
        made = apply_forms(graph, forms)
        if not path.with_suffix(".ort").is_file():
            onnx.save(graph, str(path))
            assert all(r.ok for r in check_onnx(path, model, [shape])[0]), path
            write_ort(path, path.with_suffix(".ort"))
        out[key] = (path, made)
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS))
    p.add_argument("--profile", action="store_true",
                   help="per-layer OpenVINO counters and ORT's profiler by op type")
    args = p.parse_args()
    missing = openvino_missing()
    if missing:
        sys.exit(f"forms.py: {missing}")
    t0 = time.perf_counter()
    work = work_dir(args.work)
    sources = {n: source(n, work) for n in args.models}
    header("CPU graph forms on OpenVINO and ONNX Runtime (FP32)", args)
    rows, ratios = [], {}  # ratios[(runtime, form)] = [(model, base/with, all-but/all)]
    found = {}
    for name, (model, shape, base) in sources.items():
        forms = variants(base, model, shape)
        x = seeded_inputs(shape)
        times = {}
        for rt in RUNTIMES:  # one interleaved loop per runtime: a round stays short
            peers = {f"{rt}|{key}": (OpenVINORunner(path, args.threads) if rt == "ov" else
                                     OrtRunner(path.with_suffix(".ort") if rt == "ortmobile"
                                               else path, args.threads)).timed(x)
                     for key, (path, _) in forms.items()}
            times.update(interleaved_times(peers, args.runs, args.warmup))
            del peers
        ms = {k: statistics.median(v) for k, v in times.items()}
        for key, (path, made) in forms.items():
            cells = [f"{ms[f'{rt}|{key}']:.3f} "
                     f"({paired(times, f'{rt}|tensorrt form', f'{rt}|{key}'):.2f}x)"
                     for rt in RUNTIMES]
            rows.append([name, key, ", ".join(f"{k} {v}" for k, v in made.items() if v) or "-",
                         *cells])
        for rt in RUNTIMES:
            for f in (k for k in forms if k in FORM_NAMES):
                alone = paired(times, f"{rt}|tensorrt form", f"{rt}|{f}")
                dropped = (paired(times, f"{rt}|all - {f}", f"{rt}|all")
                           if f"{rt}|all - {f}" in ms else
                           paired(times, f"{rt}|tensorrt form", f"{rt}|all")
                           if f"{rt}|all" in ms else alone)
                ratios.setdefault((rt, f), []).append((name, alone, dropped))
        if args.profile and "all" in forms:
            found[name] = profiles({k: forms[k][0] for k in ("tensorrt form", "all")}, x,
                                   args.threads, args.runs)
    print_table(["model", "graph", "rewrites"] + [f"{r} ms (vs TensorRT form)"
                                                  for r in RUNTIMES.values()], rows)
    print("\nper form and runtime: speed-up alone, and what dropping it from all the forms "
          "costs (time without it / time with all), over the models where it applies:")
    verdicts = []
    for (rt, f), seen in sorted(ratios.items()):
        worst = min(min(a, d) for _, a, d in seen)
        best = max(max(a, d) for _, a, d in seen)
        keep = worst >= NOT_SLOWER and best >= HELPS
        verdicts.append([RUNTIMES[rt], f,
                         "; ".join(f"{n} {a:.2f}x / {d:.2f}x" for n, a, d in seen),
                         "keep" if keep else "drop",
                         "yes" if f in TARGET_FORMS[TARGETS[rt]] else "no"])
    print_table(["runtime", "form", "model alone / dropped-from-all", "verdict",
                 "in TARGET_FORMS"], verdicts)
    print(f"\nkeep: never below {NOT_SLOWER}x and at least {HELPS}x somewhere.")
    for name, prof in found.items():
        profile_table(f"{name}: OpenVINO per-layer counters, ms per run by layer type "
                      "(interleaved)", prof["openvino"])
        profile_table(f"{name}: ONNX Runtime kernel ms per run by op type (interleaved)",
                      prof["ort"])
    footer(t0)


if __name__ == "__main__":
    main()
