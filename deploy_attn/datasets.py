"""Small labelled image sets for accuracy checks, written as image folders that the
calibration loader (``pipeline.calib.image_folder``) reads like any user's folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .pipeline.calib import Preprocess, image_folder

DIGITS_MAX = 16  # scikit-learn's digits are 8x8 with values 0..16


@dataclass(frozen=True)
class LabelledImages:
    folder: Path  # one PNG per sample, named <index>_<label>.png so name order is sample order
    inputs: np.ndarray  # [N, C, H, W] float32: the folder as the pipeline preprocesses it
    labels: np.ndarray  # [N] int64


def digits(root: str | Path, pre: Preprocess, test_size: float = 0.3,
           seed: int = 0) -> dict[str, LabelledImages]:
    """scikit-learn's handwritten digits (1797 images, 10 classes) upsampled bilinearly to
    ``pre.size`` as 8-bit grayscale PNGs, split stratified and seeded into ``root/train``
    and ``root/test``. ``inputs`` are read back through ``image_folder``, so a model
    trained on them sees exactly what calibration and evaluation feed it."""
    from PIL import Image
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ConfigError("the digits ship with scikit-learn: pip install scikit-learn "
                          "(it is in the `test` extra)") from None

    if pre.channels != 1:
        raise ConfigError(f"the digits are grayscale; the model takes {pre.channels}-channel input")
    data = load_digits()
    height, width = pre.size
    # upsampled with the filter the calibration loader resizes with, then stored as 8 bits
    upsampled = np.stack([np.asarray(Image.fromarray(img.astype(np.float32) * (255 / DIGITS_MAX))
                                     .resize((width, height), Image.BILINEAR))
                          for img in data.images])
    pixels = np.clip(np.rint(upsampled), 0, 255).astype(np.uint8)
    order = np.arange(len(pixels))
    train, test = train_test_split(order, test_size=test_size, random_state=seed,
                                   stratify=data.target)
    splits = {}
    for split, idx in (("train", train), ("test", test)):
        folder = Path(root) / split
        folder.mkdir(parents=True, exist_ok=True)
        if any(folder.iterdir()):  # stale files would be read back with the new ones
            raise ConfigError(f"{folder}: not empty; write the digits to a fresh folder")
        places = len(str(len(idx)))
        for i, k in enumerate(idx):
            Image.fromarray(pixels[k]).save(folder / f"{i:0{places}d}_{data.target[k]}.png")
        splits[split] = LabelledImages(folder, image_folder(folder, pre, len(idx)).inputs,
                                       data.target[idx].astype(np.int64))
    return splits
