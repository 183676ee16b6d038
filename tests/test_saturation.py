"""The saturation emulation against the runtimes, and the portable weight form.

x86 CPUs without VNNI saturate u8 x s8 pair sums in int16 (saturation.py). On any x86
machine OpenVINO can be made to compute that way (``ONEDNN_MAX_CPU_ISA=AVX2``, honoured
by release builds), so the emulation is checked against real OpenVINO here whatever the
CPU; ONNX Runtime has no such switch, so it is checked as this CPU computes (exact with
VNNI; on a CPU without it, the portable form must still match the exact result)."""
from __future__ import annotations

import atexit
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy_attn.core.cpu import cpu_isa, isa_line, openvino_limited
from deploy_attn.graph.view import Graph
from deploy_attn.precision.saturation import PAIR_BOUND, _couples, _factors, _flattenings, \
    _refit, _rows, emulated_output, integer_activations, portable_weights, quantized_layers, \
    saturation_report
from deploy_attn.runtime.openvino import openvino_missing

X86 = platform.machine().lower() in ("x86_64", "amd64")
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2"}
needs_ov_x86 = pytest.mark.skipif(openvino_missing() is not None or not X86,
                                  reason=openvino_missing() or "the ISA limit is x86's")

# (input channels, output channels, kernel, group, activation type)
LAYERS = [(16, 8, 3, 1, "int8"), (5, 6, 3, 1, "int8"), (3, 4, 3, 1, "uint8"),
          (32, 16, 1, 1, "int8"), (12, 8, 3, 2, "uint8"), (8, 8, 3, 8, "int8")]


