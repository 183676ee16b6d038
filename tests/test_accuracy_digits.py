"""Accuracy parity on real labelled data. Random weights make parity easy to fake, so
registered backbones with attention are trained on scikit-learn's handwritten digits,
exported through the real job (FP32, FP16, INT8 calibrated on the training PNGs), and each
artifact's test-set accuracy is compared with PyTorch's.

Three cases, the three models the FP16/INT8 issue names: mobilenetv2_ca classifies the
digits (in the default suite); resnet50_se classifies them and unet_cbam segments them
(per pixel: background or the digit's class), both marked slow (about 3 and 2 minutes)."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("sklearn", reason="scikit-learn (the `test` extra) provides the digits")

from deploy_attn.datasets import LabelledImages, digits  # noqa: E402
from deploy_attn.models import create_model  # noqa: E402
from deploy_attn import export, open_export  # noqa: E402
from deploy_attn.pipeline.job import ExportResult  # noqa: E402
from deploy_attn.pipeline.parity import ort_outputs, ort_session, torch_outputs  # noqa: E402
from deploy_attn.registry import get_spec  # noqa: E402
from deploy_attn.sources import default_preprocess  # noqa: E402

SIZE = (32, 32)  # total stride 32 (classifiers) and 16 (UNet): the smallest input all take
SEED = 0
BATCH, LABEL_SMOOTHING = 32, 0.1
CALIB_COUNT = 128
FP16_POINTS, INT8_POINTS = 0.1, 1.0  # allowed accuracy change vs FP32, percentage points


@dataclass(frozen=True)
class Case:
    name: str
    segment: bool  # per-pixel labels: 0 background, 1 + digit on the digit's strokes
    epochs: int
    lr: float
    min_accuracy: float  # percent: below this the parity figures would prove little
    optimizer: str = "sgd"  # SGD (Nesterov) or AdamW, both with a one-cycle schedule

    @property
    def classes(self) -> int:
        return 11 if self.segment else 10


CASES = [
    pytest.param(Case("mobilenetv2_ca", False, 3, 0.05, 90.0), id="mobilenetv2_ca"),
    pytest.param(Case("resnet50_se", False, 3, 0.05, 90.0), id="resnet50_se",
                 marks=pytest.mark.slow),
    # Per-pixel digit classes need the bridge's global context; SGD left the UNet near
    # chance (9 % of stroke pixels after 4 epochs); AdamW reaches 83 % in 8 (chance: 10 %).
    pytest.param(Case("unet_cbam", True, 8, 3e-3, 75.0, "adamw"), id="unet_cbam",
                 marks=pytest.mark.slow),
]
FOREGROUND = 0.0  # normalised pixel value (mean 0.5, std 0.5) above which a pixel is stroke


def _targets(case: Case, data: LabelledImages) -> torch.Tensor:
    """Class per image, or per pixel for segmentation (the stroke pixels carry the digit)."""
    labels = torch.from_numpy(data.labels)
    if not case.segment:
        return labels
    stroke = torch.from_numpy(data.inputs[:, 0] > FOREGROUND)
    return torch.where(stroke, labels[:, None, None] + 1, 0)


@contextmanager
def _one_thread() -> Iterator[None]:
    """PyTorch on one thread: on a shared 2-core CPU these small convolutions ran about 8x
    slower with two threads (measured), and one thread makes training reproducible
    whatever the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digit_sets(tmp_path_factory) -> dict[str, LabelledImages]:
    """The digits as 1-channel PNGs at SIZE; every backbone reads 1-channel images with the
    same preprocessing, so one set serves all cases."""
    spec = get_spec(CASES[0].values[0].name)
    return digits(tmp_path_factory.mktemp("digits"),
                  default_preprocess(spec.kind, spec.input_shape(1, 1, SIZE)), seed=SEED)


@pytest.fixture(scope="session", params=CASES)
def case(request) -> Case:
    return request.param


