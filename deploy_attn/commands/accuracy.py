"""Command: an export directory + the user's labelled images -> task accuracy of the
PyTorch reference and of every artifact, with the drop of each against PyTorch and its
95 % interval (``deploy-attn accuracy``, ``accuracy.json``).

Data: classification as an ImageFolder (one subfolder per class, classes in sorted
order) or a ``labels.csv`` of ``file,label``; segmentation as ``images/`` and
``masks/`` with matching names, masks holding class indices (an ``ignore_index`` value is
left out). Images are preprocessed exactly as the export recorded. Metrics come from
scikit-learn, McNemar's exact test from scipy; the intervals are a paired bootstrap
over images (seeded).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.console import format_table, progress_bar
from ..core.errors import ArtifactError, ConfigError
from ..core.files import write_json
from ..engine.config import engine_path_for
from ..engine.sidecar import checked_runner
from ..exportdir.layout import ACCURACY_FILE
from ..exportdir.reader import open_export
from ..exportdir.transaction import directory_lock
from ..runtime.backends import TARGET_PREFIXES, target_runner
from ..runtime.base import Runner
from ..runtime.openvino import openvino_missing
from ..runtime.ort import OrtRunner
from ..runtime.pytorch import TorchRunner, torch_outputs
from ..runtime.tensorrt import TensorRTUnavailable, require_tensorrt
from .labelled import Dataset, dataset_inputs, load_dataset, load_mask

MAX_DROP = {"fp32": 0.1, "fp16": 0.1, "int8": 1.0, "int8-fp32": 1.0, "int8-cpu": 1.0}  # points
BOOTSTRAP, SEED = 1000, 0
WORST = 3  # classes listed where a form loses most


# --- metrics ---------------------------------------------------------------------------
@dataclass
class Predictions:
    """What one model form predicted: logits (classification) or per-image confusion
    matrices against the masks and per-pixel predictions (segmentation)."""

    logits: list[np.ndarray] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)
    confusion: list[np.ndarray] = field(default_factory=list)


def _confusion(pred: np.ndarray, mask: np.ndarray, k: int, ignore: int | None) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    keep = mask != ignore if ignore is not None else np.ones(mask.shape, bool)
    return confusion_matrix(mask[keep].ravel(), pred[keep].ravel(), labels=list(range(k)))


def _miou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    iou = np.where(present, inter / np.maximum(union, 1), np.nan)
    return 100.0 * float(np.nanmean(iou)), 100.0 * iou


def _classification(logits: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, top_k_accuracy_score

    k = logits.shape[1]
    out = {"top1": 100.0 * accuracy_score(labels, logits.argmax(1))}
    if k >= 5:
        out["top5"] = 100.0 * top_k_accuracy_score(labels, logits, k=5, labels=list(range(k)))
    return out


def _metrics(preds: Predictions, dataset: Dataset) -> dict[str, float]:
    """A form's metrics in %: top-1 (and top-5 from 5 classes), or pixel accuracy and mIoU."""
    if dataset.kind == "classification":
        metrics = _classification(np.concatenate(preds.logits), dataset.labels)
    else:
        cm = np.stack(preds.confusion).sum(0)
        metrics = {"pixel_accuracy": 100.0 * np.trace(cm) / max(cm.sum(), 1),
                   "miou": _miou(cm)[0]}
    return {m: float(v) for m, v in metrics.items()}


