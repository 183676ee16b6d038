"""INT8 on CPUs without VNNI: predict where 8-bit dot products saturate, and the portable
weight form in which none can.

An x86 CPU without VNNI (AVX2, AVX-512 without VNNI) computes a u8 x s8 dot product with
``vpmaddubsw``: each pair of adjacent products is added in int16 and saturated to
[-32768, 32767] before the int32 sum. s8 activations are shifted to u8 first (+128) and
the shift is taken back exactly (the compensation 128 * sum(w)). Emulated here in numpy
for the two CPU runtimes' kernels (KERNELS), which pair the reduction differently:

* OpenVINO (oneDNN): the two products of adjacent input channels at one kernel tap (a
  zero channel after an odd count), padding at the activation's zero point. Depthwise
  convolutions (one input channel per group) are not paired: widened to 16 bits (exact).
* ONNX Runtime (MLAS): adjacent elements of the reduction laid out kernel tap by kernel
  tap, input channels innermost (NHWC im2col), so with an odd channel count a pair spans
  two taps. MLAS runs a Conv on integers only where the QDQ fusion makes it a QLinearConv
  (its output quantized); elsewhere ONNX Runtime computes it in FP32, exactly, so for ONNX
  Runtime's Convs the prediction is a bound. Depthwise convolutions: exact.

MatMul and Gemm pair along K in both (ONNX Runtime runs ``DQ -> MatMul/Gemm`` on MLAS
whether or not the output is quantized: the prediction is what it computes). Both checked
on convolutions, MatMul and Gemm on an AVX2-only CPU (AMD Zen 3) and against OpenVINO with
``ONEDNN_MAX_CPU_ISA=AVX2`` on VNNI machines, to 1e-5 (tests/test_saturation.py).
A layer's activation is followed back through the ops that keep its integers (MaxPool,
ReduceMax, Reshape, ...: PRESERVING): OpenVINO runs a Conv fed by ``DQ -> ReduceMax`` in
INT8 too (graph/cpu_forms.py, max_after_qdq).

``portable_weights`` rewrites the weights of a Q/DQ graph per output channel so that no
two neighbouring weights of the same sign sum to more than 128 in |w|, in either order a
kernel may lay the reduction out (input channels innermost, as oneDNN and ONNX Runtime's
NHWC kernels do, or kernel taps innermost, as an NCHW im2col does). Then 255 * 128 = 32640
bounds every pair sum (a mixed-sign pair stays below 255 * 128 anyway), on every CPU.
Channels already within it keep their weights; for each other one the refit is chosen by
measurement: from rescaling the whole channel until its worst couple is within 128 (every
weight a coarser step) to keeping its scale and clipping the couples over it (the few
largest weights cut), the candidate whose weights are nearest the original ones (least
squares) wins. The bound over any two weights (top two |w|) or 7-bit
weights (NNCF's OverflowFix, ONNX Runtime's reduce_range) cost more accuracy: README,
"CPUs".
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..core.onnx_io import attrs, load_onnx
from ..graph.view import Graph
from ..runtime.ort import exact_session, ort_batches

PAIR_BOUND = 128  # |w1| + |w2| <= this: 255 * 128 = 32640 fits int16
INT16 = (-32768, 32767)
BUDGET = 40_000_000  # pair sums emulated per layer at most (images are dropped to fit)
SHIFT = {np.dtype(np.int8): 128, np.dtype(np.uint8): 0}
# each CPU runtime's integer kernels: its name and how it pairs the reduction (docstring)
KERNELS = {"onednn": ("OpenVINO (oneDNN)", "adjacent input channels paired at each kernel tap"),
           "mlas": ("ONNX Runtime (MLAS)", "adjacent elements of the tap-major, "
                    "channels-innermost reduction paired, where a Conv runs as QLinearConv "
                    "(MatMul and Gemm always)")}
# ops whose output holds the same integers at the same scale as their input: a Conv reading
# DQ -> one of these still runs on integers in OpenVINO
PRESERVING = ("MaxPool", "ReduceMax", "ReduceMin", "Reshape", "Flatten", "Transpose",
              "Squeeze", "Unsqueeze", "Identity")


@dataclass
class QLayer:
    """A quantized Conv/MatMul/Gemm of a Q/DQ graph with constant INT8 weights."""

    node: onnx.NodeProto
    x: str  # the float tensor the layer reads: its DequantizeLinear's output, or after PRESERVING
    x_scale: float
    x_zero: int
    x_dtype: np.dtype
    w_dq: onnx.NodeProto  # the weights' DequantizeLinear
    w: np.ndarray  # int8; Conv (O, C/g, kh, kw), else (K, N)
    group: int = 1
    x_type: int = onnx.TensorProto.FLOAT  # x's element type (its DequantizeLinear's scale's)

    @property
    def depthwise(self) -> bool:
        return self.node.op_type == "Conv" and self.w.shape[1] == 1 and self.group > 1


def _activation_dq(g: Graph, name: str) -> onnx.NodeProto | None:
    """The DequantizeLinear whose integers tensor ``name`` holds, through PRESERVING ops."""
    node = g.producer.get(name)
    while node is not None and node.op_type in PRESERVING:
        node = g.producer.get(node.input[0])
    return node


def quantized_layers(g: Graph) -> list[QLayer]:
    """Every Conv/MatMul/Gemm whose activation (through PRESERVING ops) and weights both
    come through DequantizeLinear, the weights from an INT8 constant."""
    layers = []
    for node in g.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        x_dq, w_dq = _activation_dq(g, node.input[0]), g.producer.get(node.input[1])
        if not (x_dq and w_dq and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        w = g.const(w_dq.input[0])
        if (w is None or w.dtype != np.int8 or g.const(x_dq.input[0]) is not None
                or w.ndim != (4 if node.op_type == "Conv" else 2)):
            continue
        zero = g.const(x_dq.input[2]) if len(x_dq.input) > 2 and x_dq.input[2] else None
        zero = np.zeros((), np.uint8) if zero is None else zero
        values = attrs(node)
        if node.op_type == "Gemm":
            if values.get("transA"):
                continue
            w = w.T if values.get("transB") else w
        x_scale = g.const(x_dq.input[1])
        layers.append(QLayer(node, node.input[0], float(x_scale.reshape(-1)[0]),
                             int(zero.reshape(-1)[0]), zero.dtype, w_dq, w,
                             int(values.get("group", 1)),
                             onnx.helper.np_dtype_to_tensor_dtype(x_scale.dtype)))
    return layers


# --- emulation ----------------------------------------------------------------------------
def _taps(u: np.ndarray, layer: QLayer, pad_value: int) -> tuple[list[np.ndarray], tuple]:
    """The shifted activation at each kernel tap, (N, C, Ho, Wo) each, and (Ho, Wo)."""
    a = attrs(layer.node)
    kh, kw = layer.w.shape[2:]
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    t, l, b, r = a.get("pads", [0, 0, 0, 0])
    up = np.pad(u, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=pad_value)
    ho = (up.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (up.shape[3] - dw * (kw - 1) - 1) // sw + 1
    taps = [up[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]
    return taps, (ho, wo)


def _pair_sums(u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """u (N, K, S) and w (O, K) integers, pairs along K: the saturated and the exact
    sums (N, O, S) in int64, the count of saturating pair sums and of pair sums."""
    if u.shape[1] % 2:
        u = np.concatenate([u, np.zeros_like(u[:, :1])], 1)
        w = np.concatenate([w, np.zeros_like(w[:, :1])], 1)
    pairs = (u[:, None, 0::2] * w[None, :, 0::2, None] +
             u[:, None, 1::2] * w[None, :, 1::2, None])  # (N, O, K/2, S), int32
    clipped = np.clip(pairs, *INT16)
    saturated = int(np.count_nonzero(clipped != pairs))
    return (clipped.sum(2, dtype=np.int64), pairs.sum(2, dtype=np.int64), saturated,
            pairs.size)


def _accumulate(layer: QLayer, q: np.ndarray, images: int, kernel: str = "onednn") -> tuple:
    """The layer's int64 accumulators on the first ``images`` of ``q``, saturated and
    exact, as ``kernel`` (KERNELS) pairs the reduction, the shift compensation, the
    saturating pair sums and all pair sums."""
    shift = SHIFT[layer.x_dtype]
    w = layer.w.astype(np.int32)
    u = q[:images].astype(np.int32) + shift
    zero = layer.x_zero + shift
    saturated = count = 0
    if layer.node.op_type != "Conv":  # (..., K) @ (K, N): pairs along K
        sat, exact, saturated, count = _pair_sums(u.reshape(-1, w.shape[0]).T[None], w.T)
        return sat, exact, zero * w.sum(0)[None, :, None], saturated, count
    taps, (ho, wo) = _taps(u, layer, zero)
    cg, og = w.shape[1], w.shape[0] // layer.group
    outs_sat, outs_exact = [], []
    for gi in range(layer.group):
        wg = w[gi * og:(gi + 1) * og].reshape(og, cg, -1)
        group_taps = [tap[:, gi * cg:(gi + 1) * cg].reshape(images, cg, -1) for tap in taps]
        if kernel == "mlas":  # one reduction, tap-major with channels innermost
            chunks = [(np.concatenate(group_taps, 1),
                       wg.transpose(0, 2, 1).reshape(og, -1))]
        else:  # oneDNN: each tap's channels on their own
            chunks = [(tap, wg[:, :, t]) for t, tap in enumerate(group_taps)]
        acc_sat = acc_exact = 0
        for tap_u, tap_w in chunks:
            s, e, n_sat, n = _pair_sums(tap_u, tap_w)
            acc_sat, acc_exact = acc_sat + s, acc_exact + e
            saturated, count = saturated + n_sat, count + n
        outs_sat.append(acc_sat)
        outs_exact.append(acc_exact)
    comp = zero * w.reshape(w.shape[0], -1).sum(1)[None, :, None]
    exact = np.concatenate(outs_exact, 1)
    if layer.depthwise:  # widened to 16 bits by both kernels: nothing saturates
        return exact, exact, comp, 0, count
    return np.concatenate(outs_sat, 1), exact, comp, saturated, count


def emulated_output(layer: QLayer, q: np.ndarray, w_scale: np.ndarray,
                    saturate: bool = True, kernel: str = "onednn") -> np.ndarray:
    """The layer's output before its bias on integer activations ``q``, (N, O, positions)
    (a MatMul's rows as positions), as ``kernel`` computes it on a CPU without VNNI
    (``saturate``) or as an exact one does."""
    sat, exact, comp, _, _ = _accumulate(layer, q, len(q), kernel)
    acc = (sat if saturate else exact) - comp
    return layer.x_scale * np.asarray(w_scale, np.float64).reshape(1, -1, 1) * acc


def emulate(layer: QLayer, q: np.ndarray, kernel: str = "onednn") -> dict:
    """Layer ``layer`` on its integer activation ``q`` as ``kernel`` computes it on a CPU
    without VNNI:
    the fraction of pair sums that saturate, and the error that causes in the layer's
    output (relative RMS over the exact integer result, the shift compensation and
    scales being exact), with ``images`` the inputs emulated."""
    conv = layer.node.op_type == "Conv"
    positions = int(np.prod(q.shape[2:] if conv else q.shape[1:-1]))
    images = max(1, min(len(q), BUDGET // max(layer.w.size // 2 * positions, 1)))
    sat, exact, comp, saturated, count = _accumulate(layer, q, images, kernel)
    err = float(np.sqrt(((sat - exact).astype(np.float64) ** 2).mean()))
    rms = float(np.sqrt(((exact - comp).astype(np.float64) ** 2).mean()))
    return {"node": layer.node.name, "op": layer.node.op_type, "images": images,
            "pair_sums": count, "saturated": saturated,
            "saturated_fraction": saturated / count if count else 0.0,
            "output_rel_rms_error": err / rms if rms > 0 else 0.0}


def integer_activations(model: onnx.ModelProto, layers: list[QLayer],
                        inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Per layer's input tensor (``QLayer.x``), its integers on ``inputs``: the float tensor
    the layer reads, computed with each op as the graph states it (ONNX Runtime with graph
    optimisations off: the same on every CPU), divided by its scale, plus its zero point
    (exact: the tensor is a DequantizeLinear's output or PRESERVING ops of one)."""
    types = {la.x: la.x_type for la in layers}
    names = sorted(types)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    outputs = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, types[n], None)
                          for n in names if n not in outputs)
    session = exact_session(m)
    order = [o.name for o in m.graph.output]
    runs = list(ort_batches(session, inputs))
    values = {n: np.concatenate([r[order.index(n)] for r in runs]) for n in names}
    acts = {}
    for la in layers:
        info = np.iinfo(la.x_dtype)
        q = np.round(values[la.x].astype(np.float64) / la.x_scale) + la.x_zero
        acts[la.x] = np.clip(q, info.min, info.max).astype(la.x_dtype)
    return acts