@torch.no_grad()
def _precise_bn(model: nn.Module, x: torch.Tensor, batch: int = 256) -> None:
    """BatchNorm statistics re-estimated over the whole training set (a cumulative mean,
    not the running average of the last steps), so eval mode matches the trained weights."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def _train(model: nn.Module, case: Case, data: LabelledImages) -> None:
    """The case's optimizer with a one-cycle schedule and label smoothing, seeded."""
    x, y = torch.from_numpy(data.inputs), _targets(case, data)
    model.to(memory_format=torch.channels_last)  # ~30% faster on CPU; 1-channel x is both
    steps = len(x) // BATCH
    if case.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=case.lr, weight_decay=1e-4)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, case.lr, total_steps=case.epochs * steps,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(case.epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps):
            idx = order[i * BATCH:(i + 1) * BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    _precise_bn(model, x)
    model.to(memory_format=torch.contiguous_format)


@pytest.fixture(scope="session")
def checkpoint(case, digit_sets, tmp_path_factory) -> Path:
    """A state_dict of the case's model trained on the training split (once per session)."""
    model = create_model(case.name, channels=1, input_size=SIZE, num_classes=case.classes,
                         seed=SEED)
    t0 = time.perf_counter()
    with _one_thread():
        _train(model, case, digit_sets["train"])
    print(f"\n[digits] trained {case.name} {case.epochs} epochs in "
          f"{time.perf_counter() - t0:.1f} s")
    path = tmp_path_factory.mktemp("digits-ckpt") / f"{case.name}-digits.pt"
    torch.save(model.state_dict(), path)
    return path


Exported = tuple[ExportResult, list[tuple[float, str]]]


@pytest.fixture(scope="session")
def exported(case, checkpoint, digit_sets, tmp_path_factory) -> Exported:
    """The real export job on the checkpoint: result, (seconds, stage) progress."""
    # The job verifies FP16/INT8 on 32 training images calibration did not use (real data
    # in the range calibration saw). exclude=("auto",): the job leaves the most sensitive
    # nodes FP32 until INT8 meets its cosine threshold; they are listed in the figures.
    t0 = time.perf_counter()
    stages: list[tuple[float, str]] = []
    with _one_thread():
        result = export(case.name, out_dir=tmp_path_factory.mktemp("digits-export"),
                        channels=1, input_size=SIZE, num_classes=case.classes,
                        weights=checkpoint, precisions=("fp16", "int8-fp32", "int8"),
                        calib_dir=digit_sets["train"].folder, calib_count=CALIB_COUNT,
                        verify_count=32, exclude=("auto",),
                        progress=lambda msg: stages.append((round(time.perf_counter() - t0, 1),
                                                            msg)))
    print(f"[digits] export job (fp32, fp16, int8) in {time.perf_counter() - t0:.1f} s")
    return result, stages


def test_digit_pngs_are_what_the_pipeline_reads(digit_sets):
    """The arrays the model trains and is evaluated on are the PNGs under the pipeline's
    1-channel preprocessing ([0, 1], mean 0.5, std 0.5), computed here independently."""
    from PIL import Image

    assert {k: len(v.labels) for k, v in digit_sets.items()} == {"train": 1257, "test": 540}
    for split in digit_sets.values():
        files = sorted(split.folder.glob("*.png"))
        assert [int(f.stem.split("_")[1]) for f in files] == split.labels.tolist()
        assert set(split.labels.tolist()) == set(range(10))
        images = [Image.open(f) for f in files]
        assert {(im.mode, im.size) for im in images} == {("L", SIZE[::-1])}
        pixels = np.stack([np.asarray(im) for im in images]).astype(np.float32)[:, None]
        np.testing.assert_allclose(split.inputs, (pixels / 255 - 0.5) / 0.5, rtol=0, atol=1e-6)


def _accuracy(case: Case, logits: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy in percent: per image, or per stroke pixel for segmentation (the
    background, about 60% of the pixels, is left out so it cannot flatter the figure)."""
    pred = logits.argmax(1)
    scored = targets > 0 if case.segment else np.ones(targets.shape, bool)
    return 100.0 * float((pred == targets)[scored].mean())


def _ort_basic(path):
    """ONNX Runtime with its basic (level 1) graph optimisations, nothing disabled."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_digits_accuracy_parity(case, exported, digit_sets):
    result, stages = exported
    test = digit_sets["test"]
    targets = _targets(case, test).numpy()
    with _one_thread():  # the reference rebuilt from the export directory, as check does
        logits = {"pytorch": torch_outputs(open_export(result.directory).card().module,
                                           test.inputs)}
    for precision, file in result.report["files"].items():
        # the runtime configuration the export verified with (no graph optimisation for
        # FP16-bearing graphs: parity.ort_session)
        session = ort_session(result.directory / file, threads=1, verify=True)
        logits[f"onnx_{precision}"] = ort_outputs(session, test.inputs)  # batch 1: per sample
    assert set(logits) == {"pytorch", "onnx_fp32", "onnx_fp16", "onnx_int8-fp32",
                           "onnx_int8"}, result.report
    naive = _ort_basic(result.directory / result.report["files"]["int8"])

    top1 = {k: v.argmax(1) for k, v in logits.items()}
    acc = {k: _accuracy(case, v, targets) for k, v in logits.items()}
    agree = {k: 100.0 * float((v == top1["pytorch"]).mean()) for k, v in top1.items()}
    verify = {p: result.report["precisions"][p]["results"][0]
              for p in ("fp16", "int8-fp32", "int8")}
    naive_acc = _accuracy(case, ort_outputs(naive, test.inputs), targets)
    figures = {
        "model": case.name, "task": "segment" if case.segment else "classify",
        "input": [1, 1, *SIZE], "test_samples": len(test.labels),
        "train": {"epochs": case.epochs, "batch": BATCH, "lr": case.lr, "seed": SEED,
                  "optimizer": f"{case.optimizer}, one-cycle", "label_smoothing": LABEL_SMOOTHING},
        "calibration": result.report["precisions"]["int8"].get("calibration"),
        "int8_excluded_nodes": result.report["precisions"]["int8"].get("excluded_nodes"),
        "accuracy_percent": acc, "top1_agreement_with_pytorch_percent": agree,
        "export_stage_seconds": stages,
        "export_verification": {p: {"cosine": r["cosine"],
                                    "top1_agreement": r.get("top1_agreement")}
                                for p, r in verify.items()},
        # what ONNX Runtime's optimised session computes for the INT8 + FP16 graph (its
        # WeightBiasQuantization miscomputes FP16 Q/DQ biases): why verification runs
        # FP16-bearing graphs without graph optimisation
        "int8_accuracy_ort_basic_optimisations_percent": naive_acc,
    }
    record = result.directory / "accuracy.json"
    record.write_text(json.dumps(figures, indent=2))
    summary = ", ".join(f"{k} {acc[k]:.2f}% (agrees {agree[k]:.2f}%)" for k in acc)
    print(f"[digits] {case.name} test accuracy on {len(test.labels)} images: {summary}; "
          f"export check cosine fp16 {verify['fp16']['cosine']:.6f}, "
          f"int8-fp32 {verify['int8-fp32']['cosine']:.6f}, int8 {verify['int8']['cosine']:.6f} "
          f"(ORT with basic optimisations on the int8 graph: {naive_acc:.2f}%) "
          f"(FP32 nodes {figures['int8_excluded_nodes']}); figures in {record}")

    assert acc["pytorch"] >= case.min_accuracy, summary
    assert agree["onnx_fp32"] >= 99.99 if case.segment else agree["onnx_fp32"] == 100.0, summary
    assert abs(acc["onnx_fp32"] - acc["pytorch"]) <= (0.01 if case.segment else 0.0), summary
    assert abs(acc["onnx_fp16"] - acc["onnx_fp32"]) <= FP16_POINTS, summary
    assert abs(acc["onnx_int8"] - acc["onnx_fp32"]) <= INT8_POINTS, summary
    assert abs(acc["onnx_int8-fp32"] - acc["onnx_fp32"]) <= INT8_POINTS, summary
