"""Command: an export directory -> a Triton model repository (``deploy-attn triton``).

One Triton model per artifact and backend that can serve it, laid out as Triton loads
it (``REPO/<model>/config.pbtxt``, ``REPO/<model>/1/model.onnx|model.xml+.bin|model.plan``):

* ONNX Runtime (CPU): ``model.onnx`` (FP32), ``model.int8-cpu.onnx`` and the onnx-cpu
  targets (``model.P.cpu.onnx``): the files verified on ONNX Runtime CPU;
* OpenVINO (CPU): the OpenVINO IR targets;
* TensorRT (GPU): engines ``deploy-attn build`` made, with their sidecar.

The TensorRT-form ONNX files (FP16, INT8 Q/DQ) are TensorRT's inputs: they are served as
the engines built from them, not as ONNX. Each CPU model is run here the way its backend
will run it (the config's threads, graph level and OpenVINO properties) on the export's
verification inputs; one outside its precision's tolerance, an artifact that failed its
parity check, or a target refused on this CPU, is not written and one line says why. The
repository's files are byte copies of the verified artifacts. ``deploy-attn.json`` at the
repository root (Triton reads only its subdirectories) records what each model is, the
figures, and the preprocessing a client must apply; ``inferenceservice.yaml`` beside it is
a KServe manifest for the Triton runtime.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.console import Progress, format_table, silent
from ..core.cpu import isa_line
from ..core.errors import ArtifactError, ConfigError
from ..core.files import file_sha256, read_json, write_json
from ..core.numerics import Tolerance, compare
from ..engine.config import DEFAULT_BATCH_RANGE, engine_path_for
from ..engine.sidecar import read_sidecar, sidecar_path
from ..exportdir.layout import BENCH_FILE, artifact_name
from ..exportdir.reader import open_export
from ..runtime.openvino import OpenVINORunner, openvino_missing
from ..runtime.ort import OrtRunner, disabled_optimizers, graph_numerics, verify_unoptimised
from ..runtime.pytorch import torch_outputs
from .kserve import KSERVE_FILE, inference_service

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
MANIFEST = "deploy-attn.json"  # at the repository root: Triton loads only subdirectories
WRITTEN_BY = "deploy-attn triton"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a directory and a URL path segment
DEFAULT_THREADS = 2  # bench's default, used when the export has no bench.json
# Triton's data types for ONNX elem types and OpenVINO element types
ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32",
              7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
OV_TYPES = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "bf16": "TYPE_BF16", "f64": "TYPE_FP64",
            "i8": "TYPE_INT8", "u8": "TYPE_UINT8", "i32": "TYPE_INT32", "i64": "TYPE_INT64",
            "boolean": "TYPE_BOOL"}
PLATFORM = {"onnxruntime": 'platform: "onnxruntime_onnx"', "openvino": 'backend: "openvino"',
            "tensorrt": 'platform: "tensorrt_plan"'}
MODEL_FILES = {"onnxruntime": ("model.onnx",), "openvino": ("model.xml", "model.bin"),
               "tensorrt": ("model.plan",)}


@dataclass
class Tensor:
    name: str
    dtype: str  # Triton's TYPE_*
    dims: list[int]  # with the batch axis; -1 where the artifact leaves a size open


@dataclass
class TritonModel:
    name: str
    backend: str
    precision: str
    sources: list[Path]  # the artifact's files, copied as MODEL_FILES[backend]
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch: int  # 0: no batching by Triton, dims are the full shape
    parameters: dict[str, str] = field(default_factory=dict)
    graph_level: int | None = None  # Triton's ONNX Runtime "optimization.graph.level"
    record: dict = field(default_factory=dict)  # for deploy-attn.json

    def config(self) -> str:
        """The model's config.pbtxt (protobuf text format of Triton's ModelConfig)."""
        def tensors(kind: str, items: list[Tensor]) -> list[str]:
            out = [f"{kind} ["]
            for i, t in enumerate(items):
                dims = t.dims[1:] if self.max_batch else t.dims
                out += ["  {", f'    name: "{t.name}"', f"    data_type: {t.dtype}",
                        f"    dims: [ {', '.join(str(d) for d in dims)} ]",
                        "  }" + ("," if i < len(items) - 1 else "")]
            return out + ["]"]

        kind = "KIND_GPU" if self.backend == "tensorrt" else "KIND_CPU"
        lines = [f'name: "{self.name}"', PLATFORM[self.backend],
                 f"max_batch_size: {self.max_batch}", *tensors("input", self.inputs),
                 *tensors("output", self.outputs),
                 "instance_group [", "  {", "    count: 1", f"    kind: {kind}", "  }", "]"]
        if self.max_batch:
            lines.append("dynamic_batching { }")
        if self.graph_level is not None:
            lines.append(f"optimization {{ graph {{ level: {self.graph_level} }} }}")
        for key, value in self.parameters.items():
            lines += ["parameters {", f'  key: "{key}"', f'  value: {{ string_value: "{value}" }}',
                      "}"]
        return "\n".join(lines) + "\n"


@dataclass
class TritonResult:
    repository: Path
    models: list[TritonModel]
    skipped: list[str]  # one line each: what was not written, and why

    def table(self) -> str:
        rows = [[m.name, m.backend, m.precision, m.max_batch or "-",
                 f"{m.record['served']['cosine']:.6f}" if m.record.get("served") else
                 "(build's engine parity)"] for m in self.models]
        return format_table(["model", "backend", "precision", "max batch", "cosine here"], rows)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ConfigError(f"'{name}' cannot be a Triton model name: it names a directory and "
                          "the URL path /v2/models/NAME; use letters, digits, '_', '-', '.'")
    return name


def _onnx_tensors(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}

    def tensor(v) -> Tensor:
        t = v.type.tensor_type
        return Tensor(v.name, ONNX_TYPES.get(t.elem_type, f"elem type {t.elem_type}"),
                      [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim])

    return ([tensor(v) for v in graph.input if v.name not in inits],
            [tensor(v) for v in graph.output])


def _ov_tensors(xml: Path) -> tuple[list[Tensor], list[Tensor]]:
    import openvino as ov

    model = ov.Core().read_model(str(xml))

    def tensor(port) -> Tensor:
        return Tensor(port.get_any_name(), OV_TYPES.get(port.get_element_type().get_type_name(),
                                                        str(port.get_element_type())),
                      [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()])

    return [tensor(p) for p in model.inputs], [tensor(p) for p in model.outputs]


def _threads(directory: Path) -> tuple[int, str]:
    bench = directory / BENCH_FILE
    if bench.is_file():
        return int(read_json(bench)["threads"]), f"{BENCH_FILE}'s"
    return DEFAULT_THREADS, f"bench's default (no {BENCH_FILE}: 'deploy-attn bench --save')"


def _ort_options(model: TritonModel):
    """SessionOptions as Triton's ONNX Runtime backend builds them from the config."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                                     if model.graph_level == 2 else
                                     ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(model.parameters["intra_op_thread_count"])
    opts.inter_op_num_threads = int(model.parameters["inter_op_thread_count"])
    opts.log_severity_level = 3
    return opts