def saturation_report(graph: str | Path | onnx.ModelProto, inputs: np.ndarray,
                      images: int = 4, kernel: str = "onednn") -> dict:
    """What ``kernel`` (KERNELS) does with the Q/DQ graph (a file or a model) on a CPU
    without VNNI, on ``inputs`` (the first ``images`` of them, at most): per quantized
    Conv/MatMul/Gemm the fraction of u8 x s8 pair sums that saturate in int16 and the
    relative RMS error it causes in the layer's output; depthwise convolutions listed as
    exact."""
    model = graph if isinstance(graph, onnx.ModelProto) else load_onnx(graph, check=False)
    g = Graph(model)
    layers = quantized_layers(g)
    paired = [la for la in layers if not la.depthwise]
    acts = integer_activations(model, paired, inputs[:images])
    rows = [emulate(la, acts[la.x], kernel) for la in paired]
    worst = max((r for r in rows if r["saturated"]), key=lambda r: r["output_rel_rms_error"],
                default=None)
    runtime, pairing = KERNELS[kernel]
    return {"model": f"x86 without VNNI (vpmaddubsw, int16 saturation), {runtime}: {pairing}",
            "kernel": kernel,
            "layers": rows, "depthwise_exact": sum(la.depthwise for la in layers),
            "saturating_layers": sum(r["saturated"] > 0 for r in rows),
            "max_saturated_fraction": max((r["saturated_fraction"] for r in rows), default=0.0),
            "worst": worst and {k: worst[k] for k in ("node", "saturated_fraction",
                                                      "output_rel_rms_error")}}


