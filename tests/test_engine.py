"""The TensorRT engine stage: config, profile and trtexec assembly, sidecar checks and the
"no TensorRT here" message run on any CPU; building and running engines are marked
``trt`` and skip, with the reason, where TensorRT or a CUDA GPU is missing."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from deploy_attn.core.errors import ArtifactError, ConfigError, DeployAttnError
from deploy_attn.core.files import file_sha256, write_json
from deploy_attn.engine.build import build_engine
from deploy_attn.engine.config import DEFAULT_BATCH_RANGE, PRECISIONS, TIMING_CACHE_FILE, \
    EngineConfig, check_onnx_matches, engine_path_for, onnx_precision, profile_shapes, \
    timing_cache_path, trtexec_command
from deploy_attn.engine.sidecar import EngineMismatch, check_inputs, check_sidecar, \
    current_environment, engine_outputs, environment_mismatches, read_sidecar, sidecar_path, \
    tensorrt_series
from deploy_attn.runtime.tensorrt import TensorRTUnavailable, require_tensorrt

from .conftest import needs_trt

SAMPLE = (3, 224, 224)
ENV = {"tensorrt": "10.13.3.9", "gpu": "NVIDIA H200", "compute_capability": "9.0"}
PRECISION_FLAGS = ("--fp16", "--int8", "--bf16", "--fp8", "--best", "--calib")


def static(**kw) -> EngineConfig:
    return EngineConfig(precision=kw.pop("precision", "fp32"), sample_shape=SAMPLE,
                        static_batch=1, **kw)


def dynamic(**kw) -> EngineConfig:
    return EngineConfig(precision=kw.pop("precision", "fp32"), sample_shape=SAMPLE, **kw)


# --- config and optimization profile -------------------------------------------------

def test_static_profile_is_the_fixed_shape():
    cfg = static()
    assert not cfg.dynamic and cfg.batch_range == (1, 1, 1)
    assert profile_shapes(cfg) == {"input": ((1, 3, 224, 224),) * 3}


def test_static_accepts_the_same_batch_given_explicitly():
    assert static(min_batch=1, opt_batch=1, max_batch=1).batch_range == (1, 1, 1)


@pytest.mark.parametrize("flag", ["min_batch", "opt_batch", "max_batch"])
def test_static_forbids_a_different_batch(flag):
    option = "--" + flag.replace("_", "-")
    with pytest.raises(ConfigError, match=rf"fixed batch of 1.*{option} 8.*--dynamic-batch"):
        static(**{flag: 8})


def test_dynamic_profile_defaults_and_explicit_range():
    assert dynamic().batch_range == DEFAULT_BATCH_RANGE
    cfg = dynamic(min_batch=2, opt_batch=8, max_batch=32)
    assert cfg.dynamic
    assert profile_shapes(cfg) == {"input": ((2, 3, 224, 224), (8, 3, 224, 224),
                                             (32, 3, 224, 224))}
    assert dynamic(max_batch=2).batch_range == (1, 2, 2)  # opt clipped into the range
    assert dynamic(min_batch=32).batch_range == (32, 32, 32)
    assert dynamic(opt_batch=32).batch_range == (1, 32, 32)


@pytest.mark.parametrize("lo,opt,hi", [(2, 1, 4), (1, 8, 4), (0, 1, 1), (4, 4, 2), (-1, 1, 2)])
def test_bad_batch_range_is_a_config_error(lo, opt, hi):
    with pytest.raises(ConfigError, match=r"1 <= min <= opt <= max"):
        dynamic(min_batch=lo, opt_batch=opt, max_batch=hi)


@pytest.mark.parametrize("kw,match", [
    ({"precision": "bf16"}, r"unknown precision 'bf16'; choose one of fp32, fp16, int8"),
    ({"workspace_mib": 0}, r"workspace 0 MiB"),
    ({"optimization_level": 7}, r"optimization level 7"),
])
def test_bad_options_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        dynamic(**kw)


def test_bad_sample_shape_is_a_config_error():
    with pytest.raises(ConfigError, match="positive integers"):
        EngineConfig(precision="fp32", sample_shape=(3, 0, 224))


# --- trtexec command line --------------------------------------------------------------

def test_trtexec_static(tmp_path):
    cmd = trtexec_command("m/model.onnx", tmp_path / "model.fp32.engine", static())
    assert cmd[0] == "trtexec"
    assert {"--onnx=m/model.onnx", f"--saveEngine={tmp_path / 'model.fp32.engine'}",
            "--stronglyTyped", "--memPoolSize=workspace:4096M", "--skipInference",
            "--noTF32", "--profilingVerbosity=detailed",
            f"--timingCacheFile={tmp_path / TIMING_CACHE_FILE}"} <= set(cmd)
    assert not any("Shapes=" in c for c in cmd)  # a static ONNX fixes its own shapes


def test_trtexec_dynamic_shapes_and_options(tmp_path):
    cfg = dynamic(min_batch=1, opt_batch=4, max_batch=16, workspace_mib=2048,
                  timing_cache=tmp_path / "cache.bin", optimization_level=5)
    cmd = trtexec_command("model.onnx", "model.fp32.engine", cfg)
    for flag, b in (("min", 1), ("opt", 4), ("max", 16)):
        assert f"--{flag}Shapes=input:{b}x3x224x224" in cmd
    assert "--memPoolSize=workspace:2048M" in cmd
    assert f"--timingCacheFile={tmp_path / 'cache.bin'}" in cmd
    assert "--builderOptimizationLevel=5" in cmd


def test_tensorrt_11_commands_and_caches_per_version(tmp_path):
    """11.x: no --stronglyTyped (always on there), and each TensorRT version keeps its
    own timing cache beside the engines."""
    cfg = static()
    ten = trtexec_command("m.onnx", tmp_path / "e.engine", cfg, "10.16.1.11")
    eleven = trtexec_command("m.onnx", tmp_path / "e.engine", cfg, "11.2.1.2")
    assert "--stronglyTyped" in ten and "--stronglyTyped" not in eleven
    caches = {timing_cache_path(tmp_path / "e.engine", cfg, v) for v in ("10.16.1.11",
                                                                           "11.2.1.2")}
    assert {c.name for c in caches} == {"trt_timing-10.16.1.11.cache", "trt_timing-11.2.1.2.cache"}
    assert f"--timingCacheFile={tmp_path / 'trt_timing-11.2.1.2.cache'}" in eleven
    assert tensorrt_series("11.2.1.2") == 11 and tensorrt_series(None) is None


@pytest.mark.parametrize("precision", PRECISIONS)
def test_trtexec_never_sets_precision_flags(precision):
    cmd = trtexec_command("model.onnx", "e.engine", dynamic(precision=precision))
    assert "--stronglyTyped" in cmd
    assert not [c for c in cmd if c.split("=")[0] in PRECISION_FLAGS]


# --- ONNX checks ------------------------------------------------------------------------

def _tiny_onnx(path, kind: str):
    """A one-input graph that is fp32, fp16 (a Cast to float16), int8-fp32 (Q/DQ) or int8
    (Q/DQ with FP16 scales between Casts, opset 19)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8, 8])
    opset = 18
    if kind == "fp16":
        nodes = [helper.make_node("Cast", ["input"], ["h"], to=TensorProto.FLOAT16),
                 helper.make_node("Cast", ["h"], ["output"], to=TensorProto.FLOAT)]
        inits = []
    elif kind == "int8-fp32":
        nodes = [helper.make_node("QuantizeLinear", ["input", "s"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s"], ["output"])]
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])]
    elif kind == "int8":
        nodes = [helper.make_node("Cast", ["input"], ["h"], to=TensorProto.FLOAT16),
                 helper.make_node("QuantizeLinear", ["h", "s"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s"], ["d"]),
                 helper.make_node("Cast", ["d"], ["output"], to=TensorProto.FLOAT)]
        inits = [helper.make_tensor("s", TensorProto.FLOAT16, [], [0.1])]
        opset = 19
    else:
        nodes, inits = [helper.make_node("Relu", ["input"], ["output"])], []
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


@pytest.mark.parametrize("kind", PRECISIONS)
def test_onnx_precision_is_read_from_the_graph(tmp_path, kind):
    path = _tiny_onnx(tmp_path / f"{kind}.onnx", kind)
    assert onnx_precision(path) == kind
    cfg = EngineConfig.from_onnx(path, kind, max_batch=8)
    assert cfg.dynamic and cfg.sample_shape == (3, 8, 8) and cfg.input_name == "input"


def test_precision_metadata_of_the_precision_stages_wins(tmp_path):
    """Tagged the way the FP16/INT8 stages tag their files (their own helper), the
    metadata decides over the graph."""
    from deploy_attn.precision.common import PRECISION_METADATA, set_metadata

    path = _tiny_onnx(tmp_path / "tagged.onnx", "fp32")
    model = onnx.load(path)
    set_metadata(model, PRECISION_METADATA, "fp16")
    onnx.save(model, path)
    assert onnx_precision(path) == "fp16"


def test_precision_must_match_the_graph(tmp_path):
    path = _tiny_onnx(tmp_path / "fp32.onnx", "fp32")
    with pytest.raises(ConfigError, match=r"is a fp32 graph, not int8.*strongly"):
        EngineConfig.from_onnx(path, "int8")


def test_from_exported_onnx(export_cache):
    fixed = export_cache("se").model_path
    cfg = EngineConfig.from_onnx(fixed, "fp32")
    assert (cfg.static_batch, cfg.sample_shape) == (1, (64, 32, 32))
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        EngineConfig.from_onnx(fixed, "fp32", max_batch=4)
    with pytest.raises(ConfigError, match="the input has a fixed batch of 1, the config "
                                          "expects a dynamic batch"):
        check_onnx_matches(EngineConfig("fp32", (64, 32, 32)), fixed)
    dyn = EngineConfig.from_onnx(export_cache("se", dynamic_batch=True).model_path, "fp32",
                                 min_batch=1, opt_batch=2, max_batch=4)
    assert dyn.dynamic and dyn.batch_range == (1, 2, 4)


def test_missing_onnx_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="no such ONNX file"):
        EngineConfig.from_onnx(tmp_path / "nope.onnx", "fp32")


# --- sidecar ------------------------------------------------------------------------------

def _engine_with_sidecar(tmp_path, env=ENV, **extra):
    engine = tmp_path / "model.fp32.engine"
    engine.write_bytes(b"not really a plan, only bytes to hash")
    write_json(sidecar_path(engine), {"engine_sha256": file_sha256(engine),
                                          "environment": dict(env), **extra})
    return engine


def test_sidecar_path_is_engine_dot_json(tmp_path):
    assert sidecar_path(tmp_path / "model.fp16.engine").name == "model.fp16.engine.json"
    assert engine_path_for(tmp_path, "int8") == tmp_path / "model.int8.engine"


def test_same_environment_passes(tmp_path):
    engine = _engine_with_sidecar(tmp_path, precision="fp32")
    assert check_sidecar(engine, dict(ENV)) == read_sidecar(engine)
    assert environment_mismatches(ENV, dict(ENV)) == []


@pytest.mark.parametrize("key,label,value", [
    ("tensorrt", "TensorRT", "10.14.1.48"),
    ("gpu", "GPU", "NVIDIA A100-SXM4-80GB"),
    ("compute_capability", "compute capability", "8.0"),
])
def test_other_environment_fails_naming_both_values(tmp_path, key, label, value):
    engine = _engine_with_sidecar(tmp_path)
    with pytest.raises(EngineMismatch) as info:
        check_sidecar(engine, {**ENV, key: value})
    msg = str(info.value)
    assert f"{label} {ENV[key]} (built) vs {value} (here)" in msg
    assert "\n" not in msg and isinstance(info.value, DeployAttnError)


def test_missing_sidecar_fails(tmp_path):
    engine = _engine_with_sidecar(tmp_path)
    sidecar_path(engine).unlink()
    with pytest.raises(ArtifactError, match="sidecar model.fp32.engine.json is missing"):
        check_sidecar(engine, ENV)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"environment": {"gpu": "x"}}',
                                  '{"environment": {"tensorrt": "1", "gpu": "x", '
                                  '"compute_capability": "9.0"}}'])
