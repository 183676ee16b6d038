"""deploy-attn triton: a Triton model repository from an export, checked without a Triton
server: every config.pbtxt parses into Triton's own ModelConfig message and states what the
artifact holds; the files are the verified artifacts byte for byte; loading them the way
the backend does gives the export's figures; bad input is one line."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from deploy_attn import export
from deploy_attn.core.files import file_sha256
from deploy_attn.core.numerics import Tolerance, compare
from deploy_attn.exportdir.reader import open_export
from deploy_attn.runtime.openvino import OpenVINORunner, openvino_missing
from deploy_attn.runtime.ort import OrtRunner
from deploy_attn.runtime.pytorch import torch_outputs

from .test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
needs_openvino = pytest.mark.skipif(openvino_missing() is not None,
                                    reason=str(openvino_missing()))


def _model_config():
    """tritonclient's ModelConfig message module (loaded from its file: the grpc package
    around it wants grpcio, which reading a config does not need); None without it."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        return None
    path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


MODEL_CONFIG = _model_config()
needs_tritonclient = pytest.mark.skipif(
    MODEL_CONFIG is None, reason="tritonclient is not installed (pip install -e '.[test]'): "
                                 "the configs cannot be parsed into Triton's ModelConfig")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One static-batch export with every CPU target and one dynamic-batch export."""
    root = tmp_path_factory.mktemp("triton")
    static = export("se", out_dir=root / "se", precisions=("fp16", "int8", "int8-cpu"),
                    formats=("openvino", "onnx-cpu", "ort"))
    dynamic = export("eca", out_dir=root / "eca", precisions=("int8",), dynamic_batch=True,
                     formats=("onnx-cpu",))
    return static.directory, dynamic.directory


@pytest.fixture(scope="module")
def repository(exported, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "models"
    from deploy_attn import cli

    assert cli.main(["triton", str(exported[0]), "-o", str(repo)]) == 0
    return repo


def _manifest(repo: Path) -> dict:
    return json.loads((repo / "deploy-attn.json").read_text())


def test_one_model_per_servable_artifact_and_backend(repository, exported):
    models = _manifest(repository)["models"]
    expected = {"se_fp32_onnxruntime", "se_int8-cpu_onnxruntime"} | {
        f"se_{p}_onnx-cpu" for p in ("fp32", "fp16", "int8", "int8-cpu")}
    if openvino_missing() is None:
        expected |= {f"se_{p}_openvino" for p in ("fp32", "fp16", "int8", "int8-cpu")}
    assert set(models) == expected, sorted(models)
    dirs = {p.name for p in repository.iterdir() if p.is_dir()}
    assert dirs == expected
    skipped = _manifest(repository)["skipped"]
    # TensorRT's inputs without engines, and the mobile format, each say why
    assert any(s.startswith("model.fp16.onnx: TensorRT's input") for s in skipped), skipped
    assert any(s.startswith("model.int8.ort: ONNX Runtime's mobile format") for s in skipped)


def test_files_are_the_verified_artifacts_byte_for_byte(repository, exported):
    for name, entry in _manifest(repository)["models"].items():
        version = repository / name / "1"
        for artifact, copied in zip(entry["artifacts"], entry["sha256"]):  # in file order
            assert file_sha256(exported[0] / artifact) == file_sha256(version / copied), name


@needs_tritonclient
def test_configs_parse_as_triton_model_configs_that_match_the_artifact(repository, exported):
    from google.protobuf import text_format

    dtypes = MODEL_CONFIG.DataType
    for name, entry in _manifest(repository)["models"].items():
        cfg = text_format.Parse((repository / name / "config.pbtxt").read_text(),
                                MODEL_CONFIG.ModelConfig())
        assert cfg.name == name
        assert (cfg.platform, cfg.backend) == {
            "onnxruntime": ("onnxruntime_onnx", ""), "openvino": ("", "openvino")}[
            entry["backend"]]
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
        assert [g.kind for g in cfg.instance_group] == [MODEL_CONFIG.ModelInstanceGroup.KIND_CPU]
        onnx_file = exported[0] / (entry["artifacts"][0] if entry["backend"] == "onnxruntime"
                                   else "model.onnx")
        graph = onnx.load(str(onnx_file)).graph
        for declared, value in ((cfg.input, graph.input), (cfg.output, graph.output)):
            assert [t.name for t in declared] == [v.name for v in value], name
            for t, v in zip(declared, value):
                assert list(t.dims) == [d.dim_value for d in v.type.tensor_type.shape.dim]
                assert dtypes.Name(t.data_type) == "TYPE_FP32", (name, dtypes.Name(t.data_type))
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["intra_op_thread_count" if entry["backend"] == "onnxruntime" else
                      "INFERENCE_NUM_THREADS"] == "2"  # bench's default: no bench.json


def test_loaded_as_the_backend_does_they_give_the_exports_figures(repository, exported):
    """The ORT models with Triton's session options give the export's own figures (the
    same configuration); the OpenVINO ones, compiled with only the backend's properties,
    are within their tolerance (the backend cannot ask OpenVINO for f32: on a bf16 CPU its
    figures differ from the export's, and the manifest says both)."""
    exp = open_export(exported[0])
    x = exp.verify_inputs(exp.cfg.verify_count)
    ref = torch_outputs(exp.card().module, x)
    for name, entry in _manifest(repository)["models"].items():
        path = repository / name / "1" / ("model.onnx" if entry["backend"] == "onnxruntime"
                                          else "model.xml")
        config = (repository / name / "config.pbtxt").read_text()
        if entry["backend"] == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
            if "level: 2" in config:
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            out = OrtRunner(path, options=opts).run(x)
        else:
            out = OpenVINORunner(path, config={"INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1,
                                               "PERFORMANCE_HINT": "LATENCY"}).run(x)
        r = compare(out, ref, Tolerance(**entry["tolerance"]))
        assert r.ok and abs(r.cosine - entry["served"]["cosine"]) < 1e-9, (name, r)
        if entry["backend"] == "onnxruntime":
            assert abs(r.cosine - entry["export"]["cosine"]) < 1e-6, (name, r, entry["export"])


@needs_tritonclient
def test_a_dynamic_batch_export_batches_dynamically(exported, tmp_path, capsys):
    from google.protobuf import text_format

    code, out, err = run_cli(capsys, "triton", str(exported[1]), "-o", str(tmp_path / "r"),
                             "--max-batch", "8", "--backend", "onnxruntime")
    assert code == 0, err
    for name in ("eca_fp32_onnxruntime", "eca_int8_onnx-cpu"):
        cfg = text_format.Parse((tmp_path / "r" / name / "config.pbtxt").read_text(),
                                MODEL_CONFIG.ModelConfig())
        assert cfg.max_batch_size == 8 and cfg.HasField("dynamic_batching"), name
        shape = open_export(exported[1]).report["input_shape"]
        assert list(cfg.input[0].dims) == shape[1:], (name, list(cfg.input[0].dims))


def test_the_kserve_manifest_serves_the_repository(exported, tmp_path, capsys):
    code, _, err = run_cli(capsys, "triton", str(exported[0]), "-o", str(tmp_path / "r"),
                           "--name", "SE_Net", "--storage-uri", "s3://bucket/se")
    assert code == 0, err
    manifest = yaml.safe_load((tmp_path / "r" / "inferenceservice.yaml").read_text())
    assert manifest["kind"] == "InferenceService" and manifest["metadata"]["name"] == "se-net"
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["storageUri"] == "s3://bucket/se"
    assert "resources" not in model  # no TensorRT plan: no GPU asked for
    assert (tmp_path / "r" / "SE_Net_fp32_onnxruntime" / "config.pbtxt").is_file()


def test_bad_input_is_one_line_and_changes_nothing(exported, tmp_path, capsys):
    other = tmp_path / "other"
    (other / "resnet").mkdir(parents=True)
    (other / "resnet" / "config.pbtxt").write_text('name: "resnet"\n')
    cases = [
        (["triton", str(exported[0]), "-o", str(other)], "holds files deploy-attn did not write"),
        (["triton", str(exported[0]), "-o", str(tmp_path / "a"), "--name", "bad/name"],
         "cannot be a Triton model name"),
        (["triton", str(exported[0]), "-o", str(tmp_path / "b"), "--backend", "tensorrt"],
         "nothing to serve on tensorrt"),
        (["triton", str(exported[0]), "-o", str(tmp_path / "c"), "--backend", "tflite"],
         "unknown backend tflite"),
        (["triton", str(tmp_path / "nowhere"), "-o", str(tmp_path / "d")],
         "not an export directory"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 1 and message in lines[-1], (argv, err)
        assert [line for line in lines if "error" in line] == lines[-1:], err
    assert sorted(p.name for p in other.rglob("*")) == ["config.pbtxt", "resnet"]
    assert not any((tmp_path / n).exists() for n in "abcd")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_writing_again_replaces_its_own_repository(repository, exported, capsys):
    stale = repository / "se_stale_onnxruntime"
    stale.mkdir()
    code, _, err = run_cli(capsys, "triton", str(exported[0]), "-o", str(repository))
    assert code == 0, err
    assert not stale.exists() and (repository / "se_fp32_onnxruntime" / "1" / "model.onnx").is_file()


def test_the_client_example_preprocesses_as_the_export_recorded(repository, tmp_path):
    from PIL import Image

    from deploy_attn.core.images import Preprocess, load_image

    spec = importlib.util.spec_from_file_location("triton_client",
                                                  ROOT / "examples" / "triton_client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)  # imports no tritonclient until it sends
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(image)
    pre = {"size": (32, 32), "channels": 3, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    x = client.preprocess(image, pre)
    np.testing.assert_allclose(x[0], load_image(image, Preprocess(**pre)), atol=1e-6)


@needs_tritonclient
def test_engines_build_made_become_tensorrt_plans(exported, tmp_path, capsys):
    """An engine is taken with its sidecar and build's parity check: a dynamic-batch
    export's engine batches up to its profile's maximum, on a GPU instance, and the KServe
    manifest asks for a GPU; one whose parity failed is not written. The engine files here
    are bytes standing in for plans: this checks the repository, not TensorRT."""
    import shutil

    from google.protobuf import text_format

    from deploy_attn.core.files import write_json
    from deploy_attn.engine.sidecar import sidecar_path

    directory = tmp_path / "eca"
    shutil.copytree(exported[1], directory)
    report = json.loads((directory / "report.json").read_text())
    env = {"tensorrt": "11.2.1", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    for precision, ok in (("int8", True), ("fp32", False)):
        engine = directory / f"model.{precision}.engine"
        engine.write_bytes(f"stand-in plan for {precision}".encode())
        onnx_file = directory / ("model.onnx" if precision == "fp32" else "model.int8.onnx")
        write_json(sidecar_path(engine), {
            "engine_sha256": file_sha256(engine), "environment": env,
            "onnx_sha256": file_sha256(onnx_file),
            "build": {"static_batch": None, "min_batch": 1, "opt_batch": 4, "max_batch": 16}})
        report.setdefault("engines", {})[precision] = {
            "file": engine.name, "parity": {"ok": ok, "cosine": 0.9995 if ok else 0.5},
            "environment": env}
    (directory / "report.json").write_text(json.dumps(report))
    code, out, err = run_cli(capsys, "triton", str(directory), "-o", str(tmp_path / "r"))
    assert code == 0, err
    assert "model.fp32.engine: failed its engine parity check" in out, out
    plan = tmp_path / "r" / "eca_int8_tensorrt"
    assert (plan / "1" / "model.plan").read_bytes() == (directory / "model.int8.engine").read_bytes()
    cfg = text_format.Parse((plan / "config.pbtxt").read_text(), MODEL_CONFIG.ModelConfig())
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 16
    assert cfg.HasField("dynamic_batching")
    assert [g.kind for g in cfg.instance_group] == [MODEL_CONFIG.ModelInstanceGroup.KIND_GPU]
    assert not (tmp_path / "r" / "eca_fp32_tensorrt").exists()
    manifest = yaml.safe_load((tmp_path / "r" / "inferenceservice.yaml").read_text())
    assert manifest["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    recorded = _manifest(tmp_path / "r")["models"]["eca_int8_tensorrt"]
    assert recorded["environment"] == env  # the Triton image must hold this TensorRT