def kernel_name(sat: dict) -> str:
    """The runtime whose kernels a saturation report emulates (oneDNN's before "kernel")."""
    return KERNELS[sat.get("kernel", "onednn")][0]


def saturation_note(sat: dict) -> str:
    """One line for the CLI and the report."""
    runtime = kernel_name(sat)
    if not sat["saturating_layers"]:
        return (f"no 8-bit pair sum saturates on a CPU without VNNI ({len(sat['layers'])} "
                f"layers emulated as {runtime} pairs them)")
    w = sat["worst"]
    return (f"on a CPU without VNNI ({runtime}) {sat['saturating_layers']} of "
            f"{len(sat['layers'])} layers "
            f"saturate (worst {w['node']}: {100 * w['saturated_fraction']:.2g}% of pair sums, "
            f"output error {100 * w['output_rel_rms_error']:.2g}% RMS)")


# --- the portable form ----------------------------------------------------------------------
def _couples(rows: list[np.ndarray]) -> np.ndarray:
    """Per row, the largest |w_a| + |w_b| over neighbours of the same sign in any of the
    flattenings ``rows`` (O, K) each, and the largest |w| (a mixed-sign pair reaches at
    most 255 * 128 = 32640 whatever the weights)."""
    top = np.zeros(len(rows[0]), np.int32)
    for r in rows:
        r = r.astype(np.int32)
        a, b = r[:, :-1], r[:, 1:]
        pair = np.where(a * b > 0, np.abs(a) + np.abs(b), np.maximum(np.abs(a), np.abs(b)))
        top = np.maximum(top, pair.max(1) if pair.shape[1] else np.abs(r).max(1))
    return top


