"""Labelled data for accuracy: image folders, labels.csv, segmentation masks."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import ArtifactError, ConfigError
from ..core.images import IMAGE_SUFFIXES, Preprocess, image_files, load_image


@dataclass
class Dataset:
    root: Path
    kind: str  # classification | segmentation
    images: list[Path]
    classes: list[str]
    labels: np.ndarray | None = None  # classification: [N]
    masks: list[Path] | None = None  # segmentation
    ignore_index: int | None = None

    def describe(self) -> dict:
        layout = ("labels.csv" if (self.root / "labels.csv").is_file() else
                  "ImageFolder" if self.kind == "classification" else "images/ + masks/")
        return {"path": str(self.root.resolve()), "kind": self.kind, "layout": layout,
                "images": len(self.images), "classes": len(self.classes),
                "ignore_index": self.ignore_index}


def load_dataset(path: str | Path, task: str, num_classes: int,
                 ignore_index: int | None = None) -> Dataset:
    """The labelled images at ``path`` for a model of ``task`` with ``num_classes``
    outputs; ArtifactError/ConfigError (one line) for anything that does not fit."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: dataset folder does not exist")
    if task == "segmentation":
        return _segmentation(root, num_classes, ignore_index)
    if task != "classifier":
        raise ConfigError(f"the export's model has no classifier or segmentation head (task "
                          f"'{task}'): accuracy needs one")
    if (root / "labels.csv").is_file():
        return _labels_csv(root, num_classes)
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    if not folders:
        raise ArtifactError(f"{root}: no class subfolders (ImageFolder layout) and no "
                            "labels.csv")
    empty = [d.name for d in folders if not image_files(d)]
    if empty:
        raise ArtifactError(f"{root}: class folder(s) {', '.join(empty[:3])} hold no "
                            f"{'/'.join(IMAGE_SUFFIXES)} images")
    if len(folders) != num_classes:
        more = "more" if len(folders) > num_classes else "fewer"
        raise ConfigError(f"{root}: {len(folders)} class folders ({_names(folders)}), {more} "
                          f"than the model's {num_classes} classes")
    images, labels = [], []
    for k, d in enumerate(folders):
        files = image_files(d)
        images += files
        labels += [k] * len(files)
    return Dataset(root, "classification", images, [d.name for d in folders],
                   np.array(labels, np.int64))


def _names(folders: Sequence[Path]) -> str:
    names = [d.name for d in folders]
    return ", ".join(names[:4]) + (f", ... {names[-1]}" if len(names) > 4 else "")


def _labels_csv(root: Path, num_classes: int) -> Dataset:
    rows = []
    with open(root / "labels.csv", newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and row[:2] == ["file", "label"]):
                continue
            if len(row) < 2:
                raise ArtifactError(f"{root / 'labels.csv'}: line {i + 1} is not file,label")
            rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise ArtifactError(f"{root / 'labels.csv'}: no labelled images")
    values = [label for _, label in rows]
    if all(v.lstrip("-").isdigit() for v in values):
        labels = np.array([int(v) for v in values], np.int64)
        classes = [str(k) for k in range(num_classes)]
    else:  # class names, indexed in sorted order as ImageFolder does
        classes = sorted(set(values))
        labels = np.array([classes.index(v) for v in values], np.int64)
        if len(classes) != num_classes:
            raise ConfigError(f"{root / 'labels.csv'}: {len(classes)} class names, the model "
                              f"has {num_classes} classes")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ArtifactError(f"{root / 'labels.csv'}: label {int(bad[0])} is outside the "
                            f"model's {num_classes} classes")
    images = [root / name for name, _ in rows]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise ArtifactError(f"{root / 'labels.csv'}: {len(missing)} listed file(s) missing: "
                            f"{missing[0]}")
    return Dataset(root, "classification", images, classes, labels)


def _segmentation(root: Path, num_classes: int, ignore_index: int | None) -> Dataset:
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise ArtifactError(f"{root}: a segmentation dataset needs images/ and masks/ folders")
    images = image_files(images_dir)
    if not images:
        raise ArtifactError(f"{images_dir}: no {'/'.join(IMAGE_SUFFIXES)} images")
    masks = {p.stem: p for p in image_files(masks_dir)}
    unmatched = [p.name for p in images if p.stem not in masks]
    if unmatched:
        raise ArtifactError(f"{masks_dir}: no mask for {len(unmatched)} image(s), e.g. "
                            f"{unmatched[0]}")
    return Dataset(root, "segmentation", images, [str(k) for k in range(num_classes)],
                   masks=[masks[p.stem] for p in images], ignore_index=ignore_index)


def load_mask(path: Path, size: tuple[int, int], num_classes: int,
              ignore_index: int | None) -> np.ndarray:
    """Class indices at the model's input size (nearest-neighbour: no new classes)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mask = np.asarray(img.resize((size[1], size[0]), Image.NEAREST)).astype(np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable mask ({type(exc).__name__})") from None
    if mask.ndim != 2:
        raise ArtifactError(f"{path}: a mask holds one class index per pixel (got {mask.ndim}-D)")
    valid = (mask >= 0) & (mask < num_classes)
    if ignore_index is not None:
        valid |= mask == ignore_index
    bad = np.unique(mask[~valid])
    if bad.size:
        raise ArtifactError(f"{path}: mask values {', '.join(map(str, bad[:4]))} are outside the "
                            f"model's {num_classes} classes (give --ignore-index for a void label)")
    return mask


def dataset_inputs(dataset: Dataset, pre: Preprocess) -> np.ndarray:
    return np.stack([load_image(p, pre) for p in dataset.images]).astype(np.float32)


def dataset_arrays(dataset: Dataset, pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """The dataset as the pipeline reads it: inputs [N, C, H, W] (preprocessed as the
    export records) and targets (class per image, or a class per pixel)."""
    inputs = dataset_inputs(dataset, pre)
    if dataset.kind == "classification":
        return inputs, dataset.labels
    return inputs, np.stack([load_mask(m, pre.size, len(dataset.classes), dataset.ignore_index)
                             for m in dataset.masks])