def test_corrupt_sidecar_fails(tmp_path, text):
    engine = _engine_with_sidecar(tmp_path)
    sidecar_path(engine).write_text(text)
    with pytest.raises(ArtifactError, match="corrupt engine sidecar") as info:
        check_sidecar(engine, ENV)
    assert "\n" not in str(info.value)


def test_sidecar_of_another_engine_fails(tmp_path):
    engine = _engine_with_sidecar(tmp_path)
    engine.write_bytes(b"a different plan")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        check_sidecar(engine, ENV)


def test_missing_engine_fails(tmp_path):
    with pytest.raises(ArtifactError, match="no such engine file"):
        check_sidecar(tmp_path / "model.fp32.engine", ENV)


def test_inputs_outside_the_profile_are_refused():
    record = {"build": {"profile": {"input": [[1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]]}}}
    assert check_inputs(record, [np.zeros((4, 3, 8, 8), np.float32)]) == "input"
    for shape in [(8, 3, 8, 8), (1, 3, 9, 8), (3, 8, 8)]:
        with pytest.raises(ConfigError, match="outside the engine's profile"):
            check_inputs(record, [np.zeros(shape, np.float32)])


# --- TensorRT missing ---------------------------------------------------------------------

@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` -> ImportError


@pytest.fixture
def fake_tensorrt(monkeypatch):
    module = types.ModuleType("tensorrt")
    module.__version__ = ENV["tensorrt"]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def _one_line_with_docker(msg: str) -> None:
    assert "\n" not in msg
    assert "build them in the Docker image: docker/build_engines.sh se fp16" in msg


def test_require_tensorrt_without_the_module(no_tensorrt):
    with pytest.raises(TensorRTUnavailable) as info:
        require_tensorrt("se", "fp16")
    assert "tensorrt Python module is not importable" in str(info.value)
    _one_line_with_docker(str(info.value))
    assert isinstance(info.value, DeployAttnError)


def test_require_tensorrt_without_a_gpu(fake_tensorrt, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU visible") as info:
        require_tensorrt("se", "fp16")
    _one_line_with_docker(str(info.value))


def test_require_tensorrt_with_cpu_only_torch(fake_tensorrt, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(TensorRTUnavailable, match="CPU-only build"):
        require_tensorrt("se", "fp16")


def test_require_tensorrt_stub_package(fake_tensorrt, monkeypatch):
    del fake_tensorrt.__version__
    with pytest.raises(TensorRTUnavailable, match="stub"):
        require_tensorrt()


def test_current_environment_with_tensorrt_and_gpu(fake_tensorrt, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU {i}")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (8, 6))
    env = current_environment()
    assert (env["gpu"], env["compute_capability"]) == ("GPU 1", "8.6")  # the current device
    assert env["tensorrt"] == fake_tensorrt.__version__


def test_build_and_run_refuse_cleanly_without_tensorrt(no_tensorrt, tmp_path):
    onnx_path = _tiny_onnx(tmp_path / "model.onnx", "fp32")
    engine = tmp_path / "model.fp32.engine"
    with pytest.raises(TensorRTUnavailable):
        build_engine(onnx_path, engine, EngineConfig.from_onnx(onnx_path, "fp32"))
    assert not engine.exists() and not sidecar_path(engine).exists()
    with pytest.raises(TensorRTUnavailable):
        engine_outputs(_engine_with_sidecar(tmp_path), [np.zeros((1, 3, 8, 8), np.float32)])


def test_import_needs_no_tensorrt():
    code = ("import sys, deploy_attn, deploy_attn.engine.build, deploy_attn.jobs.build; "
            "assert 'tensorrt' not in sys.modules and 'polygraphy.backend.trt' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- real engines (TensorRT and a CUDA GPU) ----------------------------------------------



@pytest.fixture(scope="module")
def se_reference():
    from deploy_attn import load_source

    return load_source("se").module


@needs_trt
@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic"])
def test_engine_matches_torch(export_cache, se_reference, tmp_path, dynamic_batch):
    from deploy_attn.core.numerics import TOLERANCES, compare, seeded_inputs
    from deploy_attn.runtime.pytorch import torch_outputs

    exp = export_cache("se", dynamic_batch=dynamic_batch)
    options = {"min_batch": 1, "opt_batch": 2, "max_batch": 4} if dynamic_batch else {}
    cfg = EngineConfig.from_onnx(exp.model_path, "fp32", workspace_mib=1024, **options)
    engine = build_engine(exp.model_path, tmp_path / "model.fp32.engine", cfg)

    record = check_sidecar(engine, current_environment())
    assert record["onnx_sha256"] == file_sha256(exp.model_path)
    assert "--stronglyTyped" in record["trtexec"]
    version = current_environment()["tensorrt"]
    assert timing_cache_path(engine, cfg, version).is_file()
    assert record["environment"]["tensorrt_series"] == tensorrt_series(version)

    sample = tuple(exp.report["input_shape"][1:])
    xs = [seeded_inputs((b,) + sample) for b in ([1, 4] if dynamic_batch else [1])]
    for x, y in zip(xs, engine_outputs(engine, xs)):
        result = compare(y, torch_outputs(se_reference, x), TOLERANCES["fp32"])
        assert result.ok, result


@needs_trt
def test_engine_from_another_environment_is_refused(export_cache, tmp_path):
    exp = export_cache("se")
    engine = build_engine(exp.model_path, tmp_path / "model.fp32.engine",
                              EngineConfig.from_onnx(exp.model_path, "fp32"))
    side = sidecar_path(engine)
    record = json.loads(side.read_text())
    record["environment"]["tensorrt"] = "9.3.0"
    side.write_text(json.dumps(record))
    with pytest.raises(EngineMismatch, match=r"TensorRT 9\.3\.0 \(built\)"):
        engine_outputs(engine, [np.zeros((1, 64, 32, 32), np.float32)])
    side.write_text(json.dumps({**record, "environment": current_environment()}))
    with pytest.raises(ConfigError, match="outside the engine's profile"):
        engine_outputs(engine, [np.zeros((2, 64, 32, 32), np.float32)])