def _factors(rows: list[np.ndarray]) -> np.ndarray:
    """Per output channel, the factor f <= 1 for which round(w * f) keeps every
    same-sign neighbour couple of ``rows`` within PAIR_BOUND (1 where it already is)."""
    top = _couples(rows)
    f = np.where(top > PAIR_BOUND, PAIR_BOUND / np.maximum(top, 1), 1.0)
    while True:
        over = _couples([np.round(r * f[:, None]) for r in rows]) > PAIR_BOUND
        if not over.any():
            return f
        f = np.where(over, f * (1 - 1 / 256), f)


def _flattenings(layer: "QLayer") -> list[np.ndarray]:
    """The layer's weights as (O, K) rows in each order a kernel may pair them in: kernel
    taps innermost (NCHW im2col) and input channels innermost (oneDNN, NHWC kernels)."""
    return _rows(layer.w, layer.node.op_type == "Conv")


def _rows(w: np.ndarray, conv: bool) -> list[np.ndarray]:
    """_flattenings of a weight array in its layer's layout (Conv OIHW, else (K, O))."""
    if not conv:
        return [w.T]
    return [w.reshape(w.shape[0], -1), w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)]


def _clip_couples(w: np.ndarray, conv: bool) -> np.ndarray:
    """``w`` (integers, in its layer's layout) with every same-sign neighbour couple over
    PAIR_BOUND in any flattening brought within it: each such couple's excess is taken off
    its two weights in halves (the least-squares split; the larger gets the odd unit), a
    weight in several couples losing the most any of them asks, until none is over."""
    v = w.astype(np.int32).ravel()
    flats = _rows(np.arange(v.size).reshape(w.shape), conv)
    while True:
        cut = np.zeros_like(v)
        for idx in flats:
            r = v[idx]
            a, b = r[:, :-1], r[:, 1:]
            excess = np.where(a * b > 0, np.abs(a) + np.abs(b) - PAIR_BOUND, 0)
            over = excess > 0
            if not over.any():
                continue
            larger = (np.abs(a) >= np.abs(b))[over]
            big, small = (excess[over] + 1) // 2, excess[over] // 2
            ia, ib = idx[:, :-1][over], idx[:, 1:][over]
            np.maximum.at(cut, ia, np.where(larger, big, small))
            np.maximum.at(cut, ib, np.where(larger, small, big))
        if not cut.any():
            return v.reshape(w.shape)
        v -= np.sign(v) * cut