def _served(model: TritonModel, x: np.ndarray, ref: np.ndarray, tol: Tolerance,
            classifier: bool):
    """The model's output the way its Triton backend runs it here, against PyTorch."""
    if model.backend == "onnxruntime":
        runner = OrtRunner(model.sources[0], options=_ort_options(model))
    else:  # the OpenVINO backend's properties; it has none for the inference precision
        runner = OpenVINORunner(model.sources[0], config={
            k: (int(v) if v.isdigit() else v) for k, v in model.parameters.items()})
    return compare(runner.run(x), ref, tol, classifier)


def _ov_precision_note() -> str:
    """Why OpenVINO under Triton may compute otherwise than the export checked it."""
    import openvino as ov

    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return ("" if hint == ov.Type.f32 else
            f" (Triton's OpenVINO backend has no property for f32 inference, and OpenVINO's "
            f"CPU default on this CPU is {hint.get_type_name()}: the export checked the IR "
            "at f32)")


def candidates(directory: Path, prefix: str, backends: Sequence[str], max_batch: int,
               threads: int) -> tuple[list[TritonModel], list[str]]:
    """The models the export in ``directory`` can give each backend, and one line for each
    artifact that cannot be served (and why)."""
    exp = open_export(directory)
    report, skipped, models = exp.report, [], []
    dynamic = bool(report.get("dynamic_axes"))
    batch = max_batch if dynamic else 0
    ort_params = {"intra_op_thread_count": str(threads), "inter_op_thread_count": "1",
                  "execution_mode": "0"}
    ov_params = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1",
                 "PERFORMANCE_HINT": "LATENCY"}

    def model(backend, precision, sources, tensors, entry, params=None, level=None,
              tag=None):
        name = check_name(f"{prefix}_{precision}_{tag or backend}")
        return TritonModel(name, backend, precision, sources, *tensors, batch,
                           dict(params or {}), level,
                           {"artifacts": [p.name for p in sources], "tolerance": entry.get(
                               "tolerance"), "export": (entry.get("results") or [{}])[0]})

    for precision, entry in report.get("precisions", {}).items():
        path = directory / entry["file"]
        if not entry.get("ok"):
            skipped.append(f"{entry['file']}: failed its parity check in the export; not served")
        elif precision in ("fp32", "int8-cpu"):
            if "onnxruntime" in backends:
                numerics = graph_numerics(path)
                level = 2 if verify_unoptimised(numerics, True) or disabled_optimizers(
                    numerics) else None
                models.append(model("onnxruntime", precision, [path], _onnx_tensors(path),
                                    entry, ort_params, level))
        elif "tensorrt" not in backends or not engine_path_for(directory, precision).is_file():
            skipped.append(f"{entry['file']}: TensorRT's input, served as its engine "
                           f"('deploy-attn build {directory} --precision {precision}'), or "
                           "export --format onnx-cpu for ONNX Runtime")
    for fmt, forms in report.get("targets", {}).items():
        for precision, entry in forms.items():
            files = [directory / f for f in entry.get("files", [])]
            if fmt == "ort":
                skipped.append(f"{files[0].name if files else 'the ort target'}: ONNX Runtime's "
                               "mobile format; Triton's ONNX Runtime backend serves the "
                               "onnx-cpu target (export --format onnx-cpu)")
            elif not entry.get("ok"):
                skipped.append(f"the {fmt} {precision} target: {entry.get('reason')}; not served")
            elif fmt == "onnx-cpu" and "onnxruntime" in backends:
                numerics = graph_numerics(files[0])
                level = 2 if verify_unoptimised(numerics, True) else None
                models.append(model("onnxruntime", precision, files, _onnx_tensors(files[0]),
                                    entry, ort_params, level, tag="onnx-cpu"))
            elif fmt == "openvino" and "openvino" in backends:
                models.append(model("openvino", precision, files, _ov_tensors(files[0]), entry,
                                    ov_params))
    if "tensorrt" in backends:
        for precision, entry in report.get("engines", {}).items():
            engine = engine_path_for(directory, precision)
            found = _engine_model(directory, prefix, precision, engine, entry, model)
            if isinstance(found, str):
                skipped.append(found)
            else:
                models.append(found)
    return models, skipped