def layer_graph(w: np.ndarray, axis: int, act: str, layer: onnx.NodeProto, x_shape: list,
                rng: np.random.Generator) -> onnx.ModelProto:
    """float x -> Q -> DQ (``act``) -> ``layer`` (reading ``xd`` and ``wd``, writing ``y``)
    on DQ(int8 weights ``w``, scaled per channel along ``axis``)."""
    zero = np.array(0 if act == "int8" else 100, np.int8 if act == "int8" else np.uint8)
    channels = w.shape[axis]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
             numpy_helper.from_array(zero, "xz"),
             numpy_helper.from_array(w.astype(np.int8), "wq"),
             numpy_helper.from_array(rng.uniform(0.001, 0.01, channels).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(channels, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=axis), layer]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                       x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def conv_graph(c: int, o: int, k: int, group: int, act: str, seed: int = 0) -> onnx.ModelProto:
    """float -> Q -> DQ -> Conv(DQ(int8 weights, per channel)) with weights near +-127 of
    one sign in runs (pairs that saturate) and padding 1 for k = 3."""
    rng = np.random.default_rng(seed)
    w = rng.integers(60, 128, size=(o, c // group, k, k)) * rng.choice([-1, 1], size=(o, 1, 1, 1))
    w[:, 2::4] *= -1  # signs in runs of two: adjacent pairs of one sign
    w[:, 3::4] *= -1
    conv = helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", group=group,
                            pads=[k // 2] * 4, kernel_shape=[k, k])
    return layer_graph(w, 0, act, conv, [2, c, 9, 9], rng)


def layer_inputs(c: int, act: str, seed: int = 1, shape: tuple | None = None) -> np.ndarray:
    """Inputs spanning the activation's range (ReLU-like for the signed ones), (2, c, 9, 9)
    unless ``shape`` is given."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0 if act == "int8" else -5.0, 6.35 if act == "int8" else 7.75,
                    size=shape or (2, c, 9, 9))
    return x.astype(np.float32)


# one OpenVINO process per ISA limit for the whole session (the limits are read at process
# start): each request is a model path, answered once its output is saved beside it
_OV_WORKER = ("import sys, numpy as np\n"
              "from deploy_attn.runtime.openvino import ov_compile, ov_outputs\n"
              "for line in sys.stdin:\n"
              "    p = line.rstrip('\\n')\n"
              "    try:\n"
              "        y = ov_outputs(ov_compile(p), np.load(p[:-5] + '.x.npy'))\n"
              "        np.save(p + '.y.npy', y)\n"
              "        print('@done', flush=True)\n"
              "    except Exception as exc:\n"
              "        print('@failed ' + repr(exc).replace('\\n', ' '), flush=True)\n")
_ov_workers: dict[tuple, subprocess.Popen] = {}


def _ov_worker(env: dict) -> subprocess.Popen:
    key = tuple(sorted(env.items()))
    proc = _ov_workers.get(key)
    if proc is None or proc.poll() is not None:
        proc = subprocess.Popen([sys.executable, "-c", _OV_WORKER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
        _ov_workers[key] = proc
    return proc


@atexit.register
def _close_ov_workers() -> None:
    """End the session's OpenVINO processes; one the watchdog killed (a closed pipe) or one
    that does not stop is killed, never a traceback at interpreter exit."""
    while _ov_workers:
        proc = _ov_workers.popitem()[1]
        try:
            proc.stdin.close()
            proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()


def openvino_run(path: Path, x: np.ndarray, env: dict) -> np.ndarray:
    """OpenVINO's output on ``x`` in a process started with ``env`` added (one per ``env``,
    kept for the session)."""
    np.save(path.with_suffix(".x.npy"), x)
    proc = _ov_worker(env)
    proc.stdin.write(f"{path}\n")
    proc.stdin.flush()
    answer = ""
    watchdog = threading.Timer(120, proc.kill)  # a hung run fails, as the old timeout did
    watchdog.start()
    try:
        while not answer.startswith("@"):  # lines OpenVINO itself prints come first
            answer = proc.stdout.readline()
            assert answer, f"the OpenVINO process ({env}) ended: exit {proc.wait(timeout=60)}"
    finally:
        watchdog.cancel()
    assert answer.startswith("@done"), answer
    return np.load(str(path) + ".y.npy")


def emulation(model: onnx.ModelProto, x: np.ndarray, saturate: bool, kernel: str = "onednn",
              spatial: tuple | None = None) -> np.ndarray:
    """The one quantized layer's output as ``kernel`` computes it: a Conv's (N, O, *spatial)
    (the input's H, W unless given), a MatMul's or Gemm's (..., rows, N) as the graph's."""
    g = Graph(model)
    (layer,) = quantized_layers(g)
    q = integer_activations(model, [layer], x)[layer.x]
    y = emulated_output(layer, q, g.const(layer.w_dq.input[1]), saturate, kernel)
    if layer.node.op_type != "Conv":  # (1, N, rows)
        return y[0].T.reshape(*x.shape[:-1], y.shape[1])
    return y.reshape(len(x), y.shape[1], *(x.shape[2:] if spatial is None else spatial))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@needs_ov_x86
@pytest.mark.parametrize("c,o,k,group,act", LAYERS, ids=lambda v: str(v))
def test_emulation_is_openvino_without_vnni(tmp_path, c, o, k, group, act):
    """Each layer saturates as predicted: OpenVINO limited to AVX2 equals the saturating
    emulation to 1e-5 of the output's range, and differs from the exact result by what the
    emulation says (depthwise convolutions are not paired: exact)."""
    model = conv_graph(c, o, k, group, act)
    path = tmp_path / "layer.onnx"
    onnx.save(model, str(path))
    x = layer_inputs(c, act)
    ov = openvino_run(path, x, AVX2)
    predicted, exact = emulation(model, x, True), emulation(model, x, False)
    report = saturation_report(model, x)
    err = rel(ov, predicted)
    print(f"[saturation] {c}->{o} k{k} g{group} {act}: OpenVINO AVX2 vs emulation {err:.2e}, "
          f"vs exact {rel(ov, exact):.2e}, predicted {report['max_saturated_fraction']:.3f}")
    if group == c:  # depthwise: exact on oneDNN
        assert report["depthwise_exact"] == 1 and not report["layers"]
        assert rel(ov, exact) < 1e-5
        return
    assert report["layers"][0]["saturated"] > 0  # the weights were made to saturate
    assert err < 1e-5 and rel(ov, exact) > 1e-2, (err, rel(ov, exact))


@needs_ov_x86
@pytest.mark.parametrize("op", ["MaxPool", "Transpose"])
def test_a_layer_behind_an_op_that_keeps_its_integers(tmp_path, op):
    """``DQ -> MaxPool -> Conv`` (or a Transpose there and back): OpenVINO still runs the
    Conv on integers, so limited to AVX2 it saturates as the emulation of the Conv says, and
    the portable refit, which finds the layer there, makes it exact."""
    model = conv_graph(16, 8, 3, 1, "uint8")
    conv = model.graph.node[-1]
    if op == "MaxPool":
        between = [helper.make_node("MaxPool", ["xd"], ["xp"], kernel_shape=[3, 3],
                                    pads=[1, 1, 1, 1])]
    else:
        between = [helper.make_node("Transpose", ["xd"], ["xt"], perm=[0, 2, 3, 1]),
                   helper.make_node("Transpose", ["xt"], ["xp"], perm=[0, 3, 1, 2])]
    conv.input[0] = "xp"
    for node in between:  # before the Conv, in order
        model.graph.node.insert(len(model.graph.node) - 1, node)
    x = layer_inputs(16, "uint8")
    (layer,) = quantized_layers(Graph(model))
    assert layer.x == "xp"
    path = tmp_path / "behind.onnx"
    onnx.save(model, str(path))
    err = rel(openvino_run(path, x, AVX2), emulation(model, x, True))
    print(f"[saturation] DQ -> {op} -> Conv: OpenVINO AVX2 vs emulation {err:.2e}")
    assert err < 1e-5 and rel(emulation(model, x, True), emulation(model, x, False)) > 1e-2
    assert portable_weights(model)["layers"] == 1
    assert saturation_report(model, x)["saturating_layers"] == 0
    onnx.save(model, str(path))
    assert rel(openvino_run(path, x, AVX2), emulation(model, x, False)) < 1e-5


@needs_ov_x86
def test_portable_weights_compute_exactly_without_vnni(tmp_path):
    """The portable form: no same-sign neighbour couple over the bound in either layout,
    no saturation predicted, OpenVINO limited to AVX2 and this CPU's ONNX Runtime integer
    kernels both equal the exact result of the refitted graph, which stays close to the
    original one."""
    for c, o, k, group, act in LAYERS[:4]:
        model = conv_graph(c, o, k, group, act)
        x = layer_inputs(c, act)
        original = emulation(model, x, False)
        assert portable_weights(model)["layers"] == 1
        (layer,) = quantized_layers(Graph(model))
        assert _couples(_flattenings(layer)).max() <= PAIR_BOUND
        assert saturation_report(model, x)["saturating_layers"] == 0
        path = tmp_path / f"portable-{c}-{k}.onnx"
        onnx.save(model, str(path))
        exact = emulation(model, x, False)
        assert rel(openvino_run(path, x, AVX2), exact) < 1e-5
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert rel(session.run(None, {"x": x})[0], exact) < 1e-5
        assert rel(exact, original) < 0.02, rel(exact, original)  # at most ~1 bit lost


def test_the_refit_picks_clipping_or_rescaling_by_weight_error():
    """A channel with one couple a little over the bound among many small weights (trained
    weights) keeps most of its scale, that couple clipped; one whose weights are large everywhere is
    rescaled (clipping would cut most of them). Either way every couple is within the
    bound in both layouts, and the error is never above rescaling alone."""
    rng = np.random.default_rng(0)
    tail = np.clip(rng.normal(0, 8, (1, 64, 3, 3)), -40, 40)
    tail[0, 2:4, 1, 1] = [70, 64]  # one couple 6 over the bound
    flat = rng.integers(60, 128, (1, 64, 3, 3)) * rng.choice([-1, 1], (1, 64, 3, 3))
    w = np.round(np.concatenate([tail, flat])).astype(np.int8)
    q, f = _refit(w.astype(np.float64), True, per_channel=True)
    lowest = _factors(_rows(w, True))
    assert _couples(_rows(q, True)).max() <= PAIR_BOUND
    assert f[0] > lowest[0] + 0.02 and f[1] == pytest.approx(lowest[1]), (f, lowest)
    err = np.square(q / f.reshape(-1, 1, 1, 1) - w).sum((1, 2, 3))
    rescaled = np.round(w * lowest.reshape(-1, 1, 1, 1))
    err_rescaled = np.square(rescaled / lowest.reshape(-1, 1, 1, 1) - w).sum((1, 2, 3))
    print(f"[saturation] refit error {err} vs rescaling alone {err_rescaled}")
    assert (err <= err_rescaled + 1e-9).all() and err[0] < err_rescaled[0] / 2


def with_output_qdq(model: onnx.ModelProto, scale: float) -> onnx.ModelProto:
    """``model`` with its output through Q -> DQ (int8, ``scale``): ONNX Runtime's QDQ
    fusion then runs the Conv as a QLinearConv on its integer kernels (MLAS)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), "ys"),
                                numpy_helper.from_array(np.array(0, np.int8), "yz")])
    m.graph.node[-1].output[0] = "yc"
    m.graph.node.extend([helper.make_node("QuantizeLinear", ["yc", "ys", "yz"], ["yq"]),
                         helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])])
    return m


