"""The subcommands: each parses nothing, calls one job or command, prints its result."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ..checks.trt_support import check_trt_support
from ..commands.accuracy import evaluate
from ..commands.bench import bench
from ..commands.maps import maps_job
from ..commands.records import worst_result
from ..commands.report import write_report
from ..commands.triton import write_repository
from ..core.console import format_table, to_stderr
from ..core.cpu import isa_line
from ..core.errors import DeployAttnError
from ..engine.sidecar import read_sidecar
from ..exportdir.config import ExportConfig
from ..exportdir.layout import DEFAULT_ROOT, MAPS_DIR, MAPS_FILE, REPORT_FILE
from ..exportdir.reader import read_report
from ..jobs.build import build_job
from ..jobs.export import export_job
from ..jobs.verify import engine_parity, verify_artifacts
from ..precision.saturation import saturation_note
from ..registry import get_spec, list_models
from ..sources import SourceOptions, load_source, parse_model_args
from ..targets.cpu import forms_note
from ..zoo import zoo_rows


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    return format_table(columns, [[r.get(c, "") for c in columns] for r in rows])


def cmd_list(args: argparse.Namespace) -> int:
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
    for r in rep["precisions"]["fp32"]["results"]:
        _print_parity(f"parity fp32 batch {r['batch']}", r)
    nodes = rep["nodes"]
    rewrites = ", ".join([f"{a['source']}->{a['target']} x{a['count']}"
                          for a in rep["rewrites"]["applied"]] +
                         [f"{p['name']} x{p['count']}" for p in rep["rewrites"]["graph"]])
    print(f"nodes {nodes['total_before']} -> {nodes['total_after']} after graph passes and "
          f"simplify; rewrites: {rewrites or 'none'}")
    for precision, entry in rep["precisions"].items():
        if precision == "fp32":  # its batches, above
            continue
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


def cmd_export_all(args: argparse.Namespace) -> int:
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
            worst = worst_result(rep["precisions"]["fp32"]["results"])
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
        precision = read_sidecar(args.engine)["precision"]
        r = engine_parity(directory, Path(args.engine), precision, to_stderr)
        _print_parity(f"engine {Path(args.engine).name} ({precision})", r)
        if not r["ok"]:
            raise DeployAttnError(f"{args.target}: engine {args.engine} is outside the "
                                  f"{precision} tolerance")
        return 0

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
    directory = export_directory(args.target, None, args.root)
    result = bench(directory, args.backends, batch=args.batch, threads=args.threads,
                   runs=args.runs, warmup=args.warmup, progress=True, save=args.save)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.table())
    return 0


def cmd_accuracy(args: argparse.Namespace) -> int:
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


def cmd_triton(args: argparse.Namespace) -> int:
    directory = export_directory(args.target, None)
    result = write_repository(directory, args.output, name=args.name, backends=args.backend,
                              max_batch=args.max_batch, storage_uri=args.storage_uri,
                              progress=to_stderr)
    print(result.table())
    for line in result.skipped:
        print(f"not served: {line}")
    print(f"wrote {len(result.models)} models to {result.repository} (and its "
          "inferenceservice.yaml); serve it: tritonserver --model-repository "
          f"{result.repository.resolve()}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if bool(args.names) == args.all:
        raise DeployAttnError("name the models to report, or pass --all (not both)")
    md, page = write_report(None if args.all else args.names, args.root, args.output)
    print(f"wrote {md} and {page}")
    return 0
