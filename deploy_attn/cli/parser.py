"""The `deploy-attn` argument parser."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..commands.accuracy import MAX_DROP
from ..commands.triton import BACKENDS as TRITON_BACKENDS
from ..core import __version__
from ..core.errors import ConfigError
from ..engine.config import DEFAULT_BATCH_RANGE
from ..graph.export import DEFAULT_OPSET, check_opset
from ..precision.common import CALIB_METHODS, TENSORRT_PRECISIONS
from ..precision.fp16 import AUTOCAST_MAX
from ..runtime.backends import DEFAULT_BACKENDS
from ..sources import TASKS, USER_CHANNELS, USER_INPUT_SIZE
from .commands import cmd_accuracy, cmd_bench, cmd_build, cmd_check, cmd_export, cmd_export_all, \
    cmd_list, cmd_maps, cmd_report, cmd_triton

DESCRIPTION = "``deploy-attn``: thin subcommands that parse, call a stage, and print."


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


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    """The options that describe a model source (export, and maps on a model not exported)."""
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
    p = _Parser(prog="deploy-attn", description=DESCRIPTION)
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

    tr = sub.add_parser("triton", help="a Triton model repository (and a KServe manifest) from "
                                       "an export's verified artifacts")
    tr.add_argument("target", metavar="DIR|NAME", help="an export directory, or a registry "
                                                        "name exported under export/")
    tr.add_argument("-o", "--output", type=Path, required=True, metavar="REPO",
                    help="the model repository to write (new, empty, or one this wrote)")
    tr.add_argument("--name", help="model name prefix (default: the export's name)")
    tr.add_argument("--backend", type=_csv, default=list(TRITON_BACKENDS),
                    metavar="B[,B]", help=f"backends to serve on: {', '.join(TRITON_BACKENDS)} "
                                          "(default: all)")
    tr.add_argument("--max-batch", type=POSITIVE, default=DEFAULT_BATCH_RANGE[2],
                    help="max_batch_size of a dynamic-batch export's CPU models (engines: "
                         "their profile's maximum)")
    tr.add_argument("--storage-uri", help="storageUri of the KServe InferenceService (default: "
                                          "a pvc:// placeholder)")
    tr.set_defaults(func=cmd_triton)

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