def requantized(v: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.round(v / scale), -128, 127) * scale


# odd channel counts with 3x3 kernels: MLAS pairs across kernel taps, oneDNN does not
ORT_LAYERS = LAYERS + [(7, 8, 3, 1, "uint8"), (9, 8, 1, 1, "int8")]


@pytest.mark.parametrize("c,o,k,group,act", ORT_LAYERS, ids=lambda v: str(v))
def test_onnx_runtime_integer_kernels_as_this_cpu_predicts(c, o, k, group, act):
    """ONNX Runtime's QLinearConv (a Conv with its output quantized) on a CPU with exact
    8-bit dot products (VNNI, AMX, ARM) computes the saturating layer exactly; on one
    without, as the MLAS emulation says (per-ISA expectation; measured on AMD Zen 3). A
    Conv whose output is not quantized runs in FP32: exact on every CPU."""
    model = conv_graph(c, o, k, group, act)
    x = layer_inputs(c, act)
    exact = emulation(model, x, False)
    scale = float(np.abs(exact).max()) / 127
    session = ort.InferenceSession(with_output_qdq(model, scale).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    mlas, onednn = emulation(model, x, True, "mlas"), emulation(model, x, True)
    err_exact, err_mlas = rel(y, requantized(exact, scale)), rel(y, requantized(mlas, scale))
    print(f"[saturation] {isa_line()}: ONNX Runtime QLinearConv {c}->{o} k{k} g{group} {act} "
          f"vs exact {err_exact:.2e}, vs the MLAS emulation {err_mlas:.2e}, oneDNN's "
          f"pairing vs MLAS's {rel(onednn, mlas):.2e}")
    if cpu_isa()["int8_dot"] == "exact":
        assert err_exact < 1e-5
    else:
        assert err_mlas < 1e-5
        assert group == c or err_exact > 1e-3  # the weights were made to saturate
    if k == 3 and c % 2 and group == 1:
        assert rel(onednn, mlas) > 1e-2  # the two kernels' pairings differ here
    float_conv = ort.InferenceSession(model.SerializeToString(),
                                      providers=["CPUExecutionProvider"])
    assert rel(float_conv.run(None, {"x": x})[0], exact) < 1e-5


def test_cpu_probe_names_the_isa(monkeypatch):
    cpu = cpu_isa()
    assert cpu["machine"] and cpu["int8_dot"] in ("exact", "saturating")
    if X86:
        assert "avx2" in cpu["isa"] or cpu["int8_dot"] == "saturating"
        assert cpu["int8_dot"] == ("exact" if {"avx512_vnni", "avx_vnni", "amx_int8"}
                                   & set(cpu["isa"]) else "saturating")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert openvino_limited() and cpu_isa()["openvino_int8_dot"] == "saturating"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in isa_line()


def matmul_graph(k: int, n: int, op: str, act: str, rows: tuple, trans: bool,
                 seed: int = 0) -> onnx.ModelProto:
    """float -> Q -> DQ -> MatMul (or Gemm, its weights (N, K) with transB) on DQ(int8
    weights, per output column) that saturate as conv_graph's do; input (2, *rows, K)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(60, 128, size=(k, n)) * rng.choice([-1, 1], size=(1, n))
    w[2::4] *= -1  # signs in runs of two along K
    w[3::4] *= -1
    node = helper.make_node(op, ["xd", "wd"], ["y"], name="mm", **({"transB": 1} if trans else {}))
    return layer_graph(w.T if trans else w, 0 if trans else 1, act, node, [2, *rows, k], rng)


# (op, K, N, activation type, the input's rows between batch and K, Gemm's transB)
MATMULS = [("MatMul", 32, 8, "uint8", (4,), False), ("MatMul", 33, 8, "int8", (5,), False),
           ("MatMul", 64, 16, "uint8", (3, 4), False), ("Gemm", 32, 8, "uint8", (), True),
           ("Gemm", 17, 6, "int8", (), False)]


def matmul_case(op: str, k: int, n: int, act: str, rows: tuple, trans: bool) -> tuple:
    """The layer's graph and inputs, (2, *rows, K)."""
    return matmul_graph(k, n, op, act, rows, trans), layer_inputs(k, act, shape=(2, *rows, k))


@pytest.mark.parametrize("case", MATMULS, ids=lambda v: str(v))
def test_onnx_runtime_matmul_and_gemm_as_this_cpu_predicts(case):
    """MatMul and Gemm pair their reduction along K (one emulation for both kernels). Unlike
    a Conv, ONNX Runtime runs ``DQ -> MatMul/Gemm`` on its integer kernels whether or not the
    output is quantized (measured on Zen 3: its MatMulIntegerToFloat fusion): exact with
    VNNI, as the emulation says without. The portable refit bounds the layer, and ONNX
    Runtime then computes the refitted graph exactly on every CPU."""
    model, x = matmul_case(*case)
    exact, mlas = emulation(model, x, False, "mlas"), emulation(model, x, True, "mlas")
    assert rel(mlas, exact) > 1e-2  # the weights were made to saturate
    scale = float(np.abs(exact).max()) / 127
    this_cpu = exact if cpu_isa()["int8_dot"] == "exact" else mlas
    for label, graph, expected in [("float output", model, this_cpu),
                                   ("quantized output", with_output_qdq(model, scale),
                                    requantized(this_cpu, scale))]:
        session = ort.InferenceSession(graph.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        err = rel(session.run(None, {"x": x})[0], expected)
        print(f"[saturation] {isa_line()}: ONNX Runtime {case[0]} {case[1]}->{case[2]} "
              f"{case[3]} {label} vs prediction {err:.2e}")
        assert err < 1e-5, (label, err)
    assert portable_weights(model)["layers"] == 1
    assert saturation_report(model, x, kernel="mlas")["saturating_layers"] == 0
    refit = emulation(model, x, False, "mlas")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    err = rel(session.run(None, {"x": x})[0], refit)
    print(f"[saturation] ONNX Runtime {case[0]} portable vs its exact result {err:.2e}, "
          f"vs the unrefit one {rel(refit, exact):.2e}")
    # the refit's cost: about one bit of each rescaled weight (2.2e-2 of the range seen on
    # the Gemm's 16 outputs)
    assert err < 1e-5 and rel(refit, exact) < 0.04


@needs_ov_x86
@pytest.mark.parametrize("case", MATMULS, ids=lambda v: str(v))
def test_matmul_and_gemm_emulation_is_openvino_without_vnni(tmp_path, case):
    """OpenVINO limited to AVX2 saturates MatMul and Gemm as the emulation (pairs along K)
    says."""
    model, x = matmul_case(*case)
    path = tmp_path / "mm.onnx"
    onnx.save(model, str(path))
    predicted = emulation(model, x, True)
    err = rel(openvino_run(path, x, AVX2), predicted)
    print(f"[saturation] OpenVINO AVX2 {case[0]} {case[1]}->{case[2]} vs emulation {err:.2e}")
    assert err < 1e-5 and rel(predicted, emulation(model, x, False)) > 1e-2