def _per_class(correct: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return np.array([100.0 * correct[labels == c].mean() if (labels == c).any() else np.nan
                     for c in range(k)])


def compare_forms(reference: Predictions, form: Predictions, dataset: Dataset,
                  rng_seed: int = SEED) -> dict:
    """Metrics of ``form``, its agreement with the reference's predictions, its drop in
    points against the reference with a paired bootstrap 95 % interval (and McNemar's
    exact p-value for classification), and the classes it loses most on."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(rng_seed)
    k = len(dataset.classes)
    if dataset.kind == "classification":
        labels = dataset.labels
        ref, test = np.concatenate(reference.logits), np.concatenate(form.logits)
        ref_ok, ok = ref.argmax(1) == labels, test.argmax(1) == labels
        agreement = 100.0 * float((ref.argmax(1) == test.argmax(1)).mean())
        idx = rng.integers(0, len(labels), (BOOTSTRAP, len(labels)))
        drops = 100.0 * (ref_ok[idx].mean(1) - ok[idx].mean(1))
        b, c = int((ref_ok & ~ok).sum()), int((~ref_ok & ok).sum())
        p_value = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
        per_class = _per_class(ref_ok, labels, k) - _per_class(ok, labels, k)
        drop = 100.0 * float(ref_ok.mean() - ok.mean())
        metric = "top1"
    else:
        cm_ref, cm = np.stack(reference.confusion), np.stack(form.confusion)
        miou_ref, iou_ref = _miou(cm_ref.sum(0))
        miou, iou = _miou(cm.sum(0))
        same = sum(int((a == b).sum()) for a, b in zip(reference.pixels, form.pixels))
        agreement = 100.0 * same / sum(p.size for p in form.pixels)
        idx = rng.integers(0, len(cm), (BOOTSTRAP, len(cm)))
        drops = np.array([_miou(cm_ref[i].sum(0))[0] - _miou(cm[i].sum(0))[0] for i in idx])
        p_value, drop, per_class, metric = None, miou_ref - miou, iou_ref - iou, "miou"
    lo, hi = np.percentile(drops, [2.5, 97.5])
    order = [c for c in np.argsort(-np.nan_to_num(per_class, nan=-np.inf)) if per_class[c] > 0]
    return {"metrics": _metrics(form, dataset), "metric": metric,
            "agreement": agreement, "drop": float(drop), "drop_ci95": [float(lo), float(hi)],
            "mcnemar_p": p_value,
            "worst_classes": [{"class": dataset.classes[c], "drop": float(per_class[c])}
                              for c in order[:WORST]]}


# --- running the forms -------------------------------------------------------------------
def _predict(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, dataset: Dataset,
             batch: int, masks: list[np.ndarray] | None, tick: Callable[[int], None]
             ) -> Predictions:
    """What ``run`` predicts for the dataset's ``inputs`` (preprocessed), ``batch`` at a time."""
    out = Predictions()
    k = len(dataset.classes)
    for start in range(0, len(inputs), batch):
        x = inputs[start:start + batch]
        y = run(x)
        if dataset.kind == "classification":
            if y.ndim != 2 or y.shape[1] != k:
                raise ArtifactError(f"the model outputs {list(y.shape)}, not [N, {k}] class scores")
            out.logits.append(np.asarray(y, np.float32))
        else:
            if y.ndim != 4 or y.shape[1] != k:
                raise ArtifactError(f"the model outputs {list(y.shape)}, not [N, {k}, H, W]")
            for j in range(len(x)):
                pred = y[j].argmax(0).astype(np.int16)
                out.pixels.append(pred)
                out.confusion.append(_confusion(pred, masks[start + j], k, dataset.ignore_index))
        tick(len(x))
    return out


@dataclass
class AccuracyResult:
    name: str
    dataset: dict
    forms: list[dict]
    seconds: float

    def as_dict(self) -> dict:
        return {"name": self.name, "dataset": self.dataset, "forms": self.forms,
                "seconds": self.seconds, "bootstrap": {"resamples": BOOTSTRAP, "seed": SEED},
                "max_drop_points": MAX_DROP}

    @property
    def failed(self) -> list[dict]:
        return [f for f in self.forms if f.get("ok") is False]

    def table(self) -> str:
        metric = "top-1" if self.dataset["kind"] == "classification" else "mIoU"
        extra = "top-5" if self.dataset["kind"] == "classification" else "pixel acc"
        rows = []
        for f in self.forms:
            if f["status"] != "ok":
                rows.append([f["form"], "skipped", "", "", "", "", "", f.get("reason", "")])
                continue
            m = f["metrics"]
            main = m.get("top1", m.get("miou"))
            second = m.get("top5", m.get("pixel_accuracy"))
            if f["form"] == "pytorch":
                rows.append([f["form"], f"{main:.2f}", "-" if second is None else f"{second:.2f}",
                             "100.00", "-", "-", "-", "reference"])
                continue
            lo, hi = f["drop_ci95"]
            worst = ", ".join(f"{w['class']} (-{w['drop']:.1f})" for w in f["worst_classes"])
            p = "-" if f.get("mcnemar_p") is None else f"{f['mcnemar_p']:.3g}"
            rows.append([f["form"], f"{main:.2f}", "-" if second is None else f"{second:.2f}",
                         f"{f['agreement']:.2f}", f"{f['drop']:+.2f} [{lo:+.2f}, {hi:+.2f}]", p,
                         f"{'ok' if f['ok'] else 'FAIL'} (max {f['max_drop']:g})", worst or "-"])
        return format_table(["form", f"{metric} %", f"{extra} %", "agrees %",
                             "drop [95% CI] points", "McNemar p", "drop check",
                             "losses by class"], rows)


def evaluate(directory: Path, dataset_path: Path, precisions: Sequence[str] | None = None,
             max_drop: float | None = None, batch: int = 32, ignore_index: int | None = None,
             progress: bool = False, save: bool = True) -> AccuracyResult:
    """Accuracy of the export in ``directory`` on ``dataset_path``: the PyTorch reference,
    then every ONNX artifact (in the runtime configuration the checks trust) and every
    TensorRT engine (skipped with the reason where TensorRT cannot run). ``max_drop``
    replaces the per-precision defaults (MAX_DROP)."""
    if batch < 1:
        raise ConfigError(f"--batch {batch} must be >= 1")
    t0 = time.perf_counter()
    exp = open_export(directory)
    card = exp.card()
    pre = card.preprocess
    if pre is None:
        raise ConfigError(f"{exp.name} takes feature maps, not images: accuracy needs an image "
                          "model")
    files = exp.report.get("files", {})
    wanted = list(files) if precisions is None else list(precisions)
    unknown = [p for p in wanted if p not in files]
    if unknown:
        raise ConfigError(f"{directory} has no {', '.join(unknown)} artifact (it has "
                          f"{', '.join(files)})")
    probe = torch_outputs(card.module, np.zeros((1,) + tuple(card.input_shape[1:]), np.float32))
    dataset = load_dataset(dataset_path, card.task, int(probe.shape[1]), ignore_index)
    masks = None
    if dataset.kind == "segmentation":
        masks = [load_mask(m, pre.size, len(dataset.classes), ignore_index)
                 for m in dataset.masks]
    # every form reads the same inputs: decoded once (a wrong channel count fails here,
    # before the long run)
    inputs = dataset_inputs(dataset, pre)

    engines = exp.report.get("engines", {})
    # (form, precision, artifact, its runner (None: skipped), why skipped)
    forms: list[tuple[str, str | None, str | None, Runner | None, str | None]] = [
        ("pytorch", None, None, TorchRunner(card.module), None)]
    static = exp.report["input_shape"][0] if not exp.cfg.dynamic_batch else None
    for p in wanted:
        forms.append((p, p, files[p], OrtRunner(Path(directory) / files[p], verify=True), None))
    forms += _target_forms(Path(directory), exp.report.get("targets", {}), wanted)
    for p in engines:
        if precisions is not None and p not in precisions:
            continue
        try:
            require_tensorrt(exp.name, p)
            # one image at a time, inside the profile checked on the first one
            forms.append((f"trt-{p}", p, engine_path_for(directory, p).name,
                          checked_runner(engine_path_for(directory, p), inputs[:1], batch=1),
                          None))
        except TensorRTUnavailable as exc:
            forms.append((f"trt-{p}", p, engines[p].get("file"), None, str(exc)))
    step = static or batch
    total = len(dataset.images) * sum(1 for f in forms if f[3] is not None)
    bar = progress_bar(total, f"accuracy {exp.name}", unit="img", disable=not progress)
    results, reference = [], None
    try:
        for form, precision, artifact, runner, reason in forms:
            if runner is None:
                results.append({"form": form, "artifact": artifact, "status": "skipped",
                                "reason": reason})
                continue
            bar.set_postfix_str(form)
            with runner:
                preds = _predict(runner.run, inputs, dataset, batch if form == "pytorch" else step,
                                 masks, bar.update)
            if reference is None:
                reference = preds
                results.append({"form": form, "artifact": None, "status": "ok",
                                "metrics": _metrics(preds, dataset)})
                continue
            entry = compare_forms(reference, preds, dataset)
            limit = max_drop if max_drop is not None else MAX_DROP.get(precision, 0.0)
            entry.update(form=form, artifact=artifact, status="ok", max_drop=limit,
                         ok=entry["drop"] <= limit)
            results.append(entry)
    finally:
        bar.close()
    result = AccuracyResult(exp.name, dataset.describe(), results,
                            round(time.perf_counter() - t0, 2))
    if save:
        with directory_lock(Path(directory)):
            write_json(Path(directory) / ACCURACY_FILE, result.as_dict())
    return result


def _target_forms(directory: Path, targets: dict, wanted: Sequence[str]) -> list[tuple]:
    """The CPU target files of the ``wanted`` precisions (export --format) as forms, named
    as bench's backends: ``ov-P`` on OpenVINO, ``ortmobile-P`` (the ORT format) and
    ``ortcpu-P`` (the CPU-form ONNX) on ONNX Runtime. A target that failed its parity
    check, or whose runtime is missing, is listed as skipped with the reason."""
    prefix = {fmt: p for p, fmt in TARGET_PREFIXES.items()}
    out = []
    for fmt, entries in targets.items():
        for p in (p for p in wanted if p in entries):
            entry, form = entries[p], prefix[fmt] + p
            missing = openvino_missing() if fmt == "openvino" else None
            if not entry["ok"] or missing:
                out.append((form, p, None, None, entry.get("reason") or missing))
                continue
            path = directory / entry["files"][0]
            out.append((form, p, path.name, target_runner(fmt, path), None))
    return out