def _engine_model(directory: Path, prefix: str, precision: str, engine: Path, entry: dict,
                  model) -> TritonModel | str:
    """An engine ``deploy-attn build`` made, as a Triton model; else why not."""
    if not engine.is_file() or not sidecar_path(engine).is_file():
        return f"{engine.name}: not on disk with its sidecar ('deploy-attn build' again)"
    if not entry.get("parity", {}).get("ok"):
        return f"{engine.name}: failed its engine parity check in 'deploy-attn build'; not served"
    side, onnx_path = read_sidecar(engine), directory / artifact_name(precision)
    if file_sha256(engine) != side["engine_sha256"]:
        return f"{engine.name}: changed since 'deploy-attn build' made it; build again"
    if not onnx_path.is_file() or file_sha256(onnx_path) != side.get("onnx_sha256"):
        return f"{engine.name}: built from another {onnx_path.name} than the export's; build again"
    found = model("tensorrt", precision, [engine], _onnx_tensors(onnx_path), entry)
    build = side.get("build", {})
    found.max_batch = 0 if build.get("static_batch") else int(build.get("max_batch") or
                                                               DEFAULT_BATCH_RANGE[2])
    found.record.update(export=entry["parity"], environment=side.get("environment"))
    return found


def write_repository(directory: str | Path, repository: str | Path, name: str | None = None,
                     backends: Sequence[str] = BACKENDS, max_batch: int = DEFAULT_BATCH_RANGE[2],
                     storage_uri: str | None = None, progress: Progress = silent
                     ) -> TritonResult:
    """The Triton model repository (and KServe manifest) of the export in ``directory``,
    written to ``repository`` as a whole: a failed run leaves it as it was."""
    directory, repository = Path(directory), Path(repository)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ConfigError(f"unknown backend {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(BACKENDS)}")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"--max-batch {max_batch} must be an integer >= 1")
    _check_repository(repository)
    exp = open_export(directory)
    prefix = check_name(name or exp.name)
    if "openvino" in backends and exp.report.get("targets", {}).get("openvino") and \
            openvino_missing():
        raise ConfigError(f"{openvino_missing()} (needed to read and check the IRs)")
    threads, where = _threads(directory)
    progress(f"triton: {threads} thread(s) per CPU instance ({where})")
    models, skipped = candidates(directory, prefix, backends, max_batch, threads)
    kept = []
    card = exp.card()
    x = exp.verify_inputs(exp.cfg.verify_count)
    ref = torch_outputs(card.module, x)
    for m in models:
        if m.backend == "tensorrt":
            kept.append(m)
            continue
        progress(f"triton: {m.name} as its backend runs it here")
        tol = Tolerance(**m.record["tolerance"])
        r = _served(m, x, ref, tol, card.classifier)
        m.record["served"] = r.as_dict()
        if r.ok:
            kept.append(m)
        else:
            note = _ov_precision_note() if m.backend == "openvino" else ""
            skipped.append(f"{m.name}: as Triton's {m.backend} backend runs it here, cosine "
                           f"{r.cosine:.6f}, max abs {r.max_abs:.3g}: outside {m.precision}'s "
                           f"tolerance{note}; not written")
    if not kept:
        raise ArtifactError(f"{directory}: nothing to serve on {', '.join(backends)}: "
                            + "; ".join(skipped or ["the export has no servable artifact"]))
    _publish(repository, prefix, kept, skipped, exp, storage_uri)
    return TritonResult(repository, kept, skipped)


