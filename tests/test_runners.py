"""One runner per runtime (runtime/base.py): each loads once and gives the same numbers
through run(), outputs() and timed() as its runtime's own calls do."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from deploy_attn.runtime.backends import run_target, target_runner
from deploy_attn.runtime.openvino import OpenVINORunner, openvino_missing
from deploy_attn.runtime.ort import OrtRunner, ort_session_options
from deploy_attn.runtime.pytorch import TorchRunner
from deploy_attn.runtime.tensorrt import TensorRTRunner


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory):
    """y = relu(x) + 1 and z = x * 2, batch fixed at 2 (a static batch runs in slices)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("Add", ["r", "one"], ["y"]),
                               helper.make_node("Mul", ["x", "two"], ["z"])],
                              "two", [x], [y, z], [one, two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path_factory.mktemp("runners") / "two.onnx"
    onnx.save(model, path)
    return path


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3)).astype(np.float32)


def _expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(x, 0) + 1, x * 2


def test_ort_runner_runs_batches_names_and_timed_calls(two_outputs):
    x = _x(6)  # three slices of the graph's batch
    y, z = _expected(x)
    for runner in (OrtRunner(two_outputs), OrtRunner(two_outputs, verify=True),
                   OrtRunner(two_outputs, threads=1)):
        np.testing.assert_allclose(runner.run(x), y, rtol=0, atol=1e-6)
        named = runner.outputs(x, ["z", "y"])
        np.testing.assert_allclose(named["z"], z, rtol=0, atol=1e-6)
        np.testing.assert_allclose(named["y"], y, rtol=0, atol=1e-6)
        out = runner.timed(x[:2])()
        np.testing.assert_allclose(out[0], y[:2], rtol=0, atol=1e-6)
    opts = OrtRunner(two_outputs, threads=1).session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


@pytest.mark.parametrize("env,threads,expected", [
    (None, None, 0), ("3", None, 3), ("3", 2, 2), ("0", None, 0), ("four", None, 0)])
def test_ort_sessions_take_omp_num_threads(monkeypatch, env, threads, expected):
    """OMP_NUM_THREADS limits ONNX Runtime's pool as it does PyTorch's (0: one per core);
    an explicit ``threads`` wins, and a value that is not a positive count is ignored."""
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert ort_session_options(threads).intra_op_num_threads == expected


@pytest.mark.skipif(openvino_missing() is not None, reason=str(openvino_missing()))
def test_openvino_runner_matches_ort(two_outputs):
    x = _x(4)
    y, z = _expected(x)
    runner = OpenVINORunner(two_outputs, threads=1)
    np.testing.assert_allclose(runner.run(x), y, rtol=0, atol=1e-6)
    np.testing.assert_allclose(runner.outputs(x, ["z"])["z"], z, rtol=0, atol=1e-6)
    runner.timed(x[:2])()
    np.testing.assert_allclose(run_target("openvino", two_outputs, x), y, rtol=0, atol=1e-6)
    assert isinstance(target_runner("openvino", two_outputs), OpenVINORunner)
    assert isinstance(target_runner("onnx-cpu", two_outputs), OrtRunner)


def test_torch_runner_is_the_reference():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).train()
    x = _x(5)
    runner = TorchRunner(model)
    assert not model.training  # eval mode, as every reference is run
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(runner.run(x), ref)
    np.testing.assert_array_equal(runner.timed(x)().numpy(), ref)


def test_tensorrt_runner_touches_nothing_until_entered(tmp_path):
    """Made anywhere (no TensorRT, no GPU, no file read); running it outside a with block
    is a clear error, not a crash in Polygraphy."""
    runner = TensorRTRunner(tmp_path / "missing.engine", batch=1)
    with pytest.raises(RuntimeError, match="enter the TensorRTRunner"):
        runner.run(_x(1))
    runner.close()  # nothing held: closing is harmless