_REFITS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # _refit's, by weights


def _refit(w: np.ndarray, conv: bool, per_channel: bool, steps: int = 8
           ) -> tuple[np.ndarray, np.ndarray]:
    """_search_refit once per weights in a process (an export refits them per CPU target)."""
    key = (hashlib.sha256(w.tobytes()).digest(), w.shape, w.dtype.str, conv, per_channel, steps)
    if key not in _REFITS:
        if len(_REFITS) >= 4096:
            _REFITS.clear()
        _REFITS[key] = _search_refit(w, conv, per_channel, steps)
    return _REFITS[key][0].copy(), _REFITS[key][1].copy()


def _search_refit(w: np.ndarray, conv: bool, per_channel: bool, steps: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The portable INT8 weights of ``w`` and the factor f each output channel's scale is
    divided by: among f from the smallest that keeps every couple within PAIR_BOUND by
    rescaling alone (_factors) up to 1 (no rescaling, couples clipped: _clip_couples), the
    one whose weights round(w * f) / f, clipped, are nearest ``w`` (least squares, per
    channel; one f for the tensor when it has one scale). Rescaling costs every weight a
    coarser step, clipping costs the few largest couples: the measure picks the balance."""
    axis = 0 if conv else 1
    shape = [-1 if d == axis else 1 for d in range(w.ndim)]
    lowest = _factors(_rows(w, conv))
    if not per_channel:
        lowest = np.full_like(lowest, lowest.min())
    best_w, best_f, best_err = None, None, None
    for t in np.linspace(0.0, 1.0, steps + 1):
        f = lowest + (1.0 - lowest) * t
        q = _clip_couples(np.round(w * f.reshape(shape)), conv)
        err = np.square(q / f.reshape(shape) - w).sum(axis=tuple(
            d for d in range(w.ndim) if d != axis))
        if not per_channel:
            err = np.full_like(err, err.sum())
        if best_err is None:
            best_w, best_f, best_err = q, f.copy(), err
            continue
        better = err < best_err
        best_w = np.where(better.reshape(shape), q, best_w)
        best_f, best_err = np.where(better, f, best_f), np.minimum(err, best_err)
    return best_w.astype(np.int8), best_f


def portable_weights(model: onnx.ModelProto) -> dict:
    """Rewrite, in place, the INT8 weights of every paired quantized layer (quantized_layers,
    depthwise convs excepted) to the portable bound, with the weight scales (and an INT32
    bias's scale) adjusted so each channel keeps its value; the layers changed and the
    largest rescaling."""
    g = Graph(model)
    changed, smallest = 0, 1.0
    uses = {}
    for node in g.graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    done: set[str] = set()
    for layer in quantized_layers(g):
        # a weight DequantizeLinear read by several layers (unsplit's twin convs) is refitted
        # once: its layers share the weights, hence the same couples
        if layer.depthwise or layer.w_dq.output[0] in done:
            continue
        done.add(layer.w_dq.output[0])
        conv = layer.node.op_type == "Conv"
        if _couples(_flattenings(layer)).max() <= PAIR_BOUND:
            continue
        scale = g.const(layer.w_dq.input[1])
        w_new, f = _refit(layer.w, conv, scale.size > 1)
        changed += 1
        smallest = min(smallest, float(f.min()))
        if layer.node.op_type == "Gemm" and attrs(layer.node).get("transB"):
            w_new = w_new.T
        _set_const(g, layer.w_dq, 0, w_new, uses)
        s = scale.astype(np.float64) / (f if scale.size > 1 else f[:1]).reshape(scale.shape)
        _set_const(g, layer.w_dq, 1, s.astype(scale.dtype), uses)
        bias_dq = g.producer.get(layer.node.input[2]) if len(layer.node.input) > 2 else None
        if bias_dq is not None and bias_dq.op_type == "DequantizeLinear":
            b, bs = g.const(bias_dq.input[0]), g.const(bias_dq.input[1])
            if b is not None and b.dtype == np.int32 and bs is not None:
                fb = f if bs.size > 1 else f[0]
                _set_const(g, bias_dq, 0, np.round(b * fb).astype(np.int32), uses)
                _set_const(g, bias_dq, 1, (bs.astype(np.float64) / fb).astype(bs.dtype), uses)
    return {"layers": changed, "smallest_factor": round(smallest, 4)}


def _set_const(g: Graph, node: onnx.NodeProto, index: int, value: np.ndarray,
               uses: dict[str, int]) -> None:
    """Input ``index`` of ``node`` becomes ``value``: in place where only ``node`` reads
    the initializer, else as a new one."""
    name = node.input[index]
    if name in g.inits and uses.get(name, 0) == 1:
        g.inits[name].CopyFrom(numpy_helper.from_array(value, name))
    else:
        node.input[index] = g.add_const(value, name.replace("/", "_"))