def _check_repository(repository: Path) -> None:
    """A repository this command may replace: missing, empty, or one it wrote."""
    if repository.exists() and not repository.is_dir():
        raise ConfigError(f"{repository} is a file, not a model repository")
    if repository.is_dir() and any(repository.iterdir()):
        manifest = repository / MANIFEST
        mine = manifest.is_file() and read_json(manifest).get("written_by") == WRITTEN_BY
        if not mine:
            raise ConfigError(f"{repository} holds files deploy-attn did not write (another "
                              "model repository?); give an empty or new directory")


def _publish(repository: Path, prefix: str, models: list[TritonModel], skipped: list[str],
             exp, storage_uri: str | None) -> None:
    """Every file staged beside ``repository``, then swapped in at once."""
    repository.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{repository.name}.", dir=repository.parent))
    try:
        for m in models:
            version = stage / m.name / "1"
            version.mkdir(parents=True)
            for src, dst in zip(m.sources, MODEL_FILES[m.backend]):
                shutil.copyfile(src, version / dst)
            (stage / m.name / "config.pbtxt").write_text(m.config())
            m.record["sha256"] = {dst: file_sha256(version / dst)
                                  for dst in MODEL_FILES[m.backend]}
        write_json(stage / MANIFEST, {
            "written_by": WRITTEN_BY, "export": str(exp.directory), "name": exp.name,
            "checked_on": isa_line(),
            "input_shape": exp.report["input_shape"],
            "preprocess": exp.report["model"].get("preprocess"),
            "models": {m.name: {"backend": m.backend, "precision": m.precision, **m.record}
                       for m in models},
            "skipped": skipped})
        gpu = any(m.backend == "tensorrt" for m in models)
        (stage / KSERVE_FILE).write_text(inference_service(prefix, storage_uri, gpu))
        old = None
        if repository.exists():
            old = repository.with_name(f".{repository.name}.old-{os.getpid()}")
            repository.rename(old)
        try:
            stage.rename(repository)
        except BaseException:
            if old is not None:
                old.rename(repository)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
