"""``deploy-attn``: thin subcommands that parse, call a stage, and print."""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Sequence

from .errors import DeployAttnError
from .pipeline.progress import to_stderr


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    from .pipeline.bench import format_table

    return format_table(columns, [[r.get(c, "") for c in columns] for r in rows])


def cmd_list(args: argparse.Namespace) -> int:
    from .zoo import zoo_rows

    rows = zoo_rows(args.pattern, progress=to_stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["name", "kind", "paper", "default_input", "exact_rewrites", "approximate_rewrites"]
    cols += ["params_m", "gmacs"]
    print(_table([{**r, "paper": r["paper"] if len(r["paper"]) <= 44 else r["paper"][:43] + "…",
                   "default_input": "x".join(map(str, r["default_input"])),
                   "exact_rewrites": ",".join(r["exact_rewrites"]) or "-",
                   "approximate_rewrites": ",".join(r["approximate_rewrites"]) or "-"}
                  for r in rows], cols))
    return 0


def _source_options(args: argparse.Namespace):
    from .sources import SourceOptions, parse_model_args

    return SourceOptions(
        model_args=parse_model_args(args.model_arg), channels=args.channels,
        input_size=tuple(args.input_size) if args.input_size else None,
        num_classes=args.num_classes, seed=args.seed, weights=args.weights,
        ema=args.ema or None,  # no --ema: raw weights, or the EMA ones if the file has only those
        task=args.task, mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None)


def _needs_precision(args: argparse.Namespace) -> None:
    """Calibration options given without a stage that uses them are errors (ExportConfig
    checks the rest; it sees these options' defaults, not whether they were given)."""
    int8 = bool({"int8", "int8-fp32", "int8-cpu"} & set(args.precision))
    rules = [("--calib-method", args.calib_method is not None, int8, "--precision int8"),
             ("--calib-count", args.calib_count is not None, bool(args.precision),
              "--precision fp16 or int8")]
    for flag, given, needed, what in rules:
        if given and not needed:
            raise DeployAttnError(f"{flag} does nothing without {what}")


def cmd_export(args: argparse.Namespace) -> int:
    from .pipeline.job import ExportConfig, export_job
    from .pipeline.saturation import saturation_note
    from .pipeline.targets import forms_note
    from .sources import load_source

    _needs_precision(args)
    cfg = ExportConfig(out_dir=args.output, dynamic_batch=args.dynamic_batch, opset=args.opset,
                       simplify=not args.no_simplify, approximate=args.approximate,
                       precisions=tuple(args.precision), calib_dir=args.calib_dir,
                       **{k: v for k, v in (("calib_count", args.calib_count),
                                            ("calib_method", args.calib_method)) if v is not None},
                       exclude=tuple(args.exclude), sensitivity=args.sensitivity,
                       fp16_threshold=args.fp16_threshold, formats=tuple(args.format),
                       target_cpu=args.target_cpu, target_forms=args.target_forms)
    card = load_source(args.model, _source_options(args))
    print(f"deploy-attn export {card.label()} -> {cfg.directory(card)}", file=sys.stderr)
    if card.weights:
        print(f"  - weights {card.weights.path}: {card.weights.describe()}", file=sys.stderr)
    result = export_job(card, cfg, progress=to_stderr)
    rep = result.report
    for r in rep["parity"]["fp32"]["results"]:
        _print_parity(f"parity fp32 batch {r['batch']}", r)
    nodes = rep["nodes"]
    rewrites = ", ".join([f"{a['source']}->{a['target']} x{a['count']}"
                          for a in rep["rewrites"]["applied"]] +
                         [f"{p['name']} x{p['count']}" for p in rep["rewrites"]["graph"]])
    print(f"nodes {nodes['total_before']} -> {nodes['total_after']} after graph passes and "
          f"simplify; rewrites: {rewrites or 'none'}")
    for precision, entry in rep.get("precisions", {}).items():
        r = entry["results"][0]
        extra = (f"{len(entry['fp32_kept_nodes'])} nodes kept FP32" if precision == "fp16" else
                 f"{len(entry['float_nodes'])} nodes left float ({entry['method']})"
                 if precision == "int8-cpu" else
                 f"{entry['quantized_nodes']} of {entry['candidate_nodes']} nodes quantized "
                 f"({entry['method']}), {len(entry['excluded_nodes'])} excluded, "
                 f"{entry['residual_adds_quantized']} residual Adds"
                 + (f", FP16 remainder with {len(entry['fp32_kept_nodes'])} nodes kept FP32"
                    if precision == "int8" else ""))
        _print_parity(f"parity {precision} ({r['batch']} inputs)", r, extra)
        if "saturation" in entry:
            print(f"  {entry['file']} on CPU integer kernels: {saturation_note(entry['saturation'])}")
    for fmt, forms in rep.get("targets", {}).items():
        for precision, entry in forms.items():
            _print_parity(f"{fmt} {precision}", entry["results"][0],
                          f"{entry['runtime']}; {forms_note(entry.get('forms'))}")
            if "saturation" in entry:
                print(f"  for {entry['cpu']} CPUs: {saturation_note(entry['saturation'])}")
    weights = f" (weights: {card.weights.describe()})" if card.weights else ""
    files = ", ".join(str(result.directory / f) for f in list(rep["files"].values()) + [
        name for forms in rep.get("targets", {}).values() for t in forms.values()
        for name in t["files"]])
    print(f"wrote {files} and {result.report_path}{weights}")
    return 0


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _count(least: int):
    """An argparse type: an integer >= ``least``."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{value}' is not an integer") from None
        if number < least:
            raise argparse.ArgumentTypeError(f"{number} must be >= {least}")
        return number

    parse.__name__ = f"integer >= {least}"
    return parse


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a positive finite number")
    return number


def _opset(value: str) -> int:
    from .errors import ConfigError
    from .pipeline.export import check_opset

    try:
        return check_opset(int(value))
    except ValueError as exc:  # a ConfigError is a ValueError too
        message = str(exc) if isinstance(exc, ConfigError) else f"'{value}' is not an integer"
        raise argparse.ArgumentTypeError(message) from None


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"deploy-attn: error: {self.prog.removeprefix('deploy-attn ')}: "
                     f"{message}\n")


POSITIVE = _count(1)


def cmd_export_all(args: argparse.Namespace) -> int:
    from . import list_models
    from .pipeline.job import ExportConfig, export_job
    from .pipeline.report import worst_result
    from .sources import load_source

    names = list_models(args.pattern)
    if not names:
        raise DeployAttnError(f"no registered model matches '{args.pattern}'")
    rows, failed = [], 0
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name}", file=sys.stderr, flush=True)
        row = {"name": name}
        try:
            rep = export_job(load_source(name), ExportConfig(out_dir=args.root / name,
                                                             dynamic_batch=args.dynamic_batch)).report
            worst = worst_result(rep["parity"]["fp32"]["results"])
            row.update(status="ok", max_abs=f"{worst['max_abs']:.1e}",
                       cosine=f"{worst['cosine']:.6f}", nodes=rep["nodes"]["total_after"])
        except DeployAttnError as exc:
            failed += 1
            row.update(status="FAILED", error=str(exc)[:80])
        rows.append(row)
    print(_table(rows, ["name", "status", "max_abs", "cosine", "nodes", "error"]))
    print(f"{len(names) - failed} exported, {failed} failed")
    if failed:
        raise DeployAttnError(f"{failed} of {len(names)} exports failed (see the table)")
    return 0


def export_directory(target: str, output: Path | None, root: Path | None = None) -> Path:
    """The export directory a command works on: ``-o DIR``, TARGET itself when it is an
    export directory, else ``ROOT/TARGET`` for a registry name. With both a registry name
    and ``-o``, the export there must be of that model."""
    from .pipeline.job import DEFAULT_ROOT, REPORT_FILE, read_report
    from .registry import get_spec

    path = Path(target)
    if output is None and (path / REPORT_FILE).is_file():
        return path
    if output is None and (path.is_dir() or "/" in target or target.endswith(".py")
                           or ":" in target):
        raise DeployAttnError(f"{target}: not an export directory (no {REPORT_FILE}); "
                              "export it first, or give a registry name")
    get_spec(target)  # an unknown name fails with close matches
    directory = Path(output) if output is not None else (root or DEFAULT_ROOT) / target
    if output is not None and (directory / REPORT_FILE).is_file():
        exported = read_report(directory)["name"]
        if exported != target:
            raise DeployAttnError(f"{directory} holds an export of {exported}, not {target}; "
                                  f"name {exported} or give another -o")
    return directory


def _print_parity(label: str, r: dict, extra: str = "", view: bool = False) -> None:
    """One line of parity figures (a ParityResult as a dict); a ``view`` (a runtime's
    figures that are no claim of the export) is within or outside tolerance, not failed."""
    top1 = f", top-1 agreement {r['top1_agreement']:.3f}" if r.get("top1_agreement") is not None else ""
    verdict = ("within tolerance" if r["ok"] else "outside tolerance") if view else \
        "ok" if r["ok"] else "FAILED"
    print(f"{label}: cosine {r['cosine']:.8f}, max abs {r['max_abs']:.2e}, max rel "
          f"{r['max_rel']:.2e}{top1} -> {verdict}"
          f"{f'; {extra}' if extra else ''}")


def cmd_check(args: argparse.Namespace) -> int:
    from .pipeline.job import engine_parity, verify_artifacts
    from .pipeline.trt_check import check_trt_support

    target = Path(args.target)
    if target.suffix == ".onnx" or target.is_file():
        result = check_trt_support(target)
        for issue in result.issues:
            print(f"{issue.op_type} '{issue.node}': {issue.reason}")
        if not result.ok:
            raise DeployAttnError(result.summary())
        print(result.summary())
        return 0
    directory = export_directory(args.target, args.output)
    if args.engine:
        from .pipeline.engine import read_sidecar

        precision = read_sidecar(args.engine)["precision"]
        r = engine_parity(directory, Path(args.engine), precision, to_stderr)
        _print_parity(f"engine {Path(args.engine).name} ({precision})", r)
        if not r["ok"]:
            raise DeployAttnError(f"{args.target}: engine {args.engine} is outside the "
                                  f"{precision} tolerance")
        return 0
    from .pipeline.isa import isa_line

    print(isa_line())
    failed = []
    for precision, r in verify_artifacts(directory, to_stderr).items():
        _print_parity(f"{r['file']} ({precision})", r, r["runtime"])
        for s in r["second"]:
            if "skipped" in s:
                print(f"  {s['runtime']}: skipped ({s['skipped']})")
            else:
                _print_parity(f"  {s['file']}", s, s["runtime"] + ("" if s["target"] else
                              "; a second runtime's view, not a claim of the export"),
                              view=not s["target"])
        print(f"  {r['trt_check']['summary']}")
        targets_bad = any(not s["ok"] for s in r["second"] if s.get("target"))
        if not r["ok"] or targets_bad or (args.trt and not r["trt_check"]["ok"]):
            failed.append(precision)
    if failed:
        raise DeployAttnError(f"{args.target}: {', '.join(failed)} artifact(s) failed their check")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .pipeline.build import build_job
    from .pipeline.job import ExportConfig
    from .sources import load_source

    directory = export_directory(args.target, args.output)
    fresh = None
    if not (directory / "report.json").is_file():  # a registry name not exported yet
        fresh = (load_source(args.target), ExportConfig(
            dynamic_batch=args.dynamic_batch, calib_dir=args.calib_dir,
            precisions=(args.precision,) if args.precision != "fp32" else ()))
    entry = build_job(directory, args.precision, min_batch=args.min_batch,
                      opt_batch=args.opt_batch, max_batch=args.max_batch,
                      workspace_mib=args.workspace, progress=to_stderr, fresh=fresh)
    _print_parity(f"engine {entry['file']}", entry["parity"])
    print(f"trtexec equivalent: {entry['trtexec']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .pipeline.bench import bench

    directory = export_directory(args.target, None, args.root)
    result = bench(directory, args.backends, batch=args.batch, threads=args.threads,
                   runs=args.runs, warmup=args.warmup, progress=True, save=args.save)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.table())
    return 0


def cmd_accuracy(args: argparse.Namespace) -> int:
    from .pipeline.accuracy import evaluate

    directory = export_directory(args.target, args.output)
    result = evaluate(directory, args.dataset, args.precisions, args.max_drop, args.batch,
                      args.ignore_index, progress=True)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.table())
    if not args.json:
        print(f"wrote {directory / 'accuracy.json'} ({result.dataset['images']} images, "
              f"{result.seconds:.0f} s)")
    if result.failed:
        worst = max(result.failed, key=lambda f: f["drop"] - f["max_drop"])
        raise DeployAttnError(
            f"{len(result.failed)} form(s) drop more than allowed: {worst['form']} by "
            f"{worst['drop']:.2f} points (max {worst['max_drop']:g})")
    return 0


def cmd_maps(args: argparse.Namespace) -> int:
    from .pipeline.job import REPORT_FILE
    from .pipeline.maps import MAPS_DIR, MAPS_FILE, maps_job
    from .sources import load_source

    directory = export_directory(args.target, args.output)
    fresh = None if (directory / REPORT_FILE).is_file() else \
        load_source(args.target, _source_options(args))
    result = maps_job(directory, image=args.image, calib_dir=args.calib_dir, count=args.count,
                      precisions=args.precisions, fresh=fresh, progress=to_stderr)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.table())
    if not args.json:
        drifts = [f"{p}: {d}" for p, d in result.as_dict()["first_drift"].items() if d]
        print(f"first map beyond its tolerance: {'; '.join(drifts) or 'none'}")
        if result.diagnostic:
            print(f"note: {result.diagnostic}")
        figures = len({s["figure"] for s in result.sites})
        print(f"wrote {directory / MAPS_FILE} and {figures} figures under "
              f"{directory / MAPS_DIR}/ ({result.seconds:.0f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .pipeline.report import write_report

    if bool(args.names) == args.all:
        raise DeployAttnError("name the models to report, or pass --all (not both)")
    md, page = write_report(None if args.all else args.names, args.root, args.output)
    print(f"wrote {md} and {page}")
    return 0


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    """The options that describe a model source (export, and maps on a model not exported)."""
    from .sources import TASKS, USER_CHANNELS, USER_INPUT_SIZE

    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for CALLABLE (repeatable; VALUE a Python literal)")
    parser.add_argument("--channels", type=POSITIVE, help="input channels (default: the registry "
                        f"model's; {USER_CHANNELS} for other sources)")
    parser.add_argument("--input-size", type=POSITIVE, nargs=2, metavar=("H", "W"),
                        help="input height and width (default: the registry model's; "
                             f"{USER_INPUT_SIZE[0]} {USER_INPUT_SIZE[1]} for other sources)")
    parser.add_argument("--task", choices=TASKS, help="what the output is (default: the registry "
                        "model's; inferred from the output shape for other sources)")
    parser.add_argument("--mean", type=float, nargs="+", metavar="M",
                        help="image preprocessing mean, per channel (default ImageNet for 3 "
                             "channels, 0.5 otherwise)")
    parser.add_argument("--std", type=float, nargs="+", metavar="S", help="preprocessing std")
    parser.add_argument("--weights", type=Path,
                        help="checkpoint (.pt/.pth/.safetensors): a state_dict, or a dict with one "
                             "under state_dict/model/model_state_dict/state_dict_ema; public "
                             "layouts (official CA, torchvision, timm) are mapped")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights "
                        "(state_dict_ema) where it has raw ones too")
    parser.add_argument("--num-classes", type=POSITIVE,
                        help="classifier/segmentation classes (registry backbones: e.g. a "
                             "checkpoint's head width; other sources: num_classes=K)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated weights")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .pipeline.export import DEFAULT_OPSET
    from .pipeline.precision import AUTOCAST_MAX, CALIB_METHODS, TENSORRT_PRECISIONS

    p = _Parser(prog="deploy-attn", description=__doc__)
    p.add_argument("--version", action="version", version=f"deploy-attn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="list the zoo: attention modules and backbones")
    ls.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'mobilenetv2_*'")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)

    ex = sub.add_parser("export", help="rewrite, export, simplify and check one model",
                        description="Export one model: a registry name (see 'deploy-attn "
                        "list'), FILE.py:CALLABLE or package.module:CALLABLE (a class or "
                        "factory returning an nn.Module), timm:NAME or torchvision:NAME.")
    ex.add_argument("model", help="registry name, FILE.py:CALLABLE, package.module:CALLABLE, "
                    "timm:NAME or torchvision:NAME")
    ex.add_argument("-o", "--output", type=Path, help="output directory (default export/NAME)")
    ex.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch axis")
    _add_source_args(ex)
    ex.add_argument("--opset", type=_opset, default=DEFAULT_OPSET,
                    help=f"ONNX opset (default {DEFAULT_OPSET})")
    ex.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    ex.add_argument("--approximate", action="store_true",
                    help="also apply rewrites that change numerics (the report states their error)")
    ex.add_argument("--precision", type=_csv, default=[], metavar="P[,P]",
                    help="also write FP16 / INT8 artifacts, comma-separated: fp16; int8 (INT8 "
                         "with an FP16 remainder, what TensorRT users build); int8-fp32 (INT8 "
                         "with an FP32 remainder); int8-cpu (for ONNX Runtime on x86 CPUs)")
    ex.add_argument("--calib-dir", type=Path, help="calibration images (jpg/png); default: a "
                    "seeded generated set, labelled as such in the report")
    ex.add_argument("--calib-count", type=POSITIVE, help="calibration inputs (default 32)")
    ex.add_argument("--calib-method", choices=CALIB_METHODS,
                    help="INT8 calibration (default minmax)")
    ex.add_argument("--exclude", type=_csv, default=[], metavar="NODES|auto",
                    help="INT8 nodes to keep FP32, or 'auto' (most sensitive first, until the "
                         "INT8 threshold is met)")
    ex.add_argument("--sensitivity", action="store_true",
                    help="report per-layer INT8 sensitivity (one quantization per layer)")
    ex.add_argument("--format", type=_csv, default=[], metavar="F[,F]",
                    help="CPU targets of every artifact, each checked against PyTorch: "
                         "openvino (IR: model[.P].xml/.bin; needs the [openvino] extra), ort "
                         "(ONNX Runtime's mobile format model[.P].ort + its operator config), "
                         "onnx-cpu (the ONNX graph for ONNX Runtime on a CPU: "
                         "model[.P].cpu.onnx); each in its runtime's graph form")
    ex.add_argument("--target-cpu", choices=("portable", "vnni"), default="portable",
                    help="the CPU the CPU targets' and int8-cpu's INT8 is for: portable "
                         "(default: every x86 and ARM CPU; INT8 weights that cannot saturate "
                         "on x86 without VNNI) or vnni (full 8-bit weights, exact only with "
                         "VNNI/AMX or on ARM; the report predicts what other CPUs do)")
    ex.add_argument("--target-forms", choices=("fixed", "measure"), default="fixed",
                    help="the graph forms of the CPU targets (and int8-cpu): fixed (default: "
                         "the ones chosen on x86 by benchmarks/forms.py) or measure (each "
                         "timed on this machine, on the target's own runtime, and kept where "
                         "it is faster; for an export made on the device itself, e.g. ARM)")
    ex.add_argument("--fp16-threshold", type=_positive_float, default=AUTOCAST_MAX,
                    help="keep a node FP32 when its activations exceed this "
                         f"(default {AUTOCAST_MAX:g}, AutoCast's)")
    ex.set_defaults(func=cmd_export)

    ck = sub.add_parser("check", help="check an ONNX file against TensorRT's operator matrix, "
                        "or a model's artifacts / engine against PyTorch")
    ck.add_argument("target", help="an .onnx file, an export directory, or a registry name")
    ck.add_argument("--trt", action="store_true",
                    help="fail on nodes TensorRT 10.16's ONNX parser would reject")
    ck.add_argument("--engine", type=Path, help="a TensorRT engine of NAME to run and compare")
    ck.add_argument("-o", "--output", type=Path, help="export directory (default export/NAME)")
    ck.set_defaults(func=cmd_check)

    bd = sub.add_parser("build", help="build a strongly typed TensorRT engine and check it")
    bd.add_argument("target", help="an export directory, or a registry name")
    bd.add_argument("--precision", choices=list(TENSORRT_PRECISIONS), default="fp32",
                    help="the artifact to build (int8: INT8 + FP16 remainder; int8-fp32: INT8 "
                         "+ FP32 remainder)")
    bd.add_argument("-o", "--output", type=Path, help="export directory (default export/NAME)")
    bd.add_argument("--dynamic-batch", action="store_true",
                    help="when exporting first: a dynamic batch axis (then --min/opt/max-batch)")
    bd.add_argument("--min-batch", type=POSITIVE)
    bd.add_argument("--opt-batch", type=POSITIVE)
    bd.add_argument("--max-batch", type=POSITIVE)
    bd.add_argument("--workspace", type=POSITIVE, metavar="MIB", help="builder workspace (default 4096)")
    bd.add_argument("--calib-dir", type=Path, help="when exporting INT8 first: calibration images")
    bd.set_defaults(func=cmd_build)

    from .pipeline.bench import DEFAULT_BACKENDS

    bn = sub.add_parser("bench", help="latency per backend (PyTorch, ONNX Runtime, TensorRT)")
    bn.add_argument("target", help="an export directory, or a registry name (export/NAME)")
    bn.add_argument("--backends", type=_csv, default=list(DEFAULT_BACKENDS),
                    help=f"comma list (default {','.join(DEFAULT_BACKENDS)}; also ort-int8-cpu)")
    bn.add_argument("--batch", type=POSITIVE, default=1)
    bn.add_argument("--threads", type=POSITIVE, default=2)
    bn.add_argument("--runs", type=POSITIVE, default=50)
    bn.add_argument("--warmup", type=_count(0), default=10)
    bn.add_argument("--root", type=Path, default=Path("export"), help="export root (default export/)")
    bn.add_argument("--save", action="store_true", help="write export/NAME/bench.json for the report")
    bn.add_argument("--json", action="store_true")
    bn.set_defaults(func=cmd_bench)

    from .pipeline.accuracy import MAX_DROP

    ac = sub.add_parser("accuracy", help="task accuracy of every artifact on labelled images",
                        description="Top-1/top-5 (classification) or pixel accuracy and mIoU "
                        "(segmentation) of the PyTorch reference and every artifact of an "
                        "export, with each one's drop against PyTorch and its 95%% interval "
                        "(paired bootstrap; McNemar's exact test for classification).")
    ac.add_argument("target", help="an export directory, or a registry name (export/NAME)")
    ac.add_argument("--dataset", type=Path, required=True,
                    help="ImageFolder (one subfolder per class, sorted), a folder with "
                         "labels.csv (file,label), or images/ + masks/ for segmentation")
    ac.add_argument("-o", "--output", type=Path, help="export directory (default export/NAME)")
    ac.add_argument("--precisions", type=_csv, metavar="P[,P]",
                    help="artifacts to evaluate (default: all the export has)")
    ac.add_argument("--max-drop", type=_positive_float, metavar="POINTS",
                    help="fail when a form drops more than this against PyTorch (default: "
                         + ", ".join(f"{p} {v:g}" for p, v in MAX_DROP.items()) + " points)")
    ac.add_argument("--batch", type=POSITIVE, default=32,
                    help="batch size for dynamic-batch exports (static ones run one image "
                         "at a time; default 32)")
    ac.add_argument("--ignore-index", type=int, metavar="I",
                    help="segmentation: the mask value of void pixels, left out")
    ac.add_argument("--json", action="store_true", help="print the result as JSON")
    ac.set_defaults(func=cmd_accuracy)

    mp = sub.add_parser("maps", help="attention maps of every artifact beside PyTorch's",
                        description="For every attention site and every artifact: the map's "
                        "correlation, cosine and max error against PyTorch's (hooks; a map "
                        "drifts beyond max abs 1e-4 in FP32, below correlation 0.999 in FP16 "
                        "and 0.95 in INT8), a table, maps.json "
                        "and one figure per site under the export directory's maps/ (worst "
                        "first). A registry name with no export is built (FP32, FP16, INT8) "
                        "in a scratch folder for the diagnosis, even where INT8 misses its "
                        "threshold, and not kept.")
    mp.add_argument("target", help="an export directory, or a registry name (export/NAME)")
    inputs = mp.add_mutually_exclusive_group()
    inputs.add_argument("--image", type=Path, help="one image to draw the maps on "
                        "(preprocessed as the export records)")
    inputs.add_argument("--calib-dir", type=Path, help="images to compare the maps on (and to "
                        "calibrate with, when the model is built for the diagnosis)")
    mp.add_argument("--count", type=POSITIVE, default=4,
                    help="inputs from --calib-dir or the export's verification set (default 4)")
    mp.add_argument("-o", "--output", type=Path, help="export directory (default export/NAME)")
    mp.add_argument("--precisions", type=_csv, metavar="P[,P]",
                    help="artifacts to compare (default: all the export has; fp16,int8 when "
                         "building for the diagnosis)")
    mp.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_source_args(mp)
    mp.set_defaults(func=cmd_maps)

    rp = sub.add_parser("report", help="report.md + report.html (plots embedded) of the exports")
    rp.add_argument("names", nargs="*", help="models to include")
    rp.add_argument("--all", action="store_true", help="every model exported under --root")
    rp.add_argument("--root", type=Path, default=Path("export"), help="export root (default export/)")
    rp.add_argument("-o", "--output", type=Path, default=Path("export"), help="output directory")
    rp.set_defaults(func=cmd_report)

    ea = sub.add_parser("export-all", help="export and check every registered model (or a pattern)")
    ea.add_argument("pattern", nargs="?", default="*", help="shell-style filter")
    ea.add_argument("--root", type=Path, default=Path("export"), help="output root (default export/)")
    ea.add_argument("--dynamic-batch", action="store_true")
    ea.set_defaults(func=cmd_export_all)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, timeout, CI cancellation), handled like Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _one_line(text: str) -> str:
    """An error message as one line: no ANSI colour codes, no line breaks."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(text))
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        with warnings.catch_warnings():
            # third-party warnings (torch, onnx, converters) are not the user's business
            # and would break the one-line errors; deploy-attn's own notes are progress lines
            warnings.simplefilter("ignore")
            return args.func(args)
    except DeployAttnError as exc:
        print(f"deploy-attn: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # the environment (disk, permissions), not a bug: one line
        where = exc.filename if exc.filename is not None else ""
        where += f" -> {exc.filename2}" if exc.filename2 else ""
        reason = exc.strerror or _one_line(exc) or type(exc).__name__
        print(f"deploy-attn: error: {where + ': ' if where else ''}{reason}", file=sys.stderr)
        return 1
    except Terminated:
        print("deploy-attn: terminated (SIGTERM); nothing partial was left", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("deploy-attn: interrupted; nothing partial was left", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
